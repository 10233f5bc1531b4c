"""What every ``/v1`` route shares: the blueprint, common request fields and small helpers.

Routes live in one module per OpenAI endpoint family (chat, completions, embeddings, models,
responses) but register on the one :data:`blueprint` defined here, so the app wires ``/v1`` up with
a single ``register_blueprint`` and every route shares the same error rendering.
"""

from __future__ import annotations

import secrets
from typing import Any, AsyncIterator, Mapping

import attrs
from quart import Blueprint, Response, request

from trillama.actors.runner.messages import Done
from trillama.actors.structured import FormatError, grammar_for_format
from trillama.api.completion import coerce_request_options
from trillama.api.decode import TypeVocabulary, json_type_name
from trillama.api.context_limit import ContextExceeded, how_to_raise
from trillama.api.errors import APIError, openai_error_body
from trillama.api.streaming import json_response, sse_response
from trillama.logs import get_logger

__all__ = [
    "blueprint",
    "SYSTEM_FINGERPRINT",
    "MAX_TOP_LOGPROBS",
    "GenerationFields",
    "new_id",
    "check_n",
    "stop_list",
    "json_type",
    "include_usage",
    "merged_options",
    "format_grammar",
    "chat_usage",
    "finish_reason",
    "top_logprobs_count",
    "sse",
    "OpenAIError",
    "error_body",
    "context_error",
]

blueprint = Blueprint("openai", __name__)
log = get_logger("trillama.api.openai")


@attrs.define(eq=False)
class OpenAIError(APIError):
    """An :class:`APIError` that also fills OpenAI's ``param`` and ``code``.

    Clients branch on them (``code: "previous_response_not_found"`` is how agents notice a lost
    conversation), so the Responses route names the offending field instead of leaving both null.
    """

    param: str | None = None
    code: str | None = None


def error_body(exc: APIError) -> dict[str, Any]:
    """OpenAI's error object for ``exc``, with ``param`` and ``code`` when it carries them."""
    body = openai_error_body(exc)
    if isinstance(exc, OpenAIError):
        body["error"]["param"] = exc.param
        body["error"]["code"] = exc.code
    return body


@blueprint.errorhandler(OpenAIError)
async def _openai_error(exc: OpenAIError) -> Response:
    # Only this subclass: every other APIError keeps the app-wide rendering.
    return json_response(error_body(exc), status=exc.status, headers=dict(exc.headers))

def context_error(exc: ContextExceeded, path: str) -> OpenAIError:
    """A prompt over the context in OpenAI's words and ``code: "context_length_exceeded"``, which
    agents (Codex, opencode through the AI SDK) match on; both numbers, and how to raise the limit."""
    if path.startswith("/v1/responses"):
        message, param = (f"Your input exceeds the context window of this model: {exc.tokens} tokens, the "
                          f"context window is {exc.limit}."), "input"
    else:
        kind, param = ("prompt", "prompt") if path.startswith("/v1/completions") else ("messages", "messages")
        message = (f"This model's maximum context length is {exc.limit} tokens. However, your {kind} "
                   f"resulted in {exc.tokens} tokens. Please reduce the length of the {kind}.")
    message += f" Shorten it or {how_to_raise(exc.limit, exc.trained)}."
    return OpenAIError(400, message, param=param, code="context_length_exceeded")


@blueprint.errorhandler(ContextExceeded)
async def _context_exceeded(exc: ContextExceeded) -> Response:
    return json_response(error_body(context_error(exc, request.path)), status=400)


SYSTEM_FINGERPRINT = "fp_ollama"
MAX_TOP_LOGPROBS = 20


# ----------------------------------------------------------------------------- request bodies
# Loose types (``Any``) where OpenAI allows several JSON shapes; those fields are checked by hand
# below so the 400 says what is wrong rather than where cattrs gave up.
@attrs.define
class GenerationFields:
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


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def check_n(n: int | None) -> None:
    """``n`` other than 1: one choice is answered, as Ollama does (its OpenAI layer ignores ``n``),
    so clients that send it work unchanged; the log says so."""
    if n is not None and n != 1:
        log.info("openai_n_ignored", n=n, reason="one choice per request, as Ollama answers")


def stop_list(stop: Any) -> list[str] | None:
    """``stop`` as a list; a non-string entry is a 400 (Ollama's chat layer drops it silently)."""
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list):
        for item in stop:
            if not isinstance(item, str):
                raise APIError(400, f"invalid type for 'stop' field: {json_type(item)}")
        return list(stop)
    raise APIError(400, f"invalid type for 'stop' field: {json_type(stop)}")


def json_type(value: Any) -> str:
    """A JSON value's type as Ollama's OpenAI layer names it (Go's ``%T``): ``float64``, ``[]interface {}``."""
    return json_type_name(value, TypeVocabulary.GO_TYPE)


def include_usage(stream_options: Mapping[str, Any] | None) -> bool:
    return bool(stream_options and stream_options.get("include_usage") is True)


def merged_options(record: Any, options: dict[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The options a /v1 request runs with: Modelfile parameters, then OpenAI's defaults
    (temperature and top_p 1.0, as OpenAI and Ollama's layer impose), then the request's Ollama
    ``options``, then the OpenAI fields the request actually set."""
    merged: dict[str, Any] = {**(record.parameters or {}), "temperature": 1.0, "top_p": 1.0}
    merged.update(coerce_request_options(options))
    merged.update({k: v for k, v in fields.items() if v is not None})
    return merged


def format_grammar(fmt: Any) -> str | None:
    try:
        return grammar_for_format(fmt)
    except FormatError as exc:
        raise APIError(400, str(exc)) from None


def chat_usage(done: Done) -> dict[str, Any]:
    # The full prompt length: tokens evaluated now plus tokens reused from the slot's cache.
    prompt = done.prompt_eval_count + done.cached_count
    return {"prompt_tokens": prompt, "completion_tokens": done.eval_count,
            "total_tokens": prompt + done.eval_count,
            "prompt_tokens_details": {"cached_tokens": done.cached_count}}


def finish_reason(done_reason: str, tool_calls: bool) -> str:
    reason = done_reason or "stop"
    return "tool_calls" if tool_calls and reason == "stop" else reason


def top_logprobs_count(value: int | None, field: str = "top_logprobs") -> int:
    n = value or 0
    if not 0 <= n <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"{field} must be between 0 and {MAX_TOP_LOGPROBS}")
    return n


async def sse(chunks: AsyncIterator[dict]) -> Response:
    response = await sse_response(chunks, openai_error=openai_error_body)
    response.headers["Cache-Control"] = "no-cache"
    return response
