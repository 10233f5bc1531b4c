"""HTTP errors in the shapes clients expect.

Native routes answer ``{"error": "..."}`` as Ollama does; routes under ``/v1`` answer OpenAI's
``{"error": {"message", "type", "param", "code"}}`` so that the ``openai`` SDK raises the right
exception class. Handlers raise :class:`APIError` and never build error bodies themselves.

Which shape a path gets is a table of path prefixes (:func:`register_error_shape`; the longest
matching prefix wins), so a protocol added later — Anthropic's ``/v1/messages`` with
``{"type":"error","error":{...}}`` — declares its shape in one line, and every error on its routes,
an unexpected exception included, comes out in it. The same line may map statuses for the wire
(Anthropic answers 529 where the others answer 503): the app's one error handler asks
:func:`error_status` as it asks :func:`error_body`.
"""

from __future__ import annotations

from typing import Callable, Mapping

import attrs

__all__ = ["APIError", "openai_error_type", "openai_error_body", "SERVER_BUSY", "ErrorShape",
           "register_error_shape", "error_body", "error_status", "native_error_body", "openai_error_shape",
           "has_protocol_shape"]

SERVER_BUSY = "server busy, please try again.  maximum pending requests exceeded"


@attrs.define(eq=False)
class APIError(Exception):
    status: int
    message: str
    headers: Mapping[str, str] = attrs.field(factory=dict)

    def __str__(self) -> str:
        return self.message


def openai_error_type(status: int) -> str:
    if status == 400:
        return "invalid_request_error"
    if status == 404:
        return "not_found_error"
    return "api_error"


def openai_error_body(exc: APIError) -> dict:
    """OpenAI's error object, so the ``openai`` SDK raises the exception class for the status."""
    return {"error": {"message": exc.message, "type": openai_error_type(exc.status), "param": None,
                      "code": None}}


#: Builds an error body from the status and the message.
ErrorShape = Callable[[int, str], dict]


def native_error_body(status: int, message: str) -> dict:
    """Ollama's own shape."""
    return {"error": message}


def openai_error_shape(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": openai_error_type(status), "param": None, "code": None}}


_SHAPES: dict[str, ErrorShape] = {"/v1/": openai_error_shape}
#: Per prefix, the statuses its clients expect instead of ours (only where they differ).
_STATUSES: dict[str, Mapping[int, int]] = {}


def register_error_shape(prefix: str, shape: ErrorShape, statuses: Mapping[int, int] | None = None) -> None:
    """Give every error under the path ``prefix`` the body ``shape(status, message)``, and the
    status ``statuses[status]`` where the map names it (the status itself otherwise).

    The longest registered prefix that matches a request's path wins; paths matching none get
    Ollama's ``{"error": message}``. Call at import time of the module that owns the routes.
    """
    _SHAPES[prefix] = shape
    _STATUSES[prefix] = dict(statuses or {})


def has_protocol_shape(path: str) -> bool:
    """Does ``path`` belong to a protocol with its own error shape (``/v1/…``), not Ollama's?"""
    return bool(_prefix(path))


def _prefix(path: str) -> str:
    """The longest registered prefix of ``path`` ("" for none)."""
    best = ""
    for prefix in _SHAPES:
        if path.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return best


def error_body(path: str, status: int, message: str) -> dict:
    """The error body for a request to ``path``, in the shape registered for it."""
    best = _prefix(path)
    return _SHAPES[best](status, message) if best else native_error_body(status, message)


def error_status(path: str, status: int) -> int:
    """The status an error with ``status`` answers a request to ``path`` with."""
    return _STATUSES.get(_prefix(path), {}).get(status, status)
