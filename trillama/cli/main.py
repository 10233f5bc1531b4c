"""The ``trillama`` command line: ``serve`` plus Ollama-style client commands.

Client commands talk HTTP to the server named by ``OLLAMA_HOST``, exactly as the ``ollama`` CLI does,
so they work against trillama and against Ollama alike.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx

from trillama import __version__
from trillama.cli.commands import (CLIError, auth_headers, base_url, cmd_cp, cmd_list, cmd_ps, cmd_pull, cmd_push, cmd_rm,
                                   cmd_show, cmd_stop)
from trillama.cli.create import cmd_create
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
    ("TRILLAMA_API_KEYS_FILE", "API key file: hashed keys, scopes, limits (see `trillama keys`)"),
    ("TRILLAMA_API_KEY", "One API key with every scope"),
    ("TRILLAMA_REQUIRE_KEYS", "Refuse to listen beyond loopback without keys (default 0)"),
    ("TRILLAMA_TLS_CERT", "TLS certificate chain (PEM); with TRILLAMA_TLS_KEY serves HTTPS"),
    ("TRILLAMA_TLS_KEY", "TLS private key (PEM)"),
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
    except ConfigError as exc:  # a key file or certificate that cannot be used, an exposed server
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover - signals are handled inside; this is a last resort
        pass
    return 0


def print_version() -> int:
    """``ollama -v``: the server's version, a warning when the client's differs or none answers."""
    server = ""
    try:
        with httpx.Client(base_url=base_url(), timeout=10, headers=auth_headers()) as client:
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


def _wrap(func):
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CLIError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
        except httpx.ConnectError:
            print("Error: could not connect to ollama server, run 'trillama serve' to start it", file=sys.stderr)
            return 1
    return run


def register_client_commands(sub: Any) -> None:
    """The client commands' arguments, in the order ``--help`` lists them."""
    p = sub.add_parser("list", aliases=["ls"], help="List models")
    p.add_argument("prefix", nargs="?")
    p.set_defaults(func=_wrap(cmd_list))
    p = sub.add_parser("ps", help="List running models")
    p.add_argument("prefix", nargs="?")
    p.set_defaults(func=_wrap(cmd_ps))
    p = sub.add_parser("show", help="Show information for a model")
    p.add_argument("model")
    p.add_argument("--license", action="store_true", help="Show license of a model")
    p.add_argument("--modelfile", action="store_true", help="Show Modelfile of a model")
    p.add_argument("--parameters", action="store_true", help="Show parameters of a model")
    p.add_argument("--system", action="store_true", help="Show system message of a model")
    p.add_argument("--template", action="store_true", help="Show template of a model")
    p.add_argument("-v", "--verbose", action="store_true", help="Show detailed model information")
    p.set_defaults(func=_wrap(cmd_show))
    p = sub.add_parser("run", help="Run a model")
    p.add_argument("model")
    p.add_argument("prompt", nargs="*")
    p.add_argument("--keepalive", help="Duration to keep a model loaded (e.g. 5m)")
    p.add_argument("--format", help='Response format (e.g. json)')
    p.add_argument("--think", nargs="?", const="true", default=None,
                   help="Enable thinking mode: true/false or high/medium/low/max for supported models")
    p.add_argument("--hidethinking", action="store_true", help="Hide thinking output (if provided)")
    p.add_argument("--nowordwrap", action="store_true",
                   help="Don't wrap words to the next line automatically")
    p.add_argument("--verbose", action="store_true", help="Show timings for response")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    p.set_defaults(func=_wrap(_run))
    p = sub.add_parser("create", help="Create a model")
    p.add_argument("model")
    p.add_argument("-f", "--file", help='Name of the Modelfile (default "Modelfile")')
    p.add_argument("-q", "--quantize", help="Quantize model to this level (e.g. q4_K_M)")
    p.set_defaults(func=_wrap(cmd_create))
    p = sub.add_parser("cp", help="Copy a model")
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(func=_wrap(cmd_cp))
    p = sub.add_parser("rm", help="Remove a model")
    p.add_argument("models", nargs="+")
    p.set_defaults(func=_wrap(cmd_rm))
    p = sub.add_parser("stop", help="Stop a running model")
    p.add_argument("model")
    p.set_defaults(func=_wrap(cmd_stop))
    p = sub.add_parser("pull", help="Pull a model from a registry")
    p.add_argument("model")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    p.set_defaults(func=_wrap(cmd_pull))
    p = sub.add_parser("push", help="Push a model to a registry")
    p.add_argument("model")
    p.add_argument("--insecure", action="store_true", help="Use an insecure registry")
    p.set_defaults(func=_wrap(cmd_push))


def _run(args: argparse.Namespace) -> int:
    from trillama.cli.run import cmd_run

    return cmd_run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trillama", description="An Ollama-compatible model server.")
    parser.add_argument("-v", "--version", action="store_true", help="Show version information")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", aliases=["start"], help="Start the server", description="Start the server",
                           epilog=_env_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.set_defaults(func=_serve)
    register_client_commands(sub)
    from trillama.cli import keys, launch

    launch.register(sub)
    keys.register(sub)
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
