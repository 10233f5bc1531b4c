"""The ``trillama`` command line: ``serve`` plus Ollama-style client commands.

Client commands talk HTTP to the server named by ``OLLAMA_HOST``, exactly as the ``ollama`` CLI does,
so they work against trillama and against Ollama alike.
"""

from __future__ import annotations

import argparse
import sys

from trillama import client_cli
from trillama.config import ConfigError, Settings

__all__ = ["main"]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trillama", description="An Ollama-compatible model server.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", aliases=["start"], help="Start the server")
    serve.set_defaults(func=_serve)
    client_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
