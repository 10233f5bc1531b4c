"""One access-log event per request, written when its response has been sent in full.

An operator's log pipeline wants one line per request that says who asked what and what it cost:
the route, the status, the client, the model, tokens in and out, time to first token, total time,
why generation stopped and whether the request waited for a slot. Those facts are known in
different places (the route handler, the lease, the runner's final event) and, for a streamed
response, only after the handler has returned; so each request carries an :class:`AccessRecord`
in a context variable that those places fill in, and the app writes it once the body has ended.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

import attrs

from trillama.logs import get_logger

__all__ = ["AccessRecord", "begin", "current", "note", "log_unanswered", "SCOPE_KEY"]

log = get_logger("trillama.access")


@attrs.define
class AccessRecord:
    request_id: str
    method: str
    path: str
    client: str | None
    user_agent: str | None
    #: the API key's id (never the key) once authenticated (api/auth.py)
    key_id: str | None = None
    started: float = attrs.field(factory=time.perf_counter)
    route: str = "unmatched"
    status: int | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    first_token_s: float | None = None
    done_reason: str | None = None
    queued: bool | None = None
    queue_s: float | None = None
    load_s: float | None = None
    error: str | None = None
    written: bool = False

    def mark_first_token(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started

    def write(self) -> None:
        """Log the event once; later calls (a stream closing after an error) do nothing."""
        if self.written:
            return
        self.written = True
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "status": self.status,
            "client": self.client,
            "user_agent": self.user_agent,
            "total_ms": round((time.perf_counter() - self.started) * 1000, 1),
        }
        optional = {
            "key_id": self.key_id,
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "first_token_ms": None if self.first_token_s is None else round(self.first_token_s * 1000, 1),
            "done_reason": self.done_reason,
            "queued": self.queued,
            "queue_ms": None if self.queue_s is None else round(self.queue_s * 1000, 1),
            "load_ms": None if self.load_s is None else round(self.load_s * 1000, 1),
            "error": self.error,
        }
        fields.update({k: v for k, v in optional.items() if v is not None})
        log.info("access", **fields)


_current: contextvars.ContextVar[AccessRecord | None] = contextvars.ContextVar("trillama_access", default=None)

#: Where a request's record also lives: its ASGI scope, which outlives the handler's task.
SCOPE_KEY = "trillama.access"


def log_unanswered(inner: Any) -> Any:
    """Wrap an ASGI app so that every request that got a record logs it, answered or not.

    A response logs its line once its body has been sent (or abandoned). A client that leaves
    before the answer exists — a non-streaming generation it stopped waiting for — cancels the
    handler, so no response, and no line, was ever made: here, after the app is done with the
    request, such a record is written with status 499 (nginx's "client closed request").
    """

    async def asgi(scope: dict, receive: Any, send: Any) -> None:
        try:
            await inner(scope, receive, send)
        finally:
            record = scope.get(SCOPE_KEY)
            if record is not None and not record.written:
                if record.status is None:
                    record.status = 499
                record.error = record.error or "client disconnected"
                record.write()

    return asgi


def begin(record: AccessRecord) -> AccessRecord:
    _current.set(record)
    return record


def current() -> AccessRecord | None:
    return _current.get()


def note(**fields: Any) -> None:
    """Set fields of the current request's record (no-op outside a request)."""
    record = _current.get()
    if record is not None:
        for key, value in fields.items():
            setattr(record, key, value)
