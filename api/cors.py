"""CORS with Ollama's rules: its default origins plus ``OLLAMA_ORIGINS``, wildcards allowed."""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

__all__ = ["CorsPolicy"]

ALLOWED_HEADERS = ", ".join(
    ["Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With", "OpenAI-Beta"]
    + [
        f"x-stainless-{h}"
        for h in (
            "arch", "async", "custom-poll-interval", "helper-method", "lang", "os", "package-version",
            "poll-helper", "retry-count", "runtime", "runtime-version", "timeout",
        )
    ]
)
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
_EXTENSION_SCHEMES = ("chrome-extension://", "moz-extension://", "safari-extension://",
                      "safari-web-extension://")


class CorsPolicy:
    def __init__(self, origins: Iterable[str]) -> None:
        self._patterns = tuple(origins)
        self._allow_all = "*" in self._patterns

    def allows(self, origin: str) -> bool:
        if self._allow_all or origin.startswith(_EXTENSION_SCHEMES):
            return True
        return any(fnmatchcase(origin, pattern) for pattern in self._patterns)

    def headers_for(self, origin: str | None, preflight: bool) -> dict[str, str]:
        if not origin or not self.allows(origin):
            return {}
        headers = {"Access-Control-Allow-Origin": "*" if self._allow_all else origin, "Vary": "Origin"}
        if preflight:
            headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            headers["Access-Control-Max-Age"] = "43200"
        return headers
