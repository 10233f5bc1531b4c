"""OpenAI-compatible routes under ``/v1``: chat completions, completions, embeddings, models.

Why a translation layer and not a second server: half of the ecosystem (the ``openai`` SDKs,
LangChain's OpenAI classes, benchmark tools) only speaks OpenAI's dialect. Every route here turns
an OpenAI body into the same values the native routes build (a stored model, merged Ollama
options, a rendered prompt, a :class:`~trillama.actors.runner.messages.GenerateJob`) and reads
the same runner events through :func:`~trillama.api.completion.run_job`; only the shapes differ.

Where Ollama's own layer is known to be wrong or silent, this one is explicit: ``tool_choice`` is
honoured (``required`` and a named function constrain decoding so the model *must* call a tool),
Ollama's ``options`` and ``keep_alive`` are accepted as extra body fields, ``n`` > 1 is refused with
a 400 instead of being ignored, and ``/v1/models`` lists ``[]`` rather than ``null`` when empty.
Errors are raised as :class:`~trillama.api.errors.APIError`; the app renders them in OpenAI's
``{"error": {...}}`` shape with the status that makes the SDK raise the matching exception.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import struct
import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Mapping

import attrs
import trio
from quart import Blueprint, Response, request

from trillama.actors.runner.messages import Done, Piece
from trillama.actors.sampling import job_from_options
from trillama.actors.structured import FormatError, grammar_for_format, grammar_for_tool_call
from trillama.api.completion import (
    Timer,
    coerce_request_options,
    model_lease,
    parse_keep_alive_field,
    resolve_model,
    run_job,
)
from trillama.api.context import services
from trillama.api.decode import read_request
from trillama.api.errors import APIError, openai_error_body
from trillama.api.inference import embed_inputs
from trillama.api.prompting import build_chat_prompt, build_generate_prompt, check_think, prompt_format, require_vision
from trillama.api.streaming import json_response, sse_response
from trillama.logs import get_logger

__all__ = [
    "blueprint",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "ToolChoice",
    "native_messages",
    "parse_tool_choice",
    "ollama_format",
    "stop_list",
    "float32_base64",
]

log = get_logger("trillama.api.openai")

blueprint = Blueprint("openai", __name__)

SYSTEM_FINGERPRINT = "fp_ollama"
MAX_TOP_LOGPROBS = 20


# ----------------------------------------------------------------------------- request bodies
# Loose types (``Any``) where OpenAI allows several JSON shapes; those fields are checked by hand
# below so the 400 says what is wrong rather than where cattrs gave up.
@attrs.define
class _GenerationFields:
    """What chat and legacy completions share (OpenAI's two request types repeat them)."""

    model: str = ""
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: Any = None
    temperature: float | None = None
    top_p: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    n: int | None = None
    # Ollama's own knobs, which its /v1 layer has no way to pass (ollama#2722).
    options: dict[str, Any] | None = None
    keep_alive: Any = None


@attrs.define
class ChatCompletionRequest(_GenerationFields):
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


@attrs.define
class CompletionRequest(_GenerationFields):
    prompt: Any = None
    suffix: str | None = None
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None


@attrs.define
class EmbeddingRequest:
    model: str = ""
    input: Any = None
    encoding_format: str | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: Any = None


@attrs.frozen
class ToolChoice:
    """A parsed ``tool_choice``: ``mode`` is ``none``, ``auto``, ``required`` or ``function``."""

    mode: str = "auto"
    name: str | None = None

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "function")


# ----------------------------------------------------------------------------- small helpers
def float32_base64(vector: list[float]) -> str:
    """``encoding_format: base64``: little-endian float32, as the openai client decodes it."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def _check_n(n: int | None) -> None:
    """Refuse ``n`` > 1 loudly: Ollama ignores it and returns one choice, which clients misread."""
    if n is not None and n != 1:
        raise APIError(400, f"n={n} is not supported: only one choice per request (n=1)")


def stop_list(stop: Any) -> list[str] | None:
    """``stop`` as a list; a non-string entry is a 400 (Ollama's chat layer drops it silently)."""
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        for item in stop:
            if not isinstance(item, str):
                raise APIError(400, f"invalid type for 'stop' field: {_json_type(item)}")
        return list(stop)
    raise APIError(400, f"invalid type for 'stop' field: {_json_type(stop)}")


def _json_type(value: Any) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "[]interface {}"
    return "map[string]interface {}"


def _include_usage(stream_options: Mapping[str, Any] | None) -> bool:
    return bool(stream_options and stream_options.get("include_usage") is True)


def _options(record: Any, options: dict[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The options a /v1 request runs with: Modelfile parameters, then OpenAI's defaults
    (temperature and top_p 1.0, as OpenAI and Ollama's layer impose), then the request's Ollama
    ``options``, then the OpenAI fields the request actually set."""
    merged: dict[str, Any] = {**(record.parameters or {}), "temperature": 1.0, "top_p": 1.0}
    merged.update(coerce_request_options(options))
    merged.update({k: v for k, v in fields.items() if v is not None})
    return merged


def _grammar(fmt: Any) -> str | None:
    try:
        return grammar_for_format(fmt)
    except FormatError as exc:
        raise APIError(400, str(exc)) from None


def _usage(done: Done) -> dict[str, int]:
    # The full prompt length: tokens evaluated now plus tokens reused from the slot's cache.
    prompt = done.prompt_eval_count + done.cached_count
    return {"prompt_tokens": prompt, "completion_tokens": done.eval_count,
            "total_tokens": prompt + done.eval_count}


def _finish_reason(done_reason: str, tool_calls: bool) -> str:
    reason = done_reason or "stop"
    return "tool_calls" if tool_calls and reason == "stop" else reason


def _top_logprobs(value: int | None, field: str = "top_logprobs") -> int:
    n = value or 0
    if not 0 <= n <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"{field} must be between 0 and {MAX_TOP_LOGPROBS}")
    return n


async def _sse(chunks: AsyncIterator[dict]) -> Response:
    response = await sse_response(chunks, openai_error=openai_error_body)
    response.headers["Cache-Control"] = "no-cache"
    return response


# ----------------------------------------------------------------------------- chat: messages
_IMAGE_DATA_URI = re.compile(r"^data:(?:image/(?:jpeg|jpg|png|webp))?;base64,(.*)$", re.DOTALL)


def _image_from_url(part: Mapping[str, Any]) -> bytes:
    """A ``data:`` URI's image bytes; remote URLs are refused as Ollama refuses them."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, Mapping) else ref
    if not isinstance(url, str):
        raise APIError(400, "invalid image input")
    if url.startswith(("http://", "https://")):
        raise APIError(400, "image URLs are not currently supported, please use base64 encoded data instead")
    match = _IMAGE_DATA_URI.match(url)
    if match is None:
        raise APIError(400, "invalid image input")
    try:
        return base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "invalid image input") from None


def _content(role: str, content: Any, has_tool_calls: bool) -> tuple[str, list[bytes]]:
    """Text and images of one message's ``content`` (a string or an array of parts).

    Text parts are joined with a blank line, which is what Ollama's template data gets when it
    splits parts into same-role messages and merges them again; keeping one message avoids
    breaking Jinja templates that insist on alternating roles.
    """
    if isinstance(content, str):
        return content, []
    if content is None:
        if has_tool_calls or role == "assistant":
            return "", []
        raise APIError(400, "invalid message content type: <nil>")
    if not isinstance(content, list):
        raise APIError(400, f"invalid message content type: {_json_type(content)}")
    texts: list[str] = []
    images: list[bytes] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image_from_url(part))
        elif kind == "input_audio":
            raise APIError(400, "audio input is not supported")
        else:
            raise APIError(400, "invalid message format")
    return "\n\n".join(texts), images


def _tool_calls_in(message: Mapping[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    """An assistant turn's OpenAI ``tool_calls`` as native ones (arguments parsed from JSON text)."""
    raw = message.get("tool_calls")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise APIError(400, "invalid tool_calls: expected an array")
    calls = []
    for index, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise APIError(400, "invalid tool call: function name is required")
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise APIError(400, "invalid tool call arguments") from None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise APIError(400, "invalid tool call arguments")
        call_id = call.get("id") if isinstance(call.get("id"), str) else ""
        if call_id:
            names[call_id] = fn["name"]
        calls.append({"id": call_id, "function": {"index": index, "name": fn["name"], "arguments": args}})
    return calls


def native_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages → the native message dicts :func:`build_chat_prompt` renders.

    ``developer`` is OpenAI's newer name for ``system``; ``tool`` results get their ``tool_name``
    from the assistant call with the same ``tool_call_id`` (or from ``name``).
    """
    if raw is None:
        raise APIError(400, "'messages' is a required property")
    if not isinstance(raw, list):
        raise APIError(400, f"invalid type for 'messages' field: {_json_type(raw)}")
    if not raw:
        raise APIError(400, "[] is too short - 'messages'")
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in raw:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise APIError(400, "invalid message format: each message needs a string 'role'")
        role = message["role"].lower()
        if role == "developer":
            role = "system"
        calls = _tool_calls_in(message, names) if role == "assistant" else []
        text, images = _content(role, message.get("content"), bool(calls))
        native: dict[str, Any] = {"role": role, "content": text}
        if images:
            native["images"] = images
        if calls:
            native["tool_calls"] = calls
        if role == "tool":
            call_id = message.get("tool_call_id")
            name = message.get("name")
            if isinstance(call_id, str) and call_id:
                native["tool_call_id"] = call_id
                name = names.get(call_id, name)
            if isinstance(name, str) and name:
                native["tool_name"] = name
        if isinstance(message.get("reasoning"), str):
            native["thinking"] = message["reasoning"]
        out.append(native)
    return out


# ----------------------------------------------------------------------------- chat: tools, format, think
def _check_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise APIError(400, f"invalid type for 'tools' field: {_json_type(tools)}")
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise APIError(400, "invalid tool: each tool needs a 'function' with a 'name'")
        if tool.get("type", "function") != "function":
            raise APIError(400, f"invalid tool type: {tool.get('type')!r} (only 'function' is supported)")
    return tools or None


def parse_tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> ToolChoice:
    """Validate ``tool_choice`` against ``tools``; OpenAI's rules, with OpenAI-like messages."""
    if value is None:
        return ToolChoice("auto")
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise APIError(400, f"invalid tool_choice: {value!r} (must be 'none', 'auto', 'required' or a function)")
        choice = ToolChoice(value)
    elif isinstance(value, Mapping):
        fn = value.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if value.get("type") != "function" or not isinstance(name, str) or not name:
            raise APIError(400, "invalid tool_choice: expected {\"type\": \"function\", \"function\": {\"name\": ...}}")
        choice = ToolChoice("function", name)
    else:
        raise APIError(400, f"invalid type for 'tool_choice' field: {_json_type(value)}")
    if choice.forced and not tools:
        raise APIError(400, "tool_choice requires 'tools' to be set")
    if choice.mode == "function" and not any(t["function"]["name"] == choice.name for t in tools or []):
        raise APIError(400, f"tool_choice names function {choice.name!r}, which is not in 'tools'")
    return choice


def ollama_format(value: Any) -> Any:
    """OpenAI's ``response_format`` → Ollama's ``format`` (``"json"``, a schema, or nothing)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise APIError(400, f"invalid type for 'response_format' field: {_json_type(value)}")
    kind = value.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise APIError(400, "response_format json_schema needs a 'json_schema.schema' object")
        return dict(schema)
    raise APIError(400, f"invalid response_format type: {kind!r}")


_EFFORT = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "max": "max",
           "xhigh": "max", "ultra": "max"}


def _think_value(req: ChatCompletionRequest) -> bool | str | None:
    effort = req.reasoning_effort
    if effort is None and req.reasoning:
        effort = req.reasoning.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in _EFFORT:
        raise APIError(400, f'invalid reasoning value: "{effort}" (must be "minimal", "low", "medium", "high", '
                            '"xhigh", "ultra", "max", or "none")')
    return _EFFORT[effort]


# ----------------------------------------------------------------------------- chat: events
@attrs.frozen
class _Delta:
    """One step of a chat answer, already split: reasoning, content, whole tool calls, logprobs."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    logprobs: tuple[dict[str, Any], ...] = ()


def _openai_tool_call(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = call["function"]
    return {
        "id": call.get("id") or "",
        "index": fn.get("index", 0),
        "type": "function",
        "function": {"name": fn["name"],
                     "arguments": json.dumps(fn.get("arguments") or {}, ensure_ascii=False, separators=(",", ":"))},
    }


@attrs.frozen
class _ChatPlan:
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


async def _chat_events(plan: _ChatPlan, timer: Timer) -> AsyncIterator[_Delta | Done]:
    """The single inference path, seen as deltas: lease, render, run, parse; ends with ``Done``.

    Logprobs of text the output parser is still holding back (a possible tool-call tag) travel
    with the next delta that is released, so none are lost or duplicated.
    """
    async with model_lease(plan.record, plan.options, plan.keep_alive, timer) as lease:
        num_ctx = lease.num_ctx_for(plan.options.get("num_ctx"))
        prompt = await build_chat_prompt(plan.record, plan.messages, tools=plan.tools, think=plan.think,
                                         truncate=True, num_ctx=num_ctx, count_tokens=lease.tokenize)
        job = job_from_options(plan.options, prompt=prompt.text, grammar=plan.grammar, logprobs=plan.logprobs,
                               top_logprobs=plan.top_logprobs, num_ctx=num_ctx, images=prompt.images)
        parser = prompt.output_parser()
        held: list[dict[str, Any]] = []

        def delta(message: Mapping[str, Any]) -> _Delta:
            logprobs = tuple(held)
            held.clear()
            return _Delta(content=message.get("content") or "", reasoning=message.get("thinking") or "",
                          tool_calls=tuple(_openai_tool_call(c) for c in message.get("tool_calls") or ()),
                          logprobs=logprobs)

        async with aclosing(run_job(lease, job)) as events:
            async for event in events:
                if isinstance(event, Piece):
                    held.extend(event.logprobs or ())
                    for message in parser.feed(event.text):
                        yield delta(message)
                else:
                    for message in parser.flush():
                        yield delta(message)
                    if held:
                        yield _Delta(logprobs=tuple(held))
                        held.clear()
                    yield event
                    return


def _chunk_delta(item: _Delta) -> list[dict[str, Any]]:
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


async def _chat_chunks(events: AsyncIterator[_Delta | Done], *, model: str, include_usage: bool
                       ) -> AsyncIterator[dict[str, Any]]:
    """``chat.completion.chunk`` objects: one id and ``created`` for all, the role in the first,
    a separate finish chunk, then (when asked) a usage chunk with no choices."""
    ident, created = _new_id("chatcmpl"), int(time.time())
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
                yield chunk({}, _finish_reason(item.done_reason, called))
                if include_usage:
                    yield {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                           "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [], "usage": _usage(item)}
                return
            called = called or bool(item.tool_calls)
            logprobs = item.logprobs
            for delta in _chunk_delta(item):
                if first:
                    delta = {"role": "assistant", **delta}
                    first = False
                yield chunk(delta, logprobs=logprobs)
                logprobs = ()  # logprobs go with the first chunk of a delta only


async def _chat_completion(events: AsyncIterator[_Delta | Done], *, model: str) -> dict[str, Any]:
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
        "id": _new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(done.done_reason, bool(calls)),
                     "logprobs": {"content": logprobs} if logprobs else None}],
        "usage": _usage(done),
    }


# ----------------------------------------------------------------------------- POST /v1/chat/completions
def plan_chat(req: ChatCompletionRequest) -> _ChatPlan:
    """Validate a chat request completely before any model is touched (every 4xx comes from here)."""
    _check_n(req.n)
    top_logprobs = _top_logprobs(req.top_logprobs)
    record = resolve_model(req.model, empty_status=400, empty_message="model is required")
    keep_alive = parse_keep_alive_field(req.keep_alive)
    caps = record.capabilities or []
    if "completion" not in caps:
        raise APIError(400, f'"{req.model}" does not support chat')
    messages = native_messages(req.messages)
    require_vision(record, any(m.get("images") for m in messages))
    tools = _check_tools(req.tools)
    choice = parse_tool_choice(req.tool_choice, tools)
    if choice.mode == "none":
        tools = None  # the model is not told about tools, so it cannot call them
    if tools and "tools" not in caps:
        raise APIError(400, f"{record.name.display} does not support tools")
    think = check_think(_think_value(req), record, req.model)
    if choice.forced:
        assert tools is not None
        # The grammar makes the call the very first thing the model writes; a template that
        # opened a thinking block would have the call read as thinking, so thinking is off.
        think = False if think else think
        try:
            grammar = grammar_for_tool_call(tools, prompt_format(record).tool_call_tag(), only=choice.name)
        except FormatError as exc:
            raise APIError(400, str(exc)) from None
    else:
        grammar = _grammar(ollama_format(req.response_format))
    num_predict = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    options = _options(record, req.options, {
        "num_predict": num_predict, "seed": req.seed, "stop": stop_list(req.stop),
        "temperature": req.temperature, "top_p": req.top_p, "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
    })
    return _ChatPlan(record=record, messages=messages, tools=tools, think=think, options=options,
                     keep_alive=keep_alive, grammar=grammar, logprobs=bool(req.logprobs) or top_logprobs > 0,
                     top_logprobs=top_logprobs)


@blueprint.post("/v1/chat/completions")
async def chat_completions() -> Response:
    timer = Timer()
    req = await read_request(request, ChatCompletionRequest)
    plan = plan_chat(req)
    log.info("openai_chat", model=req.model, stream=req.stream, tools=len(plan.tools or ()),
             tool_choice=req.tool_choice if isinstance(req.tool_choice, str) else
             ("function" if req.tool_choice else None))
    events = _chat_events(plan, timer)
    if req.stream:
        return await _sse(_chat_chunks(events, model=req.model, include_usage=_include_usage(req.stream_options)))
    return json_response(await _chat_completion(events, model=req.model))


# ----------------------------------------------------------------------------- POST /v1/completions
def _legacy_logprobs(entries: list[dict[str, Any]], offset: int) -> tuple[dict[str, Any], int]:
    """Ollama-shaped token logprobs → the completions API's parallel arrays."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for entry in entries:
        tokens.append(entry["token"])
        token_logprobs.append(entry["logprob"])
        tops.append({alt["token"]: alt["logprob"] for alt in entry.get("top_logprobs") or ()})
        offsets.append(offset)
        offset += len(entry["token"])
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}, offset


@attrs.frozen
class _CompletionPlan:
    record: Any
    prompt: str
    suffix: str
    think: bool | str | None
    options: dict[str, Any]
    keep_alive: float | None
    top_logprobs: int
    logprobs: bool
    echo: bool


def plan_completion(req: CompletionRequest) -> _CompletionPlan:
    _check_n(req.n)
    if req.best_of is not None and req.best_of != 1:
        raise APIError(400, f"best_of={req.best_of} is not supported: only best_of=1")
    prompt = req.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # the openai client allows a list; one string means the same thing
    if not isinstance(prompt, str):
        raise APIError(400, f"invalid type for 'prompt' field: {_json_type(prompt)} (a single string is required)")
    top_logprobs = _top_logprobs(req.logprobs, "logprobs")
    record = resolve_model(req.model)
    keep_alive = parse_keep_alive_field(req.keep_alive)
    caps = record.capabilities or []
    if "completion" not in caps:
        raise APIError(400, f'"{req.model}" does not support generate')
    if req.suffix and "insert" not in caps:
        raise APIError(400, f"{record.name.display} does not support insert")
    options = _options(record, req.options, {
        "num_predict": req.max_tokens, "seed": req.seed, "stop": stop_list(req.stop),
        "temperature": req.temperature, "top_p": req.top_p or None, "frequency_penalty": req.frequency_penalty,
        "presence_penalty": req.presence_penalty,
    })
    return _CompletionPlan(record=record, prompt=prompt, suffix=req.suffix or "",
                           think=check_think(None, record, req.model), options=options, keep_alive=keep_alive,
                           top_logprobs=top_logprobs, logprobs=req.logprobs is not None, echo=req.echo)


async def _completion_events(plan: _CompletionPlan, timer: Timer) -> AsyncIterator[Piece | Done]:
    async with model_lease(plan.record, plan.options, plan.keep_alive, timer) as lease:
        text = build_generate_prompt(plan.record, plan.prompt, system=None, template=None, suffix=plan.suffix,
                                     raw=False, has_context=False, images=0, think=plan.think)
        job = job_from_options(plan.options, prompt=text, logprobs=plan.logprobs, top_logprobs=plan.top_logprobs,
                               num_ctx=lease.num_ctx_for(plan.options.get("num_ctx")))
        async with aclosing(run_job(lease, job)) as events:
            async for event in events:
                yield event


async def _completion_chunks(plan: _CompletionPlan, events: AsyncIterator[Piece | Done], *, model: str,
                             include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    ident, created = _new_id("cmpl"), int(time.time())
    offset = 0

    def chunk(text: str, finish: str | None = None, logprobs: dict | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": ident, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}],
        }
        if include_usage:
            body["usage"] = None
        return body

    echo = plan.echo
    async with aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, Piece):
                logprobs = None
                if event.logprobs:
                    logprobs, offset = _legacy_logprobs(event.logprobs, offset)
                text = (plan.prompt if echo else "") + event.text
                echo = False
                yield chunk(text, logprobs=logprobs)
            else:
                yield chunk(plan.prompt if echo else "", event.done_reason or "stop")
                if include_usage:
                    yield {"id": ident, "object": "text_completion", "created": created, "model": model,
                           "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [], "usage": _usage(event)}
                return


async def _completion(plan: _CompletionPlan, events: AsyncIterator[Piece | Done], *, model: str) -> dict[str, Any]:
    texts: list[str] = []
    entries: list[dict[str, Any]] = []
    done: Done | None = None
    async with aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, Piece):
                texts.append(event.text)
                entries.extend(event.logprobs or ())
            else:
                done = event
                break
    if done is None:
        raise APIError(500, "model runner ended the request without a result")
    logprobs = _legacy_logprobs(entries, 0)[0] if plan.logprobs else None
    return {
        "id": _new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"text": (plan.prompt if plan.echo else "") + "".join(texts), "index": 0,
                     "logprobs": logprobs, "finish_reason": done.done_reason or "stop"}],
        "usage": _usage(done),
    }


@blueprint.post("/v1/completions")
async def completions() -> Response:
    timer = Timer()
    req = await read_request(request, CompletionRequest)
    plan = plan_completion(req)
    log.info("openai_completion", model=req.model, stream=req.stream, suffix=bool(req.suffix))
    events = _completion_events(plan, timer)
    if req.stream:
        return await _sse(_completion_chunks(plan, events, model=req.model,
                                             include_usage=_include_usage(req.stream_options)))
    return json_response(await _completion(plan, events, model=req.model))


# ----------------------------------------------------------------------------- POST /v1/embeddings
def _normalise(vector: list[float]) -> list[float]:
    """Unit length, as ``/api/embed`` returns them (cosine similarity becomes a dot product)."""
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


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
        vector = _normalise(vector)
        if req.dimensions and req.dimensions < len(vector):
            vector = _normalise(vector[: req.dimensions])
        data.append({"object": "embedding", "index": index,
                     "embedding": float32_base64(vector) if encoding == "base64" else vector})
    return json_response({"object": "list", "data": data, "model": req.model,
                          "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


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
