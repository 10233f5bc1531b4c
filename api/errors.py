"""HTTP errors in the two shapes clients expect.

Native routes answer ``{"error": "..."}`` as Ollama does; routes under ``/v1`` answer OpenAI's
``{"error": {"message", "type", "param", "code"}}`` so that the ``openai`` SDK raises the right
exception class. Handlers raise :class:`APIError` and never build error bodies themselves.
"""

from __future__ import annotations

from typing import Mapping

import attrs

__all__ = ["APIError", "openai_error_type", "openai_error_body", "SERVER_BUSY"]

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
