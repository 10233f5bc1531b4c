"""``/v1/responses``: OpenAI's Responses API — create (streamed or not), retrieve, delete.

A request is translated into a chat plan (:mod:`.responses_input`), run on the chat path
(:func:`~trillama.api.openai.chat.chat_events`, the one inference path), and shaped into a reply
by :mod:`.responses_output`. Unlike Ollama, which refuses them, ``store`` and
``previous_response_id`` work (and ``GET …/input_items``): replies are kept in a bounded memory store
(:mod:`.response_store`; ``TRILLAMA_RESPONSES_STORE_SIZE`` and ``TRILLAMA_RESPONSES_STORE_TTL``),
and a continued response renders the stored conversation first, so its prompt starts with the
previous turn's prompt and answer and the runner reuses that cached prefix.

Streams use named SSE events (``event: response.output_text.delta`` + ``data: {...}``) and end
after the final ``response.completed`` / ``response.incomplete`` event, without a ``[DONE]`` line,
as OpenAI's do.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Mapping

from quart import Response, current_app, request

from trillama.actors.runner.messages import Done
from trillama.api.auth import request_key_id
from trillama.api.completion import Timer
from trillama.api.decode import read_request
from trillama.api.errors import APIError
from trillama.api.openai.chat import Delta, chat_events
from trillama.api.openai.common import OpenAIError, blueprint
from trillama.api.openai.response_store import ResponseStore
from trillama.api.openai.responses_input import ResponsePlan, ResponsesRequest, plan_response
from trillama.api.openai.responses_output import ReplyContext, ResponseBuilder, new_response_id
from trillama.api.provider_tools import HEADER as TOOLS_HEADER, header_value
from trillama.api.streaming import dumps, json_response
from trillama.logs import get_logger

__all__ = ["response_store", "sse_event"]

log = get_logger("trillama.api.openai.responses")

_STORE_KEY = "trillama.responses"


@blueprint.record_once
def _make_store(state: Any) -> None:
    """One store per app, sized from the settings the app was created with."""
    settings = state.app.extensions["trillama"].settings
    state.app.extensions[_STORE_KEY] = ResponseStore(settings.responses_store_size, settings.responses_store_ttl)


def response_store() -> ResponseStore:
    return current_app.extensions[_STORE_KEY]


def sse_event(event: Mapping[str, Any]) -> bytes:
    """One server-sent event: the event's ``type`` as the SSE event name, the event as data."""
    return f"event: {event['type']}\ndata: {dumps(event)}\n\n".encode()


def _not_found(ident: str) -> OpenAIError:
    return OpenAIError(404, f"Response with id '{ident}' not found.", param="response_id", code=None)


# ----------------------------------------------------------------------------- POST /v1/responses
def _context(req: ResponsesRequest, plan: ResponsePlan, store: bool) -> ReplyContext:
    return ReplyContext(
        id=new_response_id(), model=req.model, created_at=int(time.time()), instructions=req.instructions,
        previous_response_id=req.previous_response_id, store=store, tools=req.tools, tool_choice=plan.tool_choice,
        text=req.text, reasoning=req.reasoning, temperature=req.temperature, top_p=req.top_p,
        max_output_tokens=req.max_output_tokens, parallel_tool_calls=req.parallel_tool_calls,
        metadata=req.metadata, truncation=req.truncation, user=req.user, prompt_cache_key=req.prompt_cache_key,
        shapes=plan.tools.shapes,
        encrypted_reasoning=isinstance(req.include, list) and "reasoning.encrypted_content" in req.include)


def _keep(store: ResponseStore, builder: ResponseBuilder, plan: ResponsePlan, owner: str | None) -> None:
    if builder.ctx.store:
        store.put(builder.ctx.id, builder.response(), plan.conversation + [builder.assistant_message()],
                  plan.input_items, owner=owner)


async def _events(builder: ResponseBuilder, deltas: AsyncIterator[Delta | Done], on_done: Any
                  ) -> AsyncIterator[dict[str, Any]]:
    """The stream's events; the model's first delta is awaited before ``response.created`` goes
    out, so a load failure or a full queue is still a proper HTTP error status."""
    async with aclosing(deltas):  # type: ignore[type-var]
        started = False
        async for item in deltas:
            events = [] if started else builder.start()
            started = True
            if isinstance(item, Done):
                events += builder.finish(item)
                on_done()
                for event in events:
                    yield event
                return
            events += builder.feed(item)
            for event in events:
                yield event
    raise APIError(500, "model runner ended the request without a result")


async def _stream(events: AsyncIterator[dict[str, Any]], builder: ResponseBuilder) -> Response:
    try:
        first = await events.__anext__()
    except StopAsyncIteration:  # pragma: no cover - _events always yields or raises
        first = None

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield sse_event(first)
            async for event in events:
                yield sse_event(event)
        except APIError as exc:
            # Headers (200) are gone: the failure travels as OpenAI's error and failed events.
            log.info("stream_error", status=exc.status, error=exc.message)
            code = exc.code if isinstance(exc, OpenAIError) else None
            for event in builder.fail(exc, code):
                yield sse_event(event)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    response = Response(body(), status=200, content_type="text/event-stream; charset=utf-8")
    response.headers["Cache-Control"] = "no-cache"
    response.timeout = None  # a long generation is not a hung request
    return response


@blueprint.post("/v1/responses")
async def create_response() -> Response:
    timer = Timer()
    req = await read_request(request, ResponsesRequest)
    store = response_store()
    owner = request_key_id()  # the stored reply is this key's only
    history: tuple[dict[str, Any], ...] = ()
    if req.previous_response_id is not None:
        previous = store.get(req.previous_response_id, owner=owner)
        if previous is None:
            # OpenAI's answer (a 400 with this code), which agents match on to resend in full.
            raise OpenAIError(400, f"Previous response with id '{req.previous_response_id}' not found.",
                              param="previous_response_id", code="previous_response_not_found")
        history = previous.conversation
    plan = plan_response(req, history)
    builder = ResponseBuilder(_context(req, plan, store=req.store is not False and store.enabled))
    log.info("openai_response", model=req.model, stream=req.stream, id=builder.ctx.id,
             previous=req.previous_response_id, history=len(history), tools=len(plan.chat.tools or ()))
    deltas = chat_events(plan.chat, timer)
    events = _events(builder, deltas, lambda: _keep(store, builder, plan, owner))
    if req.stream:
        response = await _stream(events, builder)
    else:
        async with aclosing(events):  # type: ignore[type-var]
            async for _ in events:
                pass
        response = json_response(builder.response())
    if plan.tools.left_out:
        response.headers[TOOLS_HEADER] = header_value(plan.tools.left_out)
    return response


# ----------------------------------------------------------------------------- GET / DELETE
@blueprint.get("/v1/responses/<ident>")
async def retrieve_response(ident: str) -> Response:
    stored = response_store().get(ident, owner=request_key_id())
    if stored is None:
        raise _not_found(ident)
    return json_response(stored.body)


@blueprint.get("/v1/responses/<ident>/input_items")
async def list_input_items(ident: str) -> Response:
    """A stored response's input items, paged as OpenAI pages them (``order`` ``desc`` by default,
    ``limit`` 1–100, default 20, ``after`` an item id)."""
    stored = response_store().get(ident, owner=request_key_id())
    if stored is None:
        raise _not_found(ident)
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise OpenAIError(400, f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.", param="order",
                          code="invalid_value")
    raw_limit = request.args.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise OpenAIError(400, f"Invalid 'limit': expected an integer from 1 to 100, got '{raw_limit}'.",
                          param="limit", code="invalid_value")
    items = list(stored.input_items)
    if order == "desc":
        items.reverse()
    start = 0
    after = request.args.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise OpenAIError(400, f"No input item with id '{after}' in response '{ident}'.", param="after",
                              code="invalid_value")
        start = ids.index(after) + 1
    page = items[start:start + int(raw_limit)]
    return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                          "last_id": page[-1]["id"] if page else None,
                          "has_more": start + len(page) < len(items)})


@blueprint.delete("/v1/responses/<ident>")
async def delete_response(ident: str) -> Response:
    if not response_store().delete(ident, owner=request_key_id()):
        raise _not_found(ident)
    return json_response({"id": ident, "object": "response.deleted", "deleted": True})

