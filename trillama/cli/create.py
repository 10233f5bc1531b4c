"""``trillama create -f Modelfile``: the files a Modelfile names go up as blobs, the rest as JSON.

Why on the client: the server refuses to read paths on its own disk (a create request must not
be a way to probe or read the server's files, issue 12), and the server may be another machine.
So, as the ``ollama`` CLI does, the Modelfile is parsed here; every ``FROM`` or ``ADAPTER`` that
names a file or a directory of GGUF files on *this* machine is hashed and uploaded
(``HEAD``/``POST /api/blobs/<digest>``, skipped when the server has it) and named in ``files`` or
``adapters``; a ``FROM`` that names no file is a model name. The other instructions travel as
the structured request's fields (template, system, license, parameters, messages).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import httpx

from trillama.cli.commands import CLIError, _check, _client, _stream

__all__ = ["cmd_create", "create_request", "local_files"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def local_files(arg: str, base_dir: Path) -> list[Path] | None:
    """The files on this machine that a ``FROM``/``ADAPTER`` argument names, or ``None`` for none.

    A path is absolute, ``~``-relative or relative to the Modelfile's directory; a directory
    stands for the GGUF files in it.
    """
    path = Path(arg).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.glob("*.gguf") if p.is_file())
        return found or None
    return None


def _upload(client: httpx.Client, path: Path, say) -> str:
    digest = _sha256(path)
    if client.head(f"/api/blobs/{digest}").status_code != 200:
        say(f"copying file {digest} 0%")
        with path.open("rb") as f:
            response = client.post(f"/api/blobs/{digest}", content=f)
        if response.status_code >= 400:
            _check(response)
    say(f"copying file {digest} 100%")
    return digest


def create_request(client: httpx.Client, model: str, text: str, base_dir: Path, say=print) -> dict[str, Any]:
    """The ``/api/create`` body for Modelfile ``text``, with its local files uploaded first."""
    from trillama.store.errors import InvalidRequest
    from trillama.store.modelfile import parse_modelfile

    try:
        modelfile = parse_modelfile(text)
    except InvalidRequest as exc:
        raise CLIError(exc.message) from None
    say("gathering model components")
    body: dict[str, Any] = {"model": model}
    files: dict[str, str] = {}
    adapters: dict[str, str] = {}
    for command in modelfile.commands:
        if command.name not in ("model", "adapter"):
            continue
        target = files if command.name == "model" else adapters
        if command.args.startswith("@"):
            target[command.args[1:]] = command.args[1:]
            continue
        found = local_files(command.args, base_dir)
        if found is None:
            if command.name == "adapter":
                raise CLIError(f"invalid adapter reference: {command.args}")
            body["from"] = command.args
            continue
        for path in found:
            target[path.name] = _upload(client, path, say)
    if files:
        body["files"] = files
    if adapters:
        body["adapters"] = adapters
    for field in ("template", "system", "renderer", "parser"):
        values = modelfile.values(field)
        if values:
            body[field] = values[-1]
    if modelfile.values("license"):
        body["license"] = modelfile.values("license")
    if modelfile.parameters:
        body["parameters"] = modelfile.parameters
    if modelfile.messages:
        body["messages"] = modelfile.messages
    if modelfile.requires:
        body["requires"] = modelfile.requires
    return body


def cmd_create(args: argparse.Namespace) -> int:
    """Upload the files the Modelfile names, send the rest as a structured create, print progress."""
    path = Path(args.file or "Modelfile")
    if args.file and not path.exists():
        raise CLIError(f"open {args.file}: no such file or directory")
    text = path.read_text() if path.exists() else "FROM .\n"
    with _client() as client:
        body = create_request(client, args.model, text, path.resolve().parent, say=lambda s: print(s, flush=True))
        if args.quantize:
            body["quantize"] = args.quantize
        last = None
        for item in _stream(client, "POST", "/api/create", body):
            status = item.get("status", "")
            if status and status != last:
                print(status, flush=True)
            last = status
    return 0
