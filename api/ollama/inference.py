"""Native inference routes: ``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/embeddings``, ``/api/ps``.

Each handler validates the request, then hands an async generator of Ollama-shaped chunks to
:func:`~trillama.api.streaming.stream_or_collect`. The generator takes the model lease itself, so
every error that happens before the first chunk (unknown model, full queue, failed load) still
reaches the client as a real status code, and the lease is released however the stream ends.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import attrs
from quart import Blueprint, Response, request

from trillama.actors.runner.messages import Done, Piece
from trillama.actors.sampling import job_from_options
from trillama.actors.structured import FormatError, grammar_for_format
from trillama.api.completion import (
    Timer,
    coerce_request_options,
    embed_inputs,
    unit_length,
    with_model_parameters,
    model_lease,
    now_rfc3339,
    parse_keep_alive_field,
    resolve_model,
    run_job,
)
from trillama.api.context import services
from trillama.api.decode import MESSAGE_SHAPE, TOOL_SHAPE, check_shape, read_request
from trillama.api.errors import APIError
from trillama.api.prompting import (
    ChatPrompt,
    build_chat_prompt,
    build_generate_prompt,
    check_think,
    generate_thinking_splitter,
    decode_images,
    require_vision,
)
from trillama.api.streaming import json_response, stream_or_collect

__all__ = ["blueprint"]

blueprint = Blueprint("inference", __name__)


# ----------------------------------------------------------------------------- request bodies
@attrs.define
class _CompletionFields:
    """What ``/api/generate`` and ``/api/chat`` share (Ollama's two request types repeat them)."""

    model: str = ""
    stream: bool = True
    format: Any = None
    keep_alive: Any = None
    options: dict[str, Any] | None = None
    think: Any = None
    truncate: bool = True
    shift: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    _debug_render_only: bool = False


@attrs.define
class GenerateRequest(_CompletionFields):
    prompt: str = ""
    suffix: str = ""
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


@attrs.define
class ChatRequest(_CompletionFields):
    messages: list[dict[str, Any]] = attrs.field(factory=list)
    tools: list[dict[str, Any]] | None = None


@attrs.define
class EmbedRequest:
    model: str = ""
    input: Any = None
    truncate: bool = True
    dimensions: int = 0
    keep_alive: Any = None
    options: dict[str, Any] | None = None


@attrs.define
class EmbeddingsRequest:
    model: str = ""
    prompt: str = ""
    keep_alive: Any = None
    options: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- shared pieces
def _check_images(images: list[str] | None, record: Any) -> list[bytes]:
    """The request's images as bytes (decoded once, here), or Ollama's 400."""
    decoded = decode_images(images)
    require_vision(record, bool(decoded))
    return decoded


def _check_top_logprobs(n: int) -> None:
    if not 0 <= n <= 20:
        raise APIError(400, "top_logprobs must be between 0 and 20")


def _grammar(fmt: Any) -> str | None:
    try:
        return grammar_for_format(fmt)
    except FormatError as exc:
        raise APIError(400, str(exc)) from None


def _metrics(done: Done, timer: Timer) -> dict[str, Any]:
    fields = {
        "total_duration": timer.total_duration,
        "load_duration": timer.load_duration,
        "prompt_eval_count": done.prompt_eval_count,
        "prompt_eval_duration": done.prompt_eval_duration_ns,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration_ns,
    }
    return {k: v for k, v in fields.items() if v}  # Ollama omits zero metrics


def _debug_chunk(model: str, prompt: str, images: int, empty: dict[str, Any]) -> dict[str, Any]:
    """Ollama's ``_debug_render_only``: the exact prompt text the model would have seen."""
    return {"model": model, "created_at": now_rfc3339(), **empty, "done": False,
            "_debug_info": {"rendered_template": prompt, "image_count": images}}


# ----------------------------------------------------------------------------- /api/generate
@blueprint.post("/api/generate")
async def generate() -> Response:
    timer = Timer()
    req = await read_request(request, GenerateRequest)
    _check_top_logprobs(req.top_logprobs)
    record = resolve_model(req.model)
    keep_alive = parse_keep_alive_field(req.keep_alive)
    options = coerce_request_options(req.options)
    scheduler = services().scheduler
    assert scheduler is not None

    if not req.prompt and not req.images and keep_alive == 0:
        await scheduler.unload(record)
        return json_response({"model": req.model, "created_at": now_rfc3339(), "response": "",
                              "done": True, "done_reason": "unload"})
    if req.raw and (req.template or req.system or req.context):
        raise APIError(400, "raw mode does not support template, system, or context")
    caps = record.capabilities or []
    if "completion" not in caps:
        raise APIError(400, f'"{req.model}" does not support generate')
    if req.suffix and "insert" not in caps:
        raise APIError(400, f"{record.name.display} does not support insert")
    think = check_think(req.think, record, req.model)
    images = _check_images(req.images, record)
    grammar = _grammar(req.format)

    async def chunks() -> AsyncIterator[dict]:
        merged = with_model_parameters(record, options)
        async with model_lease(record, merged, keep_alive, timer) as lease:
            if not req.prompt and not images:
                yield {"model": req.model, "created_at": now_rfc3339(), "response": "", "done": True,
                       "done_reason": "load"}
                return
            prompt = build_generate_prompt(record, req.prompt, system=req.system, template=req.template,
                                           suffix=req.suffix, raw=req.raw, has_context=bool(req.context),
                                           images=len(images), think=think)
            if req._debug_render_only:
                yield _debug_chunk(req.model, prompt, len(images), {"response": ""})
                return
            job = job_from_options(merged, prompt=prompt, prompt_tokens=req.context or None,
                                   grammar=grammar, logprobs=req.logprobs or req.top_logprobs > 0,
                                   top_logprobs=req.top_logprobs, num_ctx=lease.num_ctx_for(merged.get("num_ctx")),
                                   shift=req.shift, images=tuple(images))
            splitter = generate_thinking_splitter(record, prompt, raw=req.raw, template=req.template,
                                                  think=think)

            def piece(text: str, thinking: str = "") -> dict:
                chunk = {"model": req.model, "created_at": now_rfc3339(), "response": text, "done": False}
                if thinking:
                    chunk["thinking"] = thinking
                return chunk

            async for event in run_job(lease, job):
                if isinstance(event, Piece):
                    if splitter is None:
                        chunk = piece(event.text)
                    else:
                        split = splitter.feed(event.text)
                        chunk = piece(split.content, split.thinking)
                    if event.logprobs:
                        chunk["logprobs"] = event.logprobs
                    if chunk["response"] or chunk.get("thinking") or event.logprobs or splitter is None:
                        yield chunk
                else:
                    if splitter is not None:
                        split = splitter.flush()
                        if split.content or split.thinking:
                            yield piece(split.content, split.thinking)
                    final = {"model": req.model, "created_at": now_rfc3339(), "response": "", "done": True,
                             "done_reason": event.done_reason}
                    if not req.raw:
                        final["context"] = event.context
                    final.update(_metrics(event, timer))
                    yield final

    def collect(items: list[dict]) -> dict:
        final = dict(items[-1])
        final["response"] = "".join(c.get("response", "") for c in items)
        thinking = "".join(c.get("thinking", "") for c in items)
        if thinking:
            final["thinking"] = thinking
        logprobs = [lp for c in items for lp in c.get("logprobs", [])]
        if logprobs:
            final["logprobs"] = logprobs
        return final

    return await stream_or_collect(chunks(), req.stream, collect)


# ----------------------------------------------------------------------------- /api/chat
@blueprint.post("/api/chat")
async def chat() -> Response:
    timer = Timer()
    req = await read_request(request, ChatRequest)
    _check_top_logprobs(req.top_logprobs)
    record = resolve_model(req.model, empty_status=400, empty_message="model is required")
    keep_alive = parse_keep_alive_field(req.keep_alive)
    options = coerce_request_options(req.options)
    scheduler = services().scheduler
    assert scheduler is not None

    if not req.messages and keep_alive == 0:
        await scheduler.unload(record)
        return json_response({"model": req.model, "created_at": now_rfc3339(),
                              "message": {"role": "assistant", "content": ""}, "done": True,
                              "done_reason": "unload"})
    caps = record.capabilities or []
    if "completion" not in caps:
        raise APIError(400, f'"{req.model}" does not support chat')
    if req.tools and "tools" not in caps:
        raise APIError(400, f"{record.name.display} does not support tools")
    think = check_think(req.think, record, req.model)
    for tool in req.tools or ():
        check_shape(tool, TOOL_SHAPE, "ChatRequest.tools")
    for message in req.messages:
        if not isinstance(message, dict):
            raise APIError(400, "json: cannot unmarshal into Go struct field ChatRequest.messages of type api.Message")
        check_shape(message, MESSAGE_SHAPE, "ChatRequest.messages")
        if message.get("images"):
            message["images"] = _check_images(message["images"], record)
    grammar = _grammar(req.format)

    async def chunks() -> AsyncIterator[dict]:
        merged = with_model_parameters(record, options)
        async with model_lease(record, merged, keep_alive, timer) as lease:
            if not req.messages:
                yield {"model": req.model, "created_at": now_rfc3339(),
                       "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "load"}
                return
            num_ctx = lease.num_ctx_for(merged.get("num_ctx"))
            prompt: ChatPrompt = await build_chat_prompt(
                record, req.messages, tools=req.tools, think=think, truncate=req.truncate,
                num_ctx=num_ctx, count_tokens=lease.tokenize,
            )
            if req._debug_render_only:
                yield _debug_chunk(req.model, prompt.text, len(prompt.images),
                                   {"message": {"role": "assistant", "content": ""}})
                return
            job = job_from_options(merged, prompt=prompt.text, grammar=grammar,
                                   logprobs=req.logprobs or req.top_logprobs > 0,
                                   top_logprobs=req.top_logprobs, num_ctx=num_ctx, shift=req.shift,
                                   images=prompt.images)
            parser = prompt.output_parser()
            async for event in run_job(lease, job):
                if isinstance(event, Piece):
                    for message in parser.feed(event.text):
                        chunk = {"model": req.model, "created_at": now_rfc3339(), "message": message,
                                 "done": False}
                        if event.logprobs:
                            chunk["logprobs"] = event.logprobs
                        yield chunk
                else:
                    for message in parser.flush():
                        yield {"model": req.model, "created_at": now_rfc3339(), "message": message,
                               "done": False}
                    final = {"model": req.model, "created_at": now_rfc3339(),
                             "message": {"role": "assistant", "content": ""}, "done": True,
                             "done_reason": event.done_reason}
                    final.update(_metrics(event, timer))
                    yield final

    def collect(items: list[dict]) -> dict:
        final = dict(items[-1])
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        thinking = ""
        tool_calls: list = []
        logprobs: list = []
        for c in items:
            m = c.get("message", {})
            message["content"] += m.get("content", "")
            thinking += m.get("thinking", "") or ""
            tool_calls.extend(m.get("tool_calls", []) or [])
            logprobs.extend(c.get("logprobs", []))
        if thinking:
            message["thinking"] = thinking
        if tool_calls:
            message["tool_calls"] = tool_calls
        final["message"] = message
        if logprobs:
            final["logprobs"] = logprobs
        return final

    return await stream_or_collect(chunks(), req.stream, collect)


# ----------------------------------------------------------------------------- embeddings
@blueprint.post("/api/embed")
async def embed() -> Response:
    timer = Timer()
    req = await read_request(request, EmbedRequest)
    record = resolve_model(req.model)
    keep_alive = parse_keep_alive_field(req.keep_alive)
    options = coerce_request_options(req.options)
    if req.input is None or req.input == "":
        inputs: list[str] = []
    elif isinstance(req.input, str):
        inputs = [req.input]
    elif isinstance(req.input, list) and all(isinstance(x, str) for x in req.input):
        inputs = list(req.input)
    else:
        raise APIError(400, "invalid input type")
    if req.dimensions < 0:
        raise APIError(400, "dimensions must be a positive number")
    vectors, tokens = await embed_inputs(record, inputs, truncate=req.truncate, options=options,
                                         keep_alive=keep_alive, timer=timer)
    out = []
    for vector in vectors:
        vector = unit_length(vector)
        if 0 < req.dimensions < len(vector):
            vector = unit_length(vector[: req.dimensions])
        out.append(vector)
    body: dict[str, Any] = {"model": req.model, "embeddings": out}
    if out:
        body.update(total_duration=timer.total_duration, load_duration=timer.load_duration,
                    prompt_eval_count=tokens)
    return json_response(body)


@blueprint.post("/api/embeddings")
async def embeddings() -> Response:
    timer = Timer()
    req = await read_request(request, EmbeddingsRequest)
    record = resolve_model(req.model, empty_status=400, empty_message="model is required")
    keep_alive = parse_keep_alive_field(req.keep_alive)
    options = coerce_request_options(req.options)
    inputs = [req.prompt] if req.prompt else []
    vectors, _ = await embed_inputs(record, inputs, truncate=True, options=options, keep_alive=keep_alive,
                                    timer=timer)
    return json_response({"embedding": vectors[0] if vectors else []})


# ----------------------------------------------------------------------------- /api/ps
def _rfc3339_local(ts: float | None) -> str:
    from datetime import datetime

    # Forever (None) or any expiry past the last date RFC 3339 can write shows as 9999-12-30, a day
    # short of the end so that no local time-zone offset can push it out of range: /api/ps must
    # always answer, whatever keep_alive a request set.
    last = 253402214400.0  # 9999-12-30T00:00:00Z
    ts = last if ts is None or not ts < last else max(ts, 0.0)
    return datetime.fromtimestamp(ts).astimezone().isoformat()


@blueprint.route("/api/ps", methods=["GET"])
async def ps() -> Response:
    scheduler = services().scheduler
    assert scheduler is not None
    models = [
        {
            "name": row.name,
            "model": row.name,
            "size": row.size,
            "digest": row.digest,
            "details": {**row.details, "parent_model": ""},
            "expires_at": _rfc3339_local(row.expires_at),
            "size_vram": row.size_vram,
            "context_length": row.context_length,
        }
        for row in scheduler.loaded()
    ]
    return json_response({"models": models})


@blueprint.route("/api/runners", methods=["GET"])
async def runners() -> Response:
    """trillama's view under the hood: each loaded model's runner process and its slots."""
    scheduler = services().scheduler
    assert scheduler is not None
    return json_response({"runners": await scheduler.runner_states(), "cpu": attrs.asdict(scheduler.cpu_state())})
