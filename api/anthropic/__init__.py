"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Why: coding agents built for Anthropic (Claude Code with ``ANTHROPIC_BASE_URL``, the ``anthropic``
SDKs) speak only this dialect. Like ``/v1/chat/completions`` it is a translation onto the one
model-actor path ``/api/chat`` uses; nothing here schedules or samples.

The package keeps one job per module: :mod:`.plan` (decoding and validation into a plan),
:mod:`.translate` (blocks, system, tools, tool choice, thinking → native values), :mod:`.run`
(lease, render, run, parse; token counting), :mod:`.reply` (the non-streaming message),
:mod:`.stream` (the event sequence), :mod:`.sse` (framing, pings, errors mid-stream) and
:mod:`.errors` (Anthropic's error shape and statuses).

It takes what Claude Code sends (``?beta=true``, any ``anthropic-beta`` value, ``role: "system"``
messages inside ``messages``, ``thinking`` ``adaptive``, ``context_management``, ``output_config``,
``metadata``, ``cache_control`` on any block). Server tools follow the rule shared with
``/v1/responses`` (:mod:`trillama.api.provider_tools`). The prompt is never truncated: a prompt
longer than the context is Anthropic's ``prompt is too long: N tokens > M maximum``, and a context
that fills up while answering ends it with ``stop_reason: "model_context_window_exceeded"``.

Beyond Ollama's layer: ``tool_choice`` is honoured (``any`` and ``tool`` constrain decoding so the
model must call a tool; ``none`` hides the tools), ``count_tokens`` exists and is exact, a
``stop_sequence`` answer says which sequence matched, and every error of these routes, expected
or not, is in Anthropic's shape.
"""

from __future__ import annotations

from quart import Blueprint, Response, current_app, request

from trillama.api.anthropic.errors import STATUSES, error_body, to_api_error
from trillama.api.anthropic.reply import collect_message
from trillama.api.anthropic.plan import CountTokensRequest, MessagesRequest, plan_count, plan_messages
from trillama.api.anthropic.run import count_prompt_tokens, message_events
from trillama.api.anthropic.sse import sse_response
from trillama.api.anthropic.stream import stream_events
from trillama.api.completion import Timer
from trillama.api.context_limit import ContextExceeded
from trillama.api.decode import read_request
from trillama.api.errors import register_error_shape
from trillama.api.provider_tools import HEADER as TOOLS_HEADER, header_value
from trillama.api.streaming import json_response
from trillama.logs import get_logger

__all__ = ["blueprint"]

log = get_logger("trillama.api.anthropic")

blueprint = Blueprint("anthropic", __name__)

# Every error under /v1/messages, whether raised in these routes, refused before routing or
# unexpected, is rendered by the app's one handler in Anthropic's shape, with 503 answered as 529.
register_error_shape("/v1/messages", error_body, statuses=STATUSES)


@blueprint.errorhandler(ContextExceeded)
async def _context_exceeded(exc: ContextExceeded) -> Response:
    """A prompt longer than the context in Anthropic's own words (``prompt is too long: N tokens >
    M maximum``), which Claude Code answers by compacting the conversation: the one error this
    protocol words differently from the others (OpenAI's blueprint has the same for its wording)."""
    api_error = to_api_error(exc)
    return json_response(error_body(api_error.status, api_error.message), status=api_error.status)


@blueprint.post("/v1/messages")
async def messages() -> Response:
    timer = Timer()
    req = await read_request(request, MessagesRequest)
    plan = plan_messages(req)
    # The app's nursery (QuartTrio's, opened by the ASGI lifespan) runs a stream's producer so
    # that pings can flow while it waits; without one the stream runs inline, without pings.
    nursery = getattr(current_app, "nursery", None) if req.stream else None
    log.info("anthropic_messages", model=req.model, stream=req.stream, tools=len(plan.tools or ()),
             tool_choice=plan.choice.mode, think=plan.think,
             producer=("task" if nursery is not None else "inline") if req.stream else None)
    events = message_events(plan, timer)
    if req.stream:
        response = await sse_response(stream_events(events, model=req.model), nursery=nursery)
    else:
        response = json_response(await collect_message(events, model=req.model))
    if plan.left_out:
        response.headers[TOOLS_HEADER] = header_value(plan.left_out)
    return response


@blueprint.route("/api/hello", methods=["GET", "HEAD"])
async def hello() -> Response:
    """Anthropic's reachability probe: Claude Code sends ``HEAD <ANTHROPIC_BASE_URL>/api/hello`` to
    warm its connection before the first request (a 404 here would be a failure in every log)."""
    return json_response({})


@blueprint.post("/v1/messages/count_tokens")
async def count_tokens() -> Response:
    timer = Timer()
    req = await read_request(request, CountTokensRequest)
    plan = plan_count(req)
    return json_response({"input_tokens": await count_prompt_tokens(plan, timer)})

