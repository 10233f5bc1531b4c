"""HTTP errors in the shapes clients expect.

Native routes answer ``{"error": "..."}`` as Ollama does; routes under ``/v1`` answer OpenAI's
``{"error": {"message", "type", "param", "code"}}`` so that the ``openai`` SDK raises the right
exception class. Handlers raise :class:`APIError` and never build error bodies themselves.

Which shape a path gets is a table of path prefixes (:func:`register_error_shape`; the longest
matching prefix wins), so a protocol added later — Anthropic's ``/v1/messages`` with
``{"type":"error","error":{...}}`` — declares its shape in one line, and every error on its routes,
an unexpected exception included, comes out in it.
"""

from __future__ import annotations

from typing import Callable, Mapping

import attrs

__all__ = ["APIError", "openai_error_type", "openai_error_body", "SERVER_BUSY", "ErrorShape",
           "register_error_shape", "error_body", "native_error_body", "openai_error_shape", "has_protocol_shape"]

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


def register_error_shape(prefix: str, shape: ErrorShape) -> None:
    """Give every error under the path ``prefix`` the body ``shape(status, message)``.

    The longest registered prefix that matches a request's path wins; paths matching none get
    Ollama's ``{"error": message}``. Call at import time of the module that owns the routes.
    """
    _SHAPES[prefix] = shape


def has_protocol_shape(path: str) -> bool:
    """Does ``path`` belong to a protocol with its own error shape (``/v1/…``), not Ollama's?"""
    return any(path.startswith(prefix) for prefix in _SHAPES)


def error_body(path: str, status: int, message: str) -> dict:
    """The error body for a request to ``path``, in the shape registered for it."""
    best = ""
    for prefix in _SHAPES:
        if path.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return _SHAPES[best](status, message) if best else native_error_body(status, message)
