"""``POST /api/pull`` and ``POST /api/push``: registry transfers as NDJSON progress lines.

The work is the registry service's (:mod:`trillama.registry`); these handlers check the request,
start the transfer and turn its :class:`~trillama.registry.Progress` lines into Ollama's objects.
The first line (``pulling manifest`` / ``retrieving manifest``) goes out before the registry is
asked anything, so registry errors arrive as a trailing ``{"error": …}`` line with status 200, as
Ollama's do; with ``stream: false`` they are the response, status 500.
"""

from __future__ import annotations

from typing import AsyncIterator

import attrs
from quart import Blueprint, Response, request

from trillama.api.context import services
from trillama.api.decode import read_json, structure
from trillama.api.errors import APIError
from trillama.api.streaming import stream_or_collect
from trillama.logs import get_logger
from trillama.registry import Progress, RegistryError
from trillama.store import InvalidName, ModelName, StoreError

__all__ = ["blueprint"]

log = get_logger("trillama.api.registry")

blueprint = Blueprint("registry", __name__)


@attrs.define
class TransferRequest:
    model: str = ""
    name: str = ""
    insecure: bool = False
    stream: bool | None = None
    username: str = ""  # sent by old clients; ignored, as Ollama ignores them
    password: str = ""


async def _lines(progress: AsyncIterator[Progress]) -> AsyncIterator[dict]:
    try:
        async for line in progress:
            yield line.to_json()
    except (RegistryError, StoreError, OSError) as exc:  # OSError: disk full, permissions
        raise APIError(500, str(exc)) from None
    finally:
        await progress.aclose()  # type: ignore[attr-defined]


def _parse(text: str) -> ModelName:
    try:
        return ModelName.parse(text)
    except InvalidName:
        raise APIError(400, "invalid model name") from None


def _registry():
    registry = services().registry
    if registry is None:
        raise APIError(500, "this server has no registry service")
    return registry


@blueprint.route("/api/pull", methods=["POST"])
async def pull() -> Response:
    body = structure(await read_json(request), TransferRequest)
    name = _parse(body.model or body.name)
    log.info("pull_started", model=name.display, insecure=body.insecure)
    progress = _registry().pull(name, insecure=body.insecure)
    return await stream_or_collect(_lines(progress), body.stream is not False)


@blueprint.route("/api/push", methods=["POST"])
async def push() -> Response:
    body = structure(await read_json(request), TransferRequest)
    text = body.model or body.name
    if not text:
        raise APIError(400, "model is required")
    name = _parse(text)
    log.info("push_started", model=name.display, insecure=body.insecure)
    progress = _registry().push(name, insecure=body.insecure)
    return await stream_or_collect(_lines(progress), body.stream is not False)
