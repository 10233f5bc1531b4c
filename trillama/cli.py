"""The ``trillama`` command line: ``serve`` plus Ollama-style client commands.

Client commands talk HTTP to the server named by ``OLLAMA_HOST``, exactly as the ``ollama`` CLI does,
so they work against trillama and against Ollama alike.
"""

from __future__ import annotations

import argparse
import sys

from trillama import __version__, client_cli
from trillama.config import ConfigError, Settings

__all__ = ["main", "ENV_DOCS"]

#: What ``trillama serve --help`` lists, as ``ollama serve --help`` lists its variables.
ENV_DOCS = (
    ("OLLAMA_DEBUG", "Show additional debug information (e.g. OLLAMA_DEBUG=1)"),
    ("OLLAMA_HOST", "IP Address for the ollama server (default 127.0.0.1:11434)"),
    ("OLLAMA_CONTEXT_LENGTH", "Context length to use unless otherwise specified (default: 4096)"),
    ("OLLAMA_KEEP_ALIVE", 'The duration that models stay loaded in memory (default "5m")'),
    ("OLLAMA_MAX_LOADED_MODELS", "Maximum number of loaded models per GPU"),
    ("OLLAMA_MAX_QUEUE", "Maximum number of queued requests"),
    ("OLLAMA_MODELS", "The path to the models directory"),
    ("OLLAMA_NUM_PARALLEL", "Maximum number of parallel requests"),
    ("OLLAMA_NOPRUNE", "Do not prune model blobs on startup"),
    ("OLLAMA_ORIGINS", "A comma separated list of allowed origins"),
    ("OLLAMA_FLASH_ATTENTION", "Enabled flash attention"),
    ("OLLAMA_KV_CACHE_TYPE", "Quantization type for the K/V cache (default: f16)"),
    ("OLLAMA_LOAD_TIMEOUT", "How long to allow model loads to stall before giving up (default \"5m\")"),
    ("OLLAMA_GPU_OVERHEAD", "Reserve a portion of VRAM per GPU (bytes)"),
    ("TRILLAMA_MEMORY_LIMIT", "Memory the loaded models may use in all (e.g. 8GB; default: what is free)"),
    ("TRILLAMA_NUM_THREADS", "CPU threads the runners share (default: the physical cores)"),
    ("TRILLAMA_BUNDLED_MODEL", "Create the bundled smollm2:135m on start when missing (default 1)"),
    ("TRILLAMA_LOG_FORMAT", "Log lines as text or json (default text)"),
)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    from trillama.server import run

    try:
        run(settings)
    except KeyboardInterrupt:  # pragma: no cover - signals are handled inside; this is a last resort
        pass
    return 0


def print_version() -> int:
    """``ollama -v``: the server's version, a warning when the client's differs or none answers."""
    import httpx

    server = ""
    try:
        with httpx.Client(base_url=client_cli.base_url(), timeout=10) as client:
            answer = client.get("/api/version").json()
            server = answer.get("trillama_version") or answer.get("version", "")
    except (httpx.HTTPError, ValueError):
        print("Warning: could not connect to a running Ollama instance")
    if server:
        print(f"trillama version is {server}")
    if server != __version__:
        print(f"Warning: client version is {__version__}")
    return 0


def _env_epilog() -> str:
    return "Environment Variables:\n" + "".join(f"      {name:<27}   {text}\n" for name, text in ENV_DOCS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trillama", description="An Ollama-compatible model server.")
    parser.add_argument("-v", "--version", action="store_true", help="Show version information")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", aliases=["start"], help="Start the server", description="Start the server",
                           epilog=_env_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.set_defaults(func=_serve)
    client_cli.register(sub)
    from trillama import launch

    launch.register(sub)
    return parser


def _bare_think(argv: list[str]) -> list[str]:
    """``--think`` alone means true; a level must be attached (``--think=high``), as in ``ollama``,
    so ``run MODEL --think why`` keeps "why" as the prompt."""
    return ["--think=true" if a == "--think" else a for a in argv]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(_bare_think(sys.argv[1:] if argv is None else list(argv)))
    if rest and getattr(args, "command", None) == "run" and not any(r.startswith("-") for r in rest):
        args.prompt = [*args.prompt, *rest]  # prompt words after a flag (`run m --verbose why`)
    elif getattr(args, "command", None) == "launch":
        args.extra = rest  # what follows `--` goes to the agent
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.version:
        return print_version()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)
