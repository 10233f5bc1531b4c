"""``POST /v1/embeddings``: the native embed path, vectors normalised and optionally base64."""

from __future__ import annotations

import base64
import struct
from typing import Any

import attrs
from quart import Response, request

from trillama.api.completion import (
    Timer,
    coerce_request_options,
    embed_inputs,
    parse_keep_alive_field,
    resolve_model,
    unit_length,
)
from trillama.api.decode import read_request
from trillama.api.errors import APIError
from trillama.api.openai.common import blueprint
from trillama.api.streaming import json_response

__all__ = ["EmbeddingRequest", "float32_base64"]


@attrs.define
class EmbeddingRequest:
    model: str = ""
    input: Any = None
    encoding_format: str | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


def float32_base64(vector: list[float]) -> str:
    """``encoding_format: base64``: little-endian float32, as the openai client decodes it."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# ----------------------------------------------------------------------------- POST /v1/embeddings
@blueprint.post("/v1/embeddings")
async def embeddings() -> Response:
    timer = Timer()
    req = await read_request(request, EmbeddingRequest)
    if isinstance(req.input, str):
        inputs = [req.input]
    elif isinstance(req.input, list) and req.input and all(isinstance(x, str) for x in req.input):
        inputs = list(req.input)
    else:
        raise APIError(400, "invalid input")
    encoding = (req.encoding_format or "float").lower()
    if encoding not in ("float", "base64"):
        raise APIError(400, f"Invalid value for 'encoding_format' = {req.encoding_format}. "
                            "Supported values: ['float', 'base64'].")
    if req.dimensions is not None and req.dimensions < 0:
        raise APIError(400, "dimensions must be a positive number")
    record = resolve_model(req.model)
    keep_alive = parse_keep_alive_field(req.keep_alive)
    options = coerce_request_options(req.options)
    vectors, tokens = await embed_inputs(record, inputs, truncate=True, options=options, keep_alive=keep_alive,
                                         timer=timer)
    data = []
    for index, vector in enumerate(vectors):
        vector = unit_length(vector)
        if req.dimensions and req.dimensions < len(vector):
            vector = unit_length(vector[: req.dimensions])
        data.append({"object": "embedding", "index": index,
                     "embedding": float32_base64(vector) if encoding == "base64" else vector})
    return json_response({"object": "list", "data": data, "model": req.model,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
