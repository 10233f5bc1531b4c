"""``POST /v1/completions``: the legacy text-completion API over the generate prompt path."""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any, AsyncIterator

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
    include_usage,
    json_type,
    merged_options,
    new_id,
    sse,
    stop_list,
    top_logprobs_count,
)
from trillama.api.prompting import build_generate_prompt, check_think
from trillama.api.streaming import json_response
from trillama.logs import get_logger

__all__ = ["CompletionRequest", "plan_completion"]

log = get_logger("trillama.api.openai")


@attrs.define
class CompletionRequest(GenerationFields):
    prompt: Any = None
    suffix: str | None = None
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None


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
    check_n(req.n)
    if req.best_of is not None and req.best_of != 1:
        raise APIError(400, f"best_of={req.best_of} is not supported: only best_of=1")
    prompt = req.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # the openai client allows a list; one string means the same thing
    if not isinstance(prompt, str):
        raise APIError(400, f"invalid type for 'prompt' field: {json_type(prompt)} (a single string is required)")
    top_logprobs = top_logprobs_count(req.logprobs, "logprobs")
    record = resolve_model(req.model)
    keep_alive = parse_keep_alive_field(req.keep_alive)
    caps = record.capabilities or []
    if "completion" not in caps:
        raise APIError(400, f'"{req.model}" does not support generate')
    if req.suffix and "insert" not in caps:
        raise APIError(400, f"{record.name.display} does not support insert")
    check_token_limit("max_tokens", req.max_tokens)
    options = merged_options(record, req.options, {
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
    ident, created = new_id("cmpl"), int(time.time())
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
                           "system_fingerprint": SYSTEM_FINGERPRINT, "choices": [], "usage": chat_usage(event)}
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
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"text": (plan.prompt if plan.echo else "") + "".join(texts), "index": 0,
                     "logprobs": logprobs, "finish_reason": done.done_reason or "stop"}],
        "usage": chat_usage(done),
    }


@blueprint.post("/v1/completions")
async def completions() -> Response:
    timer = Timer()
    req = await read_request(request, CompletionRequest)
    plan = plan_completion(req)
    log.info("openai_completion", model=req.model, stream=req.stream, suffix=bool(req.suffix))
    events = _completion_events(plan, timer)
    if req.stream:
        return await sse(_completion_chunks(plan, events, model=req.model,
                                             include_usage=include_usage(req.stream_options)))
    return json_response(await _completion(plan, events, model=req.model))
