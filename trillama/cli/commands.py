"""Ollama-style client commands: ``list``, ``ps``, ``show``, ``pull``, ``push``, ``cp``, ``rm``,
``stop``, and the HTTP client that every command (``run`` and ``create`` too) talks through.

They speak the HTTP API to ``OLLAMA_HOST`` (as the ``ollama`` CLI does), so they are thin: parse
arguments, make a request, print the answer the way ``ollama`` prints it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx

__all__ = ["base_url", "auth_headers", "CLIError", "show_progress", "with_images"]


def base_url() -> str:
    """Where the server is: ``OLLAMA_HOST`` read as the server reads it, wildcard → loopback."""
    from trillama.config import parse_host

    raw = os.environ.get("OLLAMA_HOST", "").strip().strip("\"'") or "127.0.0.1:11434"
    host, port = parse_host(raw)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    scheme = "https" if raw.startswith("https://") else "http"
    return f"{scheme}://{host if ':' not in host else '[' + host + ']'}:{port}"


class CLIError(Exception):
    pass


def auth_headers() -> dict[str, str]:
    """``Authorization: Bearer $OLLAMA_API_KEY`` when it is set, as Ollama's own clients send it.

    (An ``https://`` server's certificate is checked against the system's CAs, or the bundle that
    ``SSL_CERT_FILE`` names.)
    """
    key = os.environ.get("OLLAMA_API_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def _client() -> httpx.Client:
    return httpx.Client(base_url=base_url(), timeout=None, headers=auth_headers())


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        try:
            message = response.json().get("error") or response.text
        except ValueError:
            message = response.text
        raise CLIError(message)
    return response


def _stream(client: httpx.Client, method: str, path: str, body: dict) -> Iterator[dict]:
    with client.stream(method, path, json=body) as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
        for line in response.iter_lines():
            if line.strip():
                item = json.loads(line)
                if "error" in item:
                    raise CLIError(item["error"])
                yield item


def human_bytes(n: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{n} B"


def human_ago(iso: str) -> str:
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    seconds = (datetime.now(timezone.utc) - then).total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "Less than a minute ago" if seconds >= 1 else "Less than a second ago"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("    ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def cmd_list(args: argparse.Namespace) -> int:
    with _client() as client:
        models = _check(client.get("/api/tags")).json()["models"]
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    for m in models:
        if args.prefix and not m["name"].startswith(args.prefix):
            continue
        rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), human_ago(m["modified_at"])])
    _table(rows)
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    with _client() as client:
        models = _check(client.get("/api/ps")).json()["models"]
    rows = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        if args.prefix and not m["name"].startswith(args.prefix):
            continue
        vram, size = m.get("size_vram", 0), m.get("size", 0) or 1
        if vram == 0:
            proc = "100% CPU"
        elif vram >= size:
            proc = "100% GPU"
        else:
            cpu = round(100 * (size - vram) / size)
            proc = f"{cpu}%/{100 - cpu}% CPU/GPU"
        until = m.get("expires_at", "")
        try:
            left = (datetime.fromisoformat(until) - datetime.now(timezone.utc)).total_seconds()
            until = "Forever" if left > 20 * 365 * 86400 else ("Stopping..." if left <= 0 else
                                                              f"{int(left // 60)} minutes from now")
        except ValueError:
            pass
        rows.append([m["name"], m["digest"][:12], human_bytes(m["size"]), proc,
                     str(m.get("context_length", "")), until])
    _table(rows)
    return 0


SHOW_FLAGS = ("license", "modelfile", "parameters", "system", "template")


def cmd_show(args: argparse.Namespace) -> int:
    from trillama.cli.showinfo import format_show

    chosen = [flag for flag in SHOW_FLAGS if getattr(args, flag)]
    if len(chosen) > 1:
        raise CLIError("only one of '--license', '--modelfile', '--parameters', '--system', or '--template' "
                       "can be specified")
    with _client() as client:
        info = _check(client.post("/api/show", json={"model": args.model, "verbose": args.verbose})).json()
    if chosen:
        print(info.get(chosen[0], ""))
        return 0
    print(format_show(info, verbose=args.verbose), end="")
    return 0


def cmd_cp(args: argparse.Namespace) -> int:
    with _client() as client:
        _check(client.post("/api/copy", json={"source": args.source, "destination": args.destination}))
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _client() as client:
        for name in args.models:
            client.post("/api/generate", json={"model": name, "keep_alive": 0})
            _check(client.request("DELETE", "/api/delete", json={"model": name}))
            print(f"deleted '{name}'")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with _client() as client:
        response = client.post("/api/generate", json={"model": args.model, "keep_alive": 0})
        if response.status_code == 404:
            raise CLIError(f'couldn\'t find model "{args.model}" to stop')
        _check(response)
    return 0


#: A picture named in a prompt: an absolute, ``./``, ``../`` or ``~/`` path (spaces escaped with a
#: backslash) ending in an image extension, as the ollama CLI recognises them.
_IMAGE_PATH = re.compile(r"(?:~|\.{1,2})?/(?:[^\s\\]|\\ )+?\.(?:jpe?g|png|webp)\b", re.IGNORECASE)


def extract_images(prompt: str) -> tuple[str, list[Path]]:
    """Take the image files a prompt names out of it: (the rest of the prompt, the files).

    Paths that do not name an existing file stay in the text, as they do in ``ollama run``.
    """
    found: list[Path] = []

    def take(match: re.Match) -> str:
        path = Path(os.path.expanduser(match.group(0).replace("\\ ", " ")))
        if not path.is_file():
            return match.group(0)
        found.append(path)
        return ""

    rest = _IMAGE_PATH.sub(take, prompt)
    return " ".join(rest.split()) if found else prompt, found


def with_images(prompt: str, vision: bool) -> tuple[str, list[str]]:
    if not vision:
        return prompt, []
    text, paths = extract_images(prompt)
    images = []
    for path in paths:
        print(f"Added image '{path}'", file=sys.stderr)
        images.append(base64.b64encode(path.read_bytes()).decode("ascii"))
    return text, images


def show_progress(items: Iterator[dict], out: Any = None) -> None:
    """Print pull/push progress as ``ollama`` does: one bar per layer, then each status line.

    On a terminal a layer's bar fills in place; elsewhere (a log, a pipe) only its finished line
    is printed. Updates with nothing completed yet are skipped, as ``ollama`` skips them.
    """
    out = out or sys.stdout
    tty = out.isatty()
    open_bar = False
    for item in items:
        status = item.get("status", "")
        total, completed = item.get("total", 0), item.get("completed", 0)
        if item.get("digest") and total:
            if not completed:
                continue
            percent = completed * 100 // total
            bar = "█" * (percent // 5) + " " * (20 - percent // 5)
            line = f"{status}: {percent:3d}% ▕{bar}▏ {human_bytes(completed)}/{human_bytes(total)}"
            if tty:
                print("\r" + line, end="", file=out, flush=True)
                open_bar = completed < total
                if not open_bar:
                    print(file=out)
            elif completed >= total:
                print(line, file=out)
            continue
        if open_bar:
            print(file=out)
            open_bar = False
        print(status, file=out, flush=True)


def _transfer(path: str, model: str, insecure: bool) -> int:
    with _client() as client:
        show_progress(_stream(client, "POST", path, {"model": model, "insecure": insecure}))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    return _transfer("/api/pull", args.model, args.insecure)


def cmd_push(args: argparse.Namespace) -> int:
    from trillama.store import ModelName

    try:
        _transfer("/api/push", args.model, args.insecure)
    except CLIError as exc:
        if "access denied" in str(exc) or "unauthorized" in str(exc):
            raise CLIError("you are not authorized to push to this namespace, create the model under a "
                           "namespace you own") from None
        raise
    print(f"\nYou can find your model at:\n\n\t{ModelName.parse_lenient(args.model).full}")
    return 0
