"""``trillama keys add|list|revoke``: manage the API key file (``TRILLAMA_API_KEYS_FILE``).

These edit the file, not the server: a running server reloads the file at its next request, so
a new key works and a revoked one is refused from then on, without a restart. ``add`` prints the
new key once, alone on stdout (``KEY=$(trillama keys add alice)``); only its hash is stored, so it
cannot be shown again — lose it and revoke it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from trillama.keys import SCOPES, KeyFileError, KeyLimits, add_key, load_key_file, revoke_key

__all__ = ["register"]


def _key_file(args: argparse.Namespace) -> Path:
    raw = args.file or os.environ.get("TRILLAMA_API_KEYS_FILE", "").strip().strip("\"'")
    if not raw:
        raise KeyFileError("no key file: set TRILLAMA_API_KEYS_FILE (as the server has it) or pass --file")
    return Path(raw).expanduser()


def _scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.split(",") if s.strip()]
    for scope in scopes:
        if scope not in SCOPES:
            raise argparse.ArgumentTypeError(f"unknown scope {scope!r} (scopes are {', '.join(SCOPES)})")
    if not scopes:
        raise argparse.ArgumentTypeError("at least one scope")
    return scopes


def cmd_add(args: argparse.Namespace) -> int:
    path = _key_file(args)
    limits = KeyLimits(args.max_concurrent, args.requests_per_minute, args.tokens_per_minute)
    secret = add_key(path, args.id, args.scope, args.model or (), limits)
    print(f"Added API key {args.id!r} ({', '.join(args.scope)}) to {path}. It is shown this once; "
          "only its hash is stored:", file=sys.stderr)
    print(secret)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    path = _key_file(args)
    keys = load_key_file(path)
    rows = [["ID", "SCOPES", "MODELS", "LIMITS", "CREATED"]]
    for key in keys:
        limits = [f"{n} {label}" for n, label in ((key.limits.max_concurrent, "concurrent"),
                                                 (key.limits.requests_per_minute, "req/min"),
                                                 (key.limits.tokens_per_minute, "tokens/min")) if n]
        rows.append([key.id, ",".join(s for s in SCOPES if s in key.scopes), ",".join(key.models) or "all",
                     ", ".join(limits) or "none", key.created or "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("    ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    path = _key_file(args)
    revoke_key(path, args.id)
    print(f"Revoked API key {args.id!r}: a running server refuses it from its next request on.", file=sys.stderr)
    return 0


def _run(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except KeyFileError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    return run


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="Manage API keys (TRILLAMA_API_KEYS_FILE)",
                          description="Add, list and revoke the API keys a server with "
                                      "TRILLAMA_API_KEYS_FILE accepts. A running server reloads the file.")
    keys.add_argument("--file", help="The key file (default: $TRILLAMA_API_KEYS_FILE)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add = keys_sub.add_parser("add", help="Add a key and print it (once)")
    add.add_argument("id", help="The key's name, shown in logs and metrics (letters, digits, . _ -)")
    add.add_argument("--scope", type=_scopes, default=["inference"],
                     help="Comma-separated scopes: inference, manage, admin (default: inference)")
    add.add_argument("--model", action="append", metavar="PATTERN",
                     help="Allow only these models (repeatable; shell patterns such as 'gemma3:*')")
    add.add_argument("--max-concurrent", type=int, default=0, metavar="N", help="Requests in flight at once")
    add.add_argument("--requests-per-minute", type=int, default=0, metavar="N")
    add.add_argument("--tokens-per-minute", type=int, default=0, metavar="N")
    add.set_defaults(func=_run(cmd_add))
    lst = keys_sub.add_parser("list", help="List the keys (never the keys themselves)")
    lst.set_defaults(func=_run(cmd_list))
    revoke = keys_sub.add_parser("revoke", help="Remove a key")
    revoke.add_argument("id")
    revoke.set_defaults(func=_run(cmd_revoke))
    for p in (add, lst, revoke):  # also accepted after the subcommand
        p.add_argument("--file", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
