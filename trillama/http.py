"""HTTP/1.1 connection hygiene: slow headers and stalled bodies time out; ``Connection: close`` closes.

Hypercorn offers a keep-alive timeout (idle connections) and a ``read_timeout`` that applies to
*every* read — including while a long generation streams out and the client, rightly, sends
nothing — so it cannot be used here. What production servers bound instead is narrower:

* headers: from the first byte of a request, the whole header block must arrive within
  ``TRILLAMA_HEADER_TIMEOUT`` (slowloris sends one header byte every few seconds forever);
* bodies: while a request body is being received, no read may wait longer than
  ``TRILLAMA_BODY_TIMEOUT`` (a stalled upload holds a connection and its buffers forever), and
  after that much grace the body must keep an average of ``TRILLAMA_BODY_MIN_RATE`` bytes a
  second (a body sent one byte a second never stalls, and would otherwise never end) — Apache's
  ``mod_reqtimeout`` rule: each byte received extends the deadline by ``1 / min_rate`` seconds.

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

:func:`chunk_shortcut` goes one step further for the chunks of a streamed body: it wraps the
ASGI app so that a chunk skips hypercorn's per-chunk event layers and h11's state machine and
reaches that direct write already framed (see its docstring for why that is the same bytes).
"""

from __future__ import annotations

import math
import socket
from typing import Any

import h11
import trio

from trillama.logs import get_logger

__all__ = ["install_tcp_server", "chunk_shortcut"]

log = get_logger("trillama.http")


def _server_class(base: type, header_timeout: float, body_timeout: float, body_min_rate: float = 0) -> type:
    from hypercorn.events import Closed, RawData
    from hypercorn.trio.tcp_server import MAX_RECV

    class TrillamaTCPServer(base):  # type: ignore[misc, valid-type]
        #: the body being received: bytes so far, and seconds spent waiting for them (time the app
        #: spends on the bytes, with reading paused, is not the client's)
        _body_bytes = 0
        _body_wait = 0.0

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
                if body_min_rate > 0:
                    # The whole body: after ``body_timeout`` of grace it must keep up an average
                    # of ``body_min_rate`` bytes a second, however steadily it trickles.
                    allowed = body_timeout + self._body_bytes / body_min_rate - self._body_wait
                    if allowed < body_timeout:
                        return max(0.0, allowed), None, "body_rate"
                return body_timeout, None, "body"
            self._body_bytes, self._body_wait = 0, 0.0
            return math.inf, None, ""

        async def _read_data(self) -> None:
            header_deadline: float | None = None
            while True:
                timeout, header_deadline, waiting_for = self._next_timeout(header_deadline)
                asked = trio.current_time()
                try:
                    with trio.fail_after(timeout):
                        data = await self.stream.receive_some(MAX_RECV)
                except trio.TooSlowError:
                    if waiting_for == "body_rate":
                        log.info("read_timeout", waiting_for=waiting_for, body_bytes=self._body_bytes,
                                 body_wait_s=round(self._body_wait + timeout, 1), min_rate=body_min_rate)
                    else:
                        log.info("read_timeout", waiting_for=waiting_for,
                                 timeout_s=header_timeout if waiting_for == "headers" else body_timeout)
                    # Close now: hypercorn would otherwise keep the socket until its keep-alive
                    # timer ends the connection's task group.
                    await self.idle_task.stop()
                    await self._close()
                    break
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
                if waiting_for in ("body", "body_rate"):
                    self._body_bytes += len(data)
                    self._body_wait += trio.current_time() - asked
                await self.protocol.handle(RawData(bytes(data)))
                if data == b"":
                    break
            await self.protocol.handle(Closed())

        def write_now(self, data: bytes) -> int | None:
            """Write ``data`` without yielding if nothing else is being written: the bytes the
            kernel took (all of them, normally), 0 if it took none, -1 if it refused (reset,
            closed…), or ``None`` if this connection cannot be written to directly (TLS, a
            write in progress) and nothing was tried."""
            lock = getattr(self, "send_lock", None)
            if lock is None or lock.locked():
                return None
            sock = _plain_socket(self.stream)
            if sock is None:
                return None
            try:
                return sock.send(data)
            except BlockingIOError:
                return 0
            except OSError:
                return -1  # hypercorn's path meets the error again, raises it and closes

        async def protocol_send(self, event: Any) -> None:
            if type(event) is RawData:
                data = event.data
                sent = self.write_now(data)
                if sent is not None:
                    if sent == len(data):
                        return
                    await self.send_rest(data, sent)
                    return
            await super().protocol_send(event)

        async def send_rest(self, data: bytes, sent: int) -> None:
            """Send what :meth:`write_now` left of ``data`` through hypercorn's own path."""
            event = RawData(data=data[sent:] if sent > 0 else data)
            # The rest waits for the socket under hypercorn's lock; shielded, as hypercorn
            # shields its own write, so a chunk is never cut between here and there.
            with trio.CancelScope(shield=True):
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


def install_tcp_server(header_timeout: float, body_timeout: float, body_min_rate: float = 0) -> bool:
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
    timed = _server_class(base, header_timeout, body_timeout, body_min_rate)
    timed._trillama_base = base  # type: ignore[attr-defined]
    hypercorn_run.TCPServer = timed  # type: ignore[attr-defined]
    return True


def chunk_shortcut(app: Any) -> Any:
    """Wrap an ASGI app so that the chunks of a streamed HTTP/1.1 body skip hypercorn's layers.

    Why: each chunk of a streamed response, one per token, passes through hypercorn's
    ``HTTPStream.app_send``, a ``Body`` event, ``H11Protocol.stream_send``, an ``h11.Data`` event
    and h11's state machine before it reaches the socket: about a quarter of the server's Python
    time per streamed token (issue 14, ``docs/benchmarks.md``). While h11 is sending a chunked body
    none of those layers keeps any state for a chunk (the state stays ``SEND_BODY``; the chunked
    writer only frames the bytes), so framing the chunk here and handing it to the connection's
    writer puts the same bytes on the wire in the same order. Everything else — the status line and
    headers, the last chunk, HTTP/1.0 or ``Content-Length`` bodies, HEAD, HTTP/2 — takes
    hypercorn's own path, and so does every chunk if this hypercorn or h11 is not the shape known
    here.
    """

    async def asgi(scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("http_version") == "1.1":
            send = _ChunkShortcut(send)
        await app(scope, receive, send)

    return asgi


try:  # the classes the shortcut recognises; without them it stays off
    from h11._writers import ChunkedWriter as _ChunkedWriter
    from hypercorn.events import RawData as _RawData
    from hypercorn.protocol.h11 import H11Protocol as _H11Protocol
except ImportError:  # pragma: no cover - depends on the installed versions
    _ChunkedWriter = _RawData = _H11Protocol = None  # type: ignore[assignment, misc]


class _ChunkShortcut:
    """An ASGI ``send`` for one request that writes body chunks straight to the connection."""

    __slots__ = ("_send", "_connection", "_write", "_server", "_resolved")

    def __init__(self, send: Any) -> None:
        self._send = send
        self._connection: h11.Connection | None = None
        self._write: Any = None
        self._server: Any = None  # a TrillamaTCPServer, which can write without yielding
        self._resolved = False

    def _resolve(self) -> None:
        # The ASGI send is hypercorn's bound ``HTTPStream.app_send``; its stream sends through the
        # bound ``H11Protocol.stream_send``, whose protocol holds the h11 connection and the TCP
        # server's writer. Anything else (HTTP/2, another server, another version): no shortcut.
        self._resolved = True
        if _H11Protocol is None:
            return
        stream = getattr(self._send, "__self__", None)
        protocol = getattr(getattr(stream, "send", None), "__self__", None)
        if type(protocol) is not _H11Protocol:
            return
        connection = getattr(protocol, "connection", None)
        write = getattr(protocol, "send", None)
        if isinstance(connection, h11.Connection) and write is not None:
            self._connection, self._write = connection, write
            server = getattr(write, "__self__", None)
            if hasattr(server, "write_now") and hasattr(server, "send_rest"):
                self._server = server

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.body" and message.get("more_body", False):
            if not self._resolved:
                self._resolve()
            connection = self._connection
            body = message.get("body", b"")
            if (connection is not None and body and connection.our_state is h11.SEND_BODY
                    and type(getattr(connection, "_writer", None)) is _ChunkedWriter):
                frame = b"%x\r\n%b\r\n" % (len(body), body)
                server = self._server
                if server is not None:
                    sent = server.write_now(frame)
                    if sent == len(frame):
                        return
                    if sent is not None:
                        await server.send_rest(frame, sent)
                        return
                await self._write(_RawData(data=frame))
                return
        await self._send(message)
