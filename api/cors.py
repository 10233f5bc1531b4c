"""CORS with Ollama's rules: its default origins plus ``OLLAMA_ORIGINS``, wildcards allowed.

A browser asks before a "non-simple" cross-site request (the preflight), but sends a "simple" one
— a ``POST`` with ``Content-Type: text/plain``, say — straight away and only hides the answer from
the page. Refusing the preflight alone therefore protects nothing: any web page the user opens
could copy, delete, pull or push models (a push to a registry of the page's choosing exfiltrates
them) and use them. So, as Ollama's CORS layer (gin-contrib/cors) does, every request whose
``Origin`` is not allowed is refused with 403 before any handler runs, on every route and method.
Requests without an ``Origin`` (curl, the SDKs, anything that is not a browser page) and a page's
requests to the server that served it are not cross-site and pass.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from quart import Response

from trillama.api import access
from trillama.api.errors import error_body
from trillama.api.streaming import json_response

__all__ = ["CorsPolicy", "refuse_cross_site"]

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
    """Which origins may use the server, matched as gin-contrib/cors matches them.

    A pattern is an exact origin, ``*`` (everything), or has one ``*`` standing for any text
    (``http://localhost:*``, ``app://*``, ``*.example.com``): the origin must start with what is
    before it and end with what is after it. Nothing else is special (a ``[`` in an IPv6 origin is
    just a character).
    """

    def __init__(self, origins: Iterable[str]) -> None:
        self._patterns = tuple(origins)
        self._allow_all = "*" in self._patterns
        self._exact = frozenset(p for p in self._patterns if "*" not in p)
        self._wildcards = tuple((p[: p.index("*")], p[p.rindex("*") + 1:]) for p in self._patterns
                                if "*" in p and p != "*")

    def allows(self, origin: str) -> bool:
        if self._allow_all or origin in self._exact or origin.startswith(_EXTENSION_SCHEMES):
            return True
        return any(len(origin) >= len(head) + len(tail) and origin.startswith(head) and origin.endswith(tail)
                   for head, tail in self._wildcards)

    def refuses(self, origin: str | None, host: str | None) -> bool:
        """Is this a cross-site request from an origin that is not allowed?

        No ``Origin``: not a browser page's request. ``Origin`` equal to the scheme and ``Host``
        the request was sent to: the page came from this server (gin-contrib/cors's rule too).
        """
        if not origin:
            return False
        if host and origin in (f"http://{host}", f"https://{host}"):
            return False
        return not self.allows(origin)

    def headers_for(self, origin: str | None, preflight: bool) -> dict[str, str]:
        if not origin or not self.allows(origin):
            return {}
        headers = {"Access-Control-Allow-Origin": "*" if self._allow_all else origin, "Vary": "Origin"}
        if preflight:
            headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
            headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            headers["Access-Control-Max-Age"] = "43200"
        return headers


def refuse_cross_site(policy: CorsPolicy, path: str, headers: Mapping[str, str]) -> Response | None:
    """The 403 for a request from a disallowed origin (in the route's error shape), or ``None``.

    Called before any handler: nothing a refused request asks for happens.
    """
    origin = headers.get("Origin")
    if not policy.refuses(origin, headers.get("Host")):
        return None
    message = (f"origin {origin} is not allowed to use this server; add it to OLLAMA_ORIGINS "
               "(comma-separated, * wildcards) to allow it")
    access.note(error=message)
    return json_response(error_body(path, 403, message), status=403)
