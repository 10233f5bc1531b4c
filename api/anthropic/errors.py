"""Errors in Anthropic's shape: ``{"type": "error", "error": {"type": ..., "message": ...}}``.

The ``anthropic`` SDK picks its exception class from the HTTP status (``BadRequestError`` for 400,
``NotFoundError`` for 404, ``OverloadedError`` for 529, ...) and reads ``error.type`` and
``error.message`` from the body, so both must be right.

Queue full and "model is unloading" are 503 on the native routes. Here they are **529
``overloaded_error``**: that is what Anthropic's own API answers when it has no capacity, the SDK
maps 529 to ``OverloadedError`` (503 would be ``ServiceUnavailableError``, which Anthropic never
sends), and clients built for Anthropic (Claude Code among them) treat 529 as "busy, back off and
retry" rather than as a broken server. ``Retry-After`` is kept; the SDK honours it when it retries.

A prompt longer than the context is Anthropic's ``prompt is too long: N tokens > M maximum`` (400
``invalid_request_error``): clients parse both numbers and compact the conversation.
"""

from __future__ import annotations

from typing import Any

from trillama.api.context_limit import ContextExceeded
from trillama.api.errors import APIError

__all__ = ["OVERLOADED", "STATUSES", "error_type", "error_body", "wire_status", "to_api_error"]

OVERLOADED = 529
#: Our statuses that Anthropic's clients expect as others (the app's error handler applies it).
STATUSES = {503: OVERLOADED}

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    OVERLOADED: "overloaded_error",
}


def wire_status(status: int) -> int:
    """The status Anthropic's clients expect for one of ours (only 503 changes, to 529)."""
    return STATUSES.get(status, status)


def error_type(status: int) -> str:
    status = wire_status(status)
    if status in _TYPES:
        return _TYPES[status]
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def to_api_error(exc: BaseException) -> APIError:
    """Any exception a route let escape, as an :class:`APIError` (unexpected ones are 500s)."""
    from werkzeug.exceptions import HTTPException

    if isinstance(exc, ContextExceeded):
        # Anthropic's own words: Claude Code reads both numbers and compacts the conversation.
        return APIError(400, f"prompt is too long: {exc.tokens} tokens > {exc.limit} maximum")
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        return APIError(code, exc.description or exc.name or "request failed")
    return APIError(500, f"internal error: {type(exc).__name__}")

