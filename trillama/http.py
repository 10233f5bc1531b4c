"""HTTP/1.1 connection hygiene: slow headers and stalled bodies time out; ``Connection: close`` closes.

Hypercorn offers a keep-alive timeout (idle connections) and a ``read_timeout`` that applies to
*every* read — including while a long generation streams out and the client, rightly, sends
nothing — so it cannot be used here. What production servers bound instead is narrower:

* headers: from the first byte of a request, the whole header block must arrive within
  ``TRILLAMA_HEADER_TIMEOUT`` (slowloris sends one header byte every few seconds forever);
* bodies: while a request body is being received, no read may wait longer than
  ``TRILLAMA_BODY_TIMEOUT`` (a stalled upload holds a connection and its buffers forever).

Both are decided from the h11 connection state before each read, in a subclass of hypercorn's
trio TCP server installed by :func:`install_tcp_server`. Once a request is complete the reads
wait without limit again (the response may take minutes), and idle connections are closed by
hypercorn's own keep-alive timer as before.

The same subclass makes a write cheap. Hypercorn sends each chunk of a streamed response under
a lock and through Trio's ``send_all``, and both yield to the scheduler: two task switches per
streamed token, about a third of what the server spent per token (issue 14, see
``docs/benchmarks.md``). When no other write is in progress and the kernel takes the whole chunk
at once — the normal case for a client that keeps up — :meth:`protocol_send` hands it to the
socket directly, without yielding; anything else (a full socket buffer, an error, TLS) takes
hypercorn's own path, so the bytes and their order on the wire are the same either way.
"""

from __future__ import annotations

import math
import socket
from typing import Any

import h11
import trio

from trillama.logs import get_logger

__all__ = ["install_tcp_server"]

log = get_logger("trillama.http")


def _server_class(base: type, header_timeout: float, body_timeout: float) -> type:
    from hypercorn.events import Closed, RawData
    from hypercorn.trio.tcp_server import MAX_RECV

    class TrillamaTCPServer(base):  # type: ignore[misc, valid-type]
        def _h11(self) -> h11.Connection | None:
            wrapper = getattr(self, "protocol", None)
            connection = getattr(getattr(wrapper, "protocol", None), "connection", None)
            return connection if isinstance(connection, h11.Connection) else None

        def _next_timeout(self, header_deadline: float | None) -> tuple[float, float | None, str]:
            connection = self._h11()
            if connection is None:  # HTTP/2 or a websocket: hypercorn's own rules
                return math.inf, None, ""
            state = connection.their_state
            if state is h11.IDLE and connection.trailing_data[0]:
                # A request has begun and its headers are not complete yet.
                if header_deadline is None:
                    header_deadline = trio.current_time() + header_timeout
                return max(0.0, header_deadline - trio.current_time()), header_deadline, "headers"
            if state is h11.SEND_BODY:
                return body_timeout, None, "body"
            return math.inf, None, ""

        async def _read_data(self) -> None:
            header_deadline: float | None = None
            while True:
                timeout, header_deadline, waiting_for = self._next_timeout(header_deadline)
                try:
                    with trio.fail_after(timeout):
                        data = await self.stream.receive_some(MAX_RECV)
                except trio.TooSlowError:
                    log.info("read_timeout", waiting_for=waiting_for,
                             timeout_s=header_timeout if waiting_for == "headers" else body_timeout)
                    # Close now: hypercorn would otherwise keep the socket until its keep-alive
                    # timer ends the connection's task group.
                    await self.idle_task.stop()
                    await self._close()
                    break
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
            await self.protocol.handle(Closed())

        async def protocol_send(self, event: Any) -> None:
            lock = getattr(self, "send_lock", None)
            if type(event) is RawData and lock is not None and not lock.locked():
                sock = _plain_socket(self.stream)
                if sock is not None:
                    data = event.data
                    try:
                        sent = sock.send(data)
                    except BlockingIOError:
                        sent = 0
                    except OSError:
                        sent = -1  # reset, closed…: hypercorn's path raises it and closes
                    if sent == len(data):
                        return
                    if sent > 0:
                        event = RawData(data=data[sent:])
                    # The rest waits for the socket under hypercorn's lock; shielded, as hypercorn
                    # shields its own write, so a chunk is never cut between here and there.
                    with trio.CancelScope(shield=True):
                        await super().protocol_send(event)
                    return
            await super().protocol_send(event)

        async def _close(self) -> None:
            # Hypercorn closes a ``Connection: close`` (or HTTP/1.0) connection from inside the
            # app's send path, which quart-trio has already cancelled once the response is out:
            # the first await raised Cancelled and the socket stayed open until the client gave
            # up. Shielded, the close always happens (shutdown and close do not block).
            with trio.CancelScope(shield=True):
                await super()._close()

    TrillamaTCPServer.__name__ = "TrillamaTCPServer"
    return TrillamaTCPServer


def _plain_socket(stream: Any) -> socket.socket | None:
    """The OS socket under a plain Trio ``SocketStream`` (``None`` for TLS or anything else)."""
    if type(stream) is not trio.SocketStream:
        return None
    sock = getattr(stream.socket, "_sock", None)  # Trio keeps the stdlib socket here
    return sock if isinstance(sock, socket.socket) and sock.fileno() >= 0 else None


def install_tcp_server(header_timeout: float, body_timeout: float) -> bool:
    """Make hypercorn's trio server apply the header and body timeouts, and write without
    yielding when it can, on new connections.

    Returns False (and logs) if this hypercorn's internals differ from what this module knows;
    the server then runs without these (timeouts, cheap writes) rather than not at all.
    """
    try:
        from hypercorn.trio import run as hypercorn_run
        from hypercorn.trio.tcp_server import TCPServer
    except ImportError:  # pragma: no cover - hypercorn is a dependency
        return False
    current: Any = getattr(hypercorn_run, "TCPServer", None)
    if current is None or not all(hasattr(TCPServer, name) for name in ("_read_data", "protocol_send")):
        log.warning("tcp_server_unavailable", reason="unknown hypercorn version")
        return False
    base = getattr(current, "_trillama_base", current)
    timed = _server_class(base, header_timeout, body_timeout)
    timed._trillama_base = base  # type: ignore[attr-defined]
    hypercorn_run.TCPServer = timed  # type: ignore[attr-defined]
    return True
