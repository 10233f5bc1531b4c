"""``GET /v1/models`` and ``GET /v1/models/{model}``: the model store in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

import trio
from quart import Response

from trillama.api.completion import resolve_model
from trillama.api.context import services
from trillama.api.openai.common import blueprint
from trillama.api.streaming import json_response

__all__: list[str] = []


# ----------------------------------------------------------------------------- GET /v1/models
def _model_object(name: Any, modified_at: Any) -> dict[str, Any]:
    return {"id": name.display, "object": "model", "created": int(modified_at.timestamp()),
            "owned_by": name.namespace}


@blueprint.get("/v1/models")
async def list_models() -> Response:
    entries = await trio.to_thread.run_sync(services().store.list_models)
    return json_response({"object": "list", "data": [_model_object(e.name, e.modified_at) for e in entries]})


@blueprint.get("/v1/models/<path:model>")
async def retrieve_model(model: str) -> Response:
    record = resolve_model(model)
    return json_response(_model_object(record.name, record.modified_at))
