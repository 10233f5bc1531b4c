"""The management routes: list, show, create, copy, delete, and blob upload.

Each handler turns a request into a store call and the store's answer (or error) into Ollama's
response shape and status. Store work blocks on disk (hashing and copying gigabytes), so every
call into the store runs in a worker thread and the Trio loop keeps serving other requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

import attrs
import trio
from quart import Blueprint, Response, request

from trillama.api.context import services
from trillama.api.decode import read_json, structure
from trillama.api.errors import APIError
from trillama.api.streaming import json_response, stream_or_collect
from trillama.logs import get_logger
from trillama.store import (
    CreateRequest,
    DigestMismatch,
    InvalidName,
    ModelName,
    ModelNotFound,
    ModelRecord,
    StoreError,
    parse_modelfile,
    request_from_modelfile,
)
from trillama.store.digests import DIGEST_RE
from trillama.gofmt import format_go_time, go_quote, go_sharp_v, go_v
from trillama.store.modelfile import Command, Modelfile
from trillama.store.templates import DEFAULT_TEMPLATE

__all__ = ["blueprint"]

log = get_logger("trillama.api.manage")

blueprint = Blueprint("manage", __name__)

T = TypeVar("T")

_STATUS = {"invalid": 400, "not_found": 404, "internal": 500}
_UPLOAD_BATCH = 1 << 20


# --- request bodies ---------------------------------------------------------------------------


@attrs.define
class ShowRequest:
    model: str = ""
    name: str = ""
    verbose: bool = False
    system: str = ""
    template: str = ""  # deprecated and ignored, as in Ollama
    options: dict[str, Any] | None = None


@attrs.define
class DeleteRequest:
    model: str = ""
    name: str = ""


@attrs.define
class CopyRequest:
    source: str = ""
    destination: str = ""


@attrs.define
class CreateBody:
    model: str = ""
    name: str = ""
    stream: bool | None = None
    from_: str = ""
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str = ""
    system: str = ""
    license: Any = None
    parameters: dict[str, Any] | None = None
    messages: list[Any] | None = None
    quantize: str = ""
    quantization: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    info: dict[str, Any] | None = None
    # The classic (≤ 0.5.4) form: Modelfile text, or a path to one on the server.
    modelfile: str = ""
    path: str = ""


# --- helpers ----------------------------------------------------------------------------------


def _store_error(exc: StoreError) -> APIError:
    return APIError(_STATUS.get(exc.kind, 500), exc.message)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(fn, *args)


async def _iterate_in_thread(gen: Iterator[dict]) -> AsyncIterator[dict]:
    """Drive a blocking generator from worker threads, one item per hop."""
    done = object()
    try:
        while True:
            try:
                item = await trio.to_thread.run_sync(next, gen, done)
            except StoreError as exc:
                raise _store_error(exc) from None
            except InvalidName:
                raise APIError(400, "invalid model name") from None
            except OSError as exc:  # disk full, permissions: Ollama reports these as 500s
                log.error("create_failed", error=str(exc))
                raise APIError(500, str(exc)) from None
            if item is done:
                return
            yield item
    finally:
        gen.close()


def _is_valid(text: str) -> bool:
    return ModelName.parse_lenient(text).is_valid


def _details_json(details: dict[str, Any]) -> dict[str, Any]:
    # Ollama's ModelDetails: six fields always, the two lengths only when known.
    out = {key: details.get(key, "") for key in
           ("parent_model", "format", "family", "families", "parameter_size", "quantization_level")}
    for key in ("context_length", "embedding_length"):
        if details.get(key):
            out[key] = details[key]
    return out


# --- GET/HEAD /api/tags -----------------------------------------------------------------------


@blueprint.route("/api/tags", methods=["GET", "HEAD"])
async def tags() -> Response:
    store = services().store
    entries = await _in_thread(store.list_models)
    models = []
    for entry in entries:
        item: dict[str, Any] = {
            "name": entry.name.display,
            "model": entry.name.display,
            "modified_at": format_go_time(entry.modified_at),
            "size": entry.size,
            "digest": entry.digest,
            "details": _details_json(entry.details),
        }
        if entry.capabilities:
            item["capabilities"] = entry.capabilities
        if entry.missing_blobs:  # listed (not deleted), flagged: using it answers 404 naming these
            item["missing_blobs"] = list(entry.missing_blobs)
        models.append(item)
    response = json_response({"models": models})
    if request.method == "HEAD":
        response.set_data(b"")  # same status and type as GET, no body
    return response


# --- POST /api/show ---------------------------------------------------------------------------


def _parameters_text(parameters: dict[str, Any]) -> str:
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {go_sharp_v(item)}")
    return "\n".join(lines)


def _show_modelfile(record: ModelRecord, system: str | None, parameters: dict[str, Any]) -> str:
    commands = [Command("model", str(record.model_path) if record.model_path else "")]
    commands += [Command("adapter", str(p)) for p in record.adapter_paths]
    if record.draft_path is not None:
        commands.append(Command("draft", str(record.draft_path)))
    commands += [Command("model", str(p)) for p in record.projector_paths]
    commands.append(Command("template", record.template if record.template is not None else DEFAULT_TEMPLATE))
    if system:
        commands.append(Command("system", system))
    if record.model_config.renderer:
        commands.append(Command("renderer", record.model_config.renderer))
    if record.model_config.parser:
        commands.append(Command("parser", record.model_config.parser))
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            commands.append(Command(key, go_v(item)))
    commands += [Command("license", text) for text in record.license]
    for message in record.messages:
        commands.append(Command("message", f"{message.get('role', '')}: {message.get('content', '')}"))
    header = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {record.short_name}\n\n"
    )
    return header + Modelfile.from_commands(commands).render()


def _show_payload(record: ModelRecord, req: ShowRequest) -> dict[str, Any]:
    system = req.system or record.system or ""
    shown_parameters = dict(record.parameters)
    modelfile_parameters = {**record.parameters, **(req.options or {})}
    info = record.gguf_info()
    out: dict[str, Any] = {}
    if record.license:
        out["license"] = "\n".join(record.license)
    out["modelfile"] = _show_modelfile(record, system, modelfile_parameters)
    parameters_text = _parameters_text(shown_parameters)
    if parameters_text:
        out["parameters"] = parameters_text
    out["template"] = record.template if record.template is not None else DEFAULT_TEMPLATE
    if system:
        out["system"] = system
    if record.model_config.renderer:
        out["renderer"] = record.model_config.renderer
    if record.model_config.parser:
        out["parser"] = record.model_config.parser
    out["details"] = _details_json(record.details)
    if record.messages:
        out["messages"] = [{"role": m.get("role", ""), "content": m.get("content", "")}
                           for m in record.messages]
    out["model_info"] = info.model_info(verbose=req.verbose) if info is not None else {}
    if record.projector_paths:
        from trillama.store import read_gguf_info

        try:
            projector = read_gguf_info(record.projector_paths[0])
            out["projector_info"] = projector.model_info(verbose=req.verbose)
        except (StoreError, OSError):
            pass
    if info is not None and info.tensors:
        out["tensors"] = list(info.tensors)
    if record.capabilities:
        out["capabilities"] = record.capabilities
    out["modified_at"] = format_go_time(record.modified_at)
    if record.model_config.requires:
        out["requires"] = record.model_config.requires
    return out


@blueprint.route("/api/show", methods=["POST"])
async def show() -> Response:
    req = structure(await read_json(request), ShowRequest)
    text = (req.model or req.name).strip()
    if not text:
        raise APIError(400, "model is required")
    try:
        name = ModelName.parse(text)
    except InvalidName:
        raise APIError(400, "invalid model name") from None
    store = services().store
    try:
        record = (await _in_thread(store.resolve, name)).require_blobs()
        payload = await _in_thread(_show_payload, record, req)
    except ModelNotFound:
        raise APIError(404, f"model '{name.display}' not found") from None
    except StoreError as exc:
        raise _store_error(exc) from None
    return json_response(payload)


# --- DELETE /api/delete -----------------------------------------------------------------------


@blueprint.route("/api/delete", methods=["DELETE"])
async def delete() -> Response:
    req = structure(await read_json(request), DeleteRequest)
    text = (req.model or req.name).strip()
    if not text:
        raise APIError(400, "model is required")
    if not _is_valid(text):
        raise APIError(400, f"name {go_quote(text)} is invalid")
    store = services().store
    try:
        await _in_thread(store.delete, text)
    except ModelNotFound:
        raise APIError(404, f"model '{text}' not found") from None
    except StoreError as exc:
        raise _store_error(exc) from None
    return Response("", status=200)


# --- POST /api/copy ---------------------------------------------------------------------------


@blueprint.route("/api/copy", methods=["POST"])
async def copy() -> Response:
    req = structure(await read_json(request), CopyRequest)
    if not _is_valid(req.source):
        raise APIError(400, f"source {go_quote(req.source)} is invalid")
    if not _is_valid(req.destination):
        raise APIError(400, f"destination {go_quote(req.destination)} is invalid")
    store = services().store
    try:
        await _in_thread(store.copy, req.source, req.destination)
    except ModelNotFound:
        raise APIError(404, f"model {go_quote(req.source)} not found") from None
    except StoreError as exc:
        raise _store_error(exc) from None
    return Response("", status=200)


# --- HEAD/POST /api/blobs/<digest> ------------------------------------------------------------


def _check_digest(digest: str) -> str:
    if not DIGEST_RE.fullmatch(digest):
        raise APIError(400, "invalid digest format")
    return "sha256:" + digest[7:]


@blueprint.route("/api/blobs/<digest>", methods=["HEAD"])
async def head_blob(digest: str) -> Response:
    normalized = _check_digest(digest)
    if not await _in_thread(services().store.has_blob, normalized):
        raise APIError(404, f"blob {go_quote(digest)} not found")
    return Response("", status=200)


async def _drain_body() -> None:
    """Read and drop what is left of the request body.

    Answering before the client has finished sending leaves hypercorn's HTTP/1.1 connection
    waiting on a body nobody reads; the client's next request on that connection then hangs
    (and a large upload never completes). Draining keeps the connection usable.
    """
    async for _ in request.body:
        pass


@blueprint.route("/api/blobs/<digest>", methods=["POST"])
async def create_blob(digest: str) -> Response:
    try:
        normalized = _check_digest(digest)
    except APIError:
        await _drain_body()
        raise
    store = services().store
    if await _in_thread(store.has_blob, normalized):
        await _drain_body()  # already here: nothing to store (Ollama does not read it either)
        return Response("", status=200)
    writer = await _in_thread(store.open_blob_writer)
    try:
        pending = bytearray()
        async for chunk in request.body:
            pending += chunk
            if len(pending) >= _UPLOAD_BATCH:
                data = bytes(pending)
                pending.clear()
                await _in_thread(writer.write, data)
        if pending:
            await _in_thread(writer.write, bytes(pending))
        await _in_thread(store.commit_blob, writer, normalized)
    except DigestMismatch as exc:
        raise APIError(400, f'digest mismatch, expected "{digest}", got "{exc.got}"') from None
    except StoreError as exc:
        raise _store_error(exc) from None
    except OSError as exc:
        log.error("blob_write_failed", digest=digest, error=str(exc))
        await _drain_body()
        raise APIError(500, str(exc)) from None
    finally:
        if not writer.closed:
            writer.abort()
    return Response("", status=201)


# --- POST /api/create -------------------------------------------------------------------------


def _license_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise APIError(400, "json: cannot unmarshal license: must be a string or an array of strings")


def _classic_request(body: CreateBody, store: Any, allowed: tuple[Path, ...]) -> CreateRequest:
    """Parse the Modelfile of a classic request (text, or a file on this machine)."""
    from trillama.store.create import SERVER_PATHS_REFUSED, path_allowed

    text = body.modelfile
    base_dir: Path | None = None
    if body.path:
        if not path_allowed(Path(body.path).expanduser(), allowed):
            raise APIError(400, SERVER_PATHS_REFUSED)
        base_dir = Path(body.path).expanduser().resolve().parent
        if not text:
            try:
                text = Path(body.path).expanduser().read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise APIError(400, f"error reading modelfile: open {body.path}: {exc.strerror}") from None
    try:
        modelfile = parse_modelfile(text)
        return request_from_modelfile(modelfile, store, base_dir, quantize=body.quantize or body.quantization,
                                      allowed_dirs=allowed)
    except StoreError as exc:
        raise _store_error(exc) from None


def _structured_request(body: CreateBody) -> CreateRequest:
    if body.messages is not None and not all(isinstance(m, dict) for m in body.messages):
        raise APIError(400, "json: cannot unmarshal messages: each message must be an object")
    return CreateRequest(
        from_=body.from_,
        files=dict(body.files or {}),
        adapters=dict(body.adapters or {}),
        template=body.template,
        system=body.system,
        license=_license_tuple(body.license),
        parameters=dict(body.parameters or {}),
        messages=tuple(body.messages or ()),
        quantize=body.quantize or body.quantization,
        renderer=body.renderer,
        parser=body.parser,
        requires=body.requires,
        info=body.info,
    )


@blueprint.route("/api/create", methods=["POST"])
async def create() -> Response:
    data = await read_json(request)
    if isinstance(data, dict) and "from" in data:
        data = {("from_" if k == "from" else k): v for k, v in data.items() if k != "from_"}
    body = structure(data, CreateBody)
    name_text = body.model or body.name
    if not _is_valid(name_text):
        raise APIError(400, "invalid model name")
    store = services().store
    classic = bool(body.modelfile or body.path) and not (body.from_ or body.files)
    if classic:
        # The store's own blobs (what `ollama show --modelfile` prints as FROM) and the directories
        # the operator opted into (TRILLAMA_CREATE_PATHS); nothing else on this machine.
        allowed = (store.blobs_dir.resolve(), *services().settings.create_paths)
        create_request = await _in_thread(_classic_request, body, store, allowed)
    else:
        create_request = _structured_request(body)
    prune = not services().settings.noprune
    progress = store.create(name_text, create_request, prune=prune)
    log.info("create_started", model=name_text, classic=classic)
    return await stream_or_collect(_iterate_in_thread(progress), body.stream is not False)
