"""Server-sent events for ``/v1/messages``: ``event:`` lines, ``ping`` on long waits, errors.

Each event is ``event: <name>\\ndata: <json>\\n\\n``. Anthropic's clients expect ``ping`` events
while nothing else happens (a model loading, a long prompt being read): without them a proxy or
a client's read timeout may drop a connection that is merely slow.

Pings need the response to have started, and its status is final once it has. So the events are
produced by a task in the application's nursery (:class:`Pump`), the route waits up to
:data:`PRIME_SECONDS` for the first one, and then decides: an error by then is a real HTTP error
(404, 400, 529, ...); otherwise the 200 stream starts, pings fill every :data:`PING_SECONDS`
without an event, and a later error is one ``event: error`` carrying Anthropic's error object
(the SDK raises it as an ``APIStatusError``). When the client goes away, the response body is
closed and the producing task is cancelled, which releases its model lease.
"""

from __future__ import annotations

import json
import weakref
from contextlib import aclosing, suppress
from typing import Any, AsyncIterator

import attrs
import trio
from quart import Response

from trillama.api.anthropic.errors import error_body, to_api_error
from trillama.api.errors import APIError
from trillama.logs import get_logger

__all__ = ["PRIME_SECONDS", "PING_SECONDS", "Pump", "frame", "PING", "sse_body", "sse_response"]

log = get_logger("trillama.api.anthropic")

PRIME_SECONDS = 2.0
PING_SECONDS = 5.0


def frame(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


PING = frame("ping", {"type": "ping"})


def error_frame(exc: APIError) -> bytes:
    return frame("error", error_body(exc.status, exc.message))


@attrs.define(eq=False)
class Pump:
    """An event source running in its own task; items come out of :meth:`next` with a timeout.

    ``next`` answers ``("item", value)``, ``("error", APIError)`` or ``("end", None)``, and
    ``None`` when nothing came within the timeout. Without a nursery (an app served without
    lifespan) the source runs inline and ``next`` cannot time out.
    """

    _receive: Any
    _scope: trio.CancelScope | None = None
    _inline: AsyncIterator[Any] | None = None

    @classmethod
    async def start(cls, nursery: trio.Nursery | None, source: AsyncIterator[Any]) -> "Pump":
        if nursery is None:
            return cls(receive=None, inline=source)
        send, receive = trio.open_memory_channel[tuple[str, Any]](0)
        scope = await nursery.start(_produce, source, send)
        return cls(receive=receive, scope=scope)

    async def next(self, timeout: float) -> tuple[str, Any] | None:
        if self._inline is not None:
            try:
                return "item", await self._inline.__anext__()
            except StopAsyncIteration:
                return "end", None
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error event or status
                return "error", _as_api_error(exc)
        with trio.move_on_after(timeout):
            try:
                return await self._receive.receive()
            except trio.EndOfChannel:
                return "end", None
        return None

    async def aclose(self) -> None:
        if self._inline is not None:
            await self._inline.aclose()  # type: ignore[attr-defined]
        self.cancel()

    def cancel(self) -> None:
        """Stop the producing task (it releases its lease on the way out). Safe to call twice."""
        if self._scope is not None:
            self._scope.cancel()
        if self._receive is not None:
            self._receive.close()


def _as_api_error(exc: BaseException) -> APIError:
    if not isinstance(exc, APIError):
        log.error("anthropic_stream_failed", error=repr(exc), exc_info=exc)
    return to_api_error(exc)


async def _produce(source: AsyncIterator[Any], send: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as scope:
        task_status.started(scope)
        async with send:
            try:
                async with aclosing(source):  # type: ignore[type-var]
                    async for item in source:
                        await send.send(("item", item))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client left
            except Exception as exc:  # noqa: BLE001 - handed to the response, never lost
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await send.send(("error", _as_api_error(exc)))


async def sse_body(pump: Pump, first: tuple[str, Any] | None, *, ping_seconds: float = PING_SECONDS
                   ) -> AsyncIterator[bytes]:
    """The response body: events as they come, a ping for every quiet ``ping_seconds``."""
    pending = first
    try:
        while True:
            if pending is None:
                pending = await pump.next(ping_seconds)
                if pending is None:
                    yield PING
                    continue
            kind, value = pending
            pending = None
            if kind == "end":
                return
            if kind == "error":
                log.info("stream_error", status=value.status, error=value.message)
                yield error_frame(value)
                return
            name, data = value
            yield frame(name, data)
    finally:
        await pump.aclose()


async def sse_response(source: AsyncIterator[tuple[str, dict[str, Any]]], *, nursery: trio.Nursery | None,
                       prime_seconds: float = PRIME_SECONDS, ping_seconds: float = PING_SECONDS) -> Response:
    """Start ``source`` and answer with its event stream (see the module docstring for errors)."""
    pump = await Pump.start(nursery, source)
    try:
        first = await pump.next(prime_seconds)
    except BaseException:
        await pump.aclose()
        raise
    if first is not None and first[0] == "error":
        await pump.aclose()
        raise first[1]
    body = sse_body(pump, first, ping_seconds=ping_seconds)
    # If the body is never iterated (the client left before it started), no ``finally`` runs:
    # cancel the producer when the body is collected. From the Trio thread, whatever thread GCs.
    token = trio.lowlevel.current_trio_token()
    weakref.finalize(body, _cancel_soon, token, pump)
    response = Response(body, status=200, content_type="text/event-stream; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})
    response.timeout = None  # a long generation is not a hung request
    return response


def _cancel_soon(token: trio.lowlevel.TrioToken, pump: Pump) -> None:
    with suppress(trio.RunFinishedError):
        token.run_sync_soon(pump.cancel)
