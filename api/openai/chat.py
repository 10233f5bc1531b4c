"""``POST /v1/chat/completions``: validation (:func:`plan_chat`), the one inference path seen as
deltas (:func:`chat_events`), and the two reply shapes (a completion object or SSE chunks).

The Responses route reuses :func:`plan_chat` and :func:`chat_events`: it is a different wire
format over the same request path, not a second one.
"""

from __future__ import annotations

import json
import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Mapping

import attrs
from quart import Response, request

from trillama.actors.runner.messages import Done, Piece
from trillama.actors.sampling import job_from_options
from trillama.api.completion import Timer, check_token_limit, model_lease, parse_keep_alive_field, resolve_model, run_job
from trillama.api.decode import read_request
from trillama.api.errors import APIError
from trillama.api.openai.common import (
    SYSTEM_FINGERPRINT,
    GenerationFields,
    blueprint,
    chat_usage,
    check_n,
    finish_reason,
    format_grammar,
    include_usage,
    merged_options,
    new_id,
    sse,
    stop_list,
    top_logprobs_count,
)
from trillama.api.openai.messages import native_messages
from trillama.api.openai.tools import check_tools, ollama_format, parse_tool_choice, think_value
from trillama.api.prompting import check_think, forced_tool_call, require_vision
from trillama.api.system_messages import render_conversation
from trillama.api.streaming import json_response
from trillama.logs import get_logger

__all__ = ["ChatCompletionRequest", "ChatPlan", "Delta", "plan_chat", "chat_events", "openai_tool_call"]

log = get_logger("trillama.api.openai")


@attrs.define
class ChatCompletionRequest(GenerationFields):
    messages: Any = None
    max_completion_tokens: int | None = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    reasoning: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


# ----------------------------------------------------------------------------- chat: events
@attrs.frozen
class Delta:
    """One step of a chat answer, already split: reasoning, content, whole tool calls, logprobs."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    logprobs: tuple[dict[str, Any], ...] = ()


def openai_tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = call["function"]
    return {
        "id": call.get("id") or "",
        "index": fn.get("index", 0),
        "type": "function",
        "function": {"name": fn["name"],
                     "arguments": json.dumps(fn.get("arguments") or {}, ensure_ascii=False, separators=(",", ":"))},
    }


@attrs.frozen
class ChatPlan:
    """Everything a validated chat request needs once a model is leased."""

    record: Any
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    think: bool | str | None
    options: dict[str, Any]
    keep_alive: float | None
    grammar: str | None
    logprobs: bool
    top_logprobs: int
    #: chat completions truncate old messages to fit (Ollama does); the Responses route does not
    truncate: bool = True
    #: context shift when the context fills while answering (Ollama's default); off on Responses
    shift: bool = True
    #: ``parallel_tool_calls: false``: the answer's first tool call only
    single_call: bool = False
    #: the answer must be a tool call (``tool_choice`` required or named)
    forced_call: bool = False


async def chat_events(plan: ChatPlan, timer: Timer) -> AsyncIterator[Delta | Done]:
    """The single inference path, seen as deltas: lease, render, run, parse; ends with ``Done``.

    Logprobs of text the output parser is still holding back (a possible tool-call tag) travel
    with the next delta that is released, so none are lost or duplicated.
    """
    async with model_lease(plan.record, plan.options, plan.keep_alive, timer) as lease:
        num_ctx = lease.num_ctx_for(plan.options.get("num_ctx"))
        prompt = await render_conversation(plan.record, plan.messages, tools=plan.tools, think=plan.think,
                                           truncate=plan.truncate, num_ctx=num_ctx, count_tokens=lease.tokenize)
        job = job_from_options(plan.options, prompt=prompt.text, grammar=plan.grammar, logprobs=plan.logprobs,
                               top_logprobs=plan.top_logprobs, num_ctx=num_ctx, images=prompt.images,
                               shift=plan.shift)
        parser = prompt.output_parser()
        held: list[dict[str, Any]] = []
        calls = 0

        def delta(message: Mapping[str, Any]) -> Delta:
            # Once per streamed token: nothing is built for the fields a plain piece leaves empty.
            logprobs: tuple = ()
            if held:
                logprobs = tuple(held)
                held.clear()
            nonlocal calls
            made = message.get("tool_calls")
            if made and plan.single_call:
                made = made[:max(0, 1 - calls)]
            calls += len(made or ())
            return Delta(content=message.get("content") or "", reasoning=message.get("thinking") or "",
                          tool_calls=tuple(openai_tool_call(c) for c in made) if made else (),
                          logprobs=logprobs)

        async with aclosing(run_job(lease, job)) as events:
            async for event in events:
                if isinstance(event, Piece):
                    held.extend(event.logprobs or ())
                    for message in parser.feed(event.text):
                        yield delta(message)
                else:
                    cut_call = (parser.tools is not None and parser.tools.in_call
                                and (event.done_reason == "length" or plan.forced_call))
                    for message in parser.flush():
                        if cut_call:  # an unfinished call (cut by the limit): no template markup as text
                            message = {**message, "content": ""}
                        yield delta(message)
                    if held:
                        yield Delta(logprobs=tuple(held))
                        held.clear()
                    yield event
                    return


def _chunk_delta(item: Delta) -> list[dict[str, Any]]:
    """A delta as OpenAI chunk deltas: reasoning, content and tool calls each in their own."""
    out: list[dict[str, Any]] = []
    if item.reasoning:
        out.append({"content": "", "reasoning": item.reasoning})
    if item.content:
        out.append({"content": item.content})
    if item.tool_calls:
        out.append({"content": "", "tool_calls": list(item.tool_calls)})
    if not out and item.logprobs:
        out.append({"content": ""})
    return out


async def _chat_chunks(events: AsyncIterator[Delta | Done], *, model: str, include_usage: bool
                       ) -> AsyncIterator[dict[str, Any]]:
    """``chat.completion.chunk`` objects: one id and ``created`` for all, the role in the first,
    a separate finish chunk, then (when asked) a usage chunk with no choices."""
    ident, created = new_id("chatcmpl"), int(time.time())
    first = True
    called = False

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: tuple = ()) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"index": 0, "delta": delta, "logprobs": {"content": list(logprobs)} if logprobs else None,
                         "finish_reason": finish}],
        }
        if include_usage:
            body["usage"] = None
        return body

    async with aclosing(events):  # type: ignore[type-var]
        async for item in events:
            if isinstance(item, Done):
                if first:  # an empty answer still announces the role
                    yield chunk({"role": "assistant", "content": ""})
                yield chunk({}, finish_reason(item.done_reason, called))
                if include_usage:
                    yield {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                           "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [], "usage": chat_usage(item)}
                return
            called = called or bool(item.tool_calls)
            logprobs = item.logprobs
            for delta in _chunk_delta(item):
                if first:
                    delta = {"role": "assistant", **delta}
                    first = False
                yield chunk(delta, logprobs=logprobs)
                logprobs = ()  # logprobs go with the first chunk of a delta only


async def _chat_completion(events: AsyncIterator[Delta | Done], *, model: str) -> dict[str, Any]:
    content, reasoning = [], []
    calls: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] = []
    done: Done | None = None
    async with aclosing(events):  # type: ignore[type-var]
        async for item in events:
            if isinstance(item, Done):
                done = item
                break
            content.append(item.content)
            reasoning.append(item.reasoning)
            calls.extend(item.tool_calls)
            logprobs.extend(item.logprobs)
    if done is None:
        raise APIError(500, "model runner ended the request without a result")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content)}
    if "".join(reasoning):
        message["reasoning"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(done.done_reason, bool(calls)),
                     "logprobs": {"content": logprobs} if logprobs else None}],
        "usage": chat_usage(done),
    }


# ----------------------------------------------------------------------------- POST /v1/chat/completions
def plan_chat(req: ChatCompletionRequest, *, truncate: bool = True, shift: bool = True,
              single_call: bool = False) -> ChatPlan:
    """Validate a chat request completely before any model is touched (every 4xx comes from here).

    ``truncate``, ``shift`` and ``single_call`` are the :class:`ChatPlan` fields of the same names
    (the Responses route plans with the first two off)."""
    check_n(req.n)  # n > 1: one choice, as Ollama answers (logged)
    top_logprobs = top_logprobs_count(req.top_logprobs)
    record = resolve_model(req.model, empty_status=400, empty_message="model is required")
    keep_alive = parse_keep_alive_field(req.keep_alive)
    caps = record.capabilities or []
    if "completion" not in caps:
        raise APIError(400, f'"{req.model}" does not support chat')
    messages = native_messages(req.messages)
    require_vision(record, any(m.get("images") for m in messages))
    tools = check_tools(req.tools)
    choice = parse_tool_choice(req.tool_choice, tools)
    if choice.mode == "none":
        tools = None  # the model is not told about tools, so it cannot call them
    if tools and "tools" not in caps:
        raise APIError(400, f"{record.name.display} does not support tools")
    think = check_think(think_value(req.reasoning_effort, req.reasoning), record, req.model)
    if choice.forced:
        assert tools is not None
        grammar, think = forced_tool_call(record, tools, choice.name, think)
    else:
        grammar = format_grammar(ollama_format(req.response_format))
    check_token_limit("max_tokens", req.max_tokens)
    check_token_limit("max_completion_tokens", req.max_completion_tokens)
    num_predict = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    options = merged_options(record, req.options, {
        "num_predict": num_predict, "seed": req.seed, "stop": stop_list(req.stop),
        "temperature": req.temperature, "top_p": req.top_p, "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
    })
    return ChatPlan(record=record, messages=messages, tools=tools, think=think, options=options,
                     keep_alive=keep_alive, grammar=grammar, logprobs=bool(req.logprobs) or top_logprobs > 0,
                     top_logprobs=top_logprobs, truncate=truncate, shift=shift, single_call=single_call,
                     forced_call=choice.forced)


@blueprint.post("/v1/chat/completions")
async def chat_completions() -> Response:
    timer = Timer()
    req = await read_request(request, ChatCompletionRequest)
    plan = plan_chat(req)
    log.info("openai_chat", model=req.model, stream=req.stream, tools=len(plan.tools or ()),
             tool_choice=req.tool_choice if isinstance(req.tool_choice, str) else
             ("function" if req.tool_choice else None))
    events = chat_events(plan, timer)
    if req.stream:
        return await sse(_chat_chunks(events, model=req.model, include_usage=include_usage(req.stream_options)))
    return json_response(await _chat_completion(events, model=req.model))
