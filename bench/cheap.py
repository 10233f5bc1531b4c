"""Requests per second on a cheap endpoint, with a raw-socket HTTP/1.1 client.

Why not httpx here: at 64 connections the question is how many trivial requests the *server*
answers per second, and on a 2-core machine the client shares the CPU with it. httpx spends tens of
microseconds of Python per request; this client is an ``asyncio.Protocol`` that writes a prebuilt
request and scans the reply for the end of its headers and body, a few microseconds each. The
client's own CPU time is measured and reported next to the result, so the reader can see what it
took from the server.

Each connection keeps one request in flight (no pipelining), reconnects when the server closes
(llama-server's HTTP library caps requests per connection), and stops at the deadline or the
request cap, whichever comes first.
"""

from __future__ import annotations

import asyncio
import resource
import time

import attrs

from bench.stats import percentile

__all__ = ["CheapResult", "run_cheap"]


@attrs.frozen
class CheapResult:
    path: str
    connections: int
    seconds: float
    requests: int
    errors: int
    reconnects: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    client_cpu_s: float

    def as_dict(self) -> dict:
        return attrs.asdict(self)


class _Conn(asyncio.Protocol):
    """One keep-alive connection that sends the next request as soon as a reply is complete."""

    def __init__(self, shared: "_Shared") -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_at = 0.0
        self.need: int | None = None  # total bytes of the current reply once the headers are in
        self.chunked = False
        self.closing = False
        self.inflight = False
        self.head_len = 0
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self._send()

    def _send(self) -> None:
        s = self.shared
        if time.perf_counter() >= s.deadline or s.issued >= s.max_requests:
            self.transport.close()
            return
        s.issued += 1
        self.inflight = True
        self.sent_at = time.perf_counter()
        self.transport.write(s.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                self.closing = b"connection: close" in head
                status_ok = head.startswith(b"http/1.1 200") or head.startswith(b"http/1.0 200")
                if not status_ok:
                    self.shared.errors += 1
                idx = head.find(b"content-length:")
                if idx >= 0:
                    line_end = head.find(b"\r\n", idx)
                    length = int(head[idx + 15: line_end if line_end >= 0 else None])
                    self.need = end + 4 + length
                    self.chunked = False
                else:
                    self.chunked = b"transfer-encoding: chunked" in head
                    self.need = -1 if self.chunked else end + 4
                self.head_len = end + 4
            if self.chunked:
                term = self.buf.find(b"0\r\n\r\n", self.head_len)
                if term < 0:
                    return
                consumed = term + 5
            else:
                if len(self.buf) < self.need:
                    return
                consumed = self.need
            del self.buf[:consumed]
            self.need = None
            self.inflight = False
            self.shared.record(time.perf_counter() - self.sent_at)
            if self.closing:
                self.shared.reconnects += 1
                self.transport.close()
                return
            self._send()
            return

    def connection_lost(self, exc) -> None:
        if self.inflight:  # the server dropped the connection under a request
            self.shared.errors += 1
            self.inflight = False
        if not self.done.done():
            self.done.set_result(self.closing)


@attrs.define
class _Shared:
    request: bytes
    deadline: float
    max_requests: int
    issued: int = 0
    errors: int = 0
    reconnects: int = 0
    latencies: list = attrs.Factory(list)
    measuring_from: float = 0.0

    def record(self, latency: float) -> None:
        if time.perf_counter() >= self.measuring_from:
            self.latencies.append(latency)


async def _connection_loop(host: str, port: int, shared: _Shared) -> None:
    loop = asyncio.get_running_loop()
    attempts = 0
    while time.perf_counter() < shared.deadline and shared.issued < shared.max_requests and attempts < 1000:
        attempts += 1
        try:
            _, proto = await loop.create_connection(lambda: _Conn(shared), host, port)
        except OSError:
            shared.errors += 1
            await asyncio.sleep(0.01)
            continue
        await proto.done


async def run_cheap(host: str, port: int, path: str, *, connections: int, seconds: float,
                    max_requests: int, warmup: float = 1.0) -> CheapResult:
    """Hammer ``GET path`` from ``connections`` connections for ``warmup + seconds``."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: trillama-bench\r\n"
               f"Accept: */*\r\n\r\n").encode()
    start = time.perf_counter()
    shared = _Shared(request=request, deadline=start + warmup + seconds, max_requests=max_requests,
                     measuring_from=start + warmup)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(_connection_loop(host, port, shared) for _ in range(connections)))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    end = time.perf_counter()
    measured = max(1e-9, min(end, shared.deadline) - shared.measuring_from)
    lat = shared.latencies
    p50 = percentile(lat, 50)
    p99 = percentile(lat, 99)
    return CheapResult(
        path=path, connections=connections, seconds=round(measured, 3), requests=len(lat),
        errors=shared.errors, reconnects=shared.reconnects, rps=len(lat) / measured,
        p50_ms=p50 * 1000 if p50 is not None else None, p99_ms=p99 * 1000 if p99 is not None else None,
        client_cpu_s=(cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
    )
