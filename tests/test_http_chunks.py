"""The streamed-chunk shortcut (``trillama.http.chunk_shortcut``): same bytes on the wire, fewer layers.

A small Quart-trio app is served by real hypercorn on loopback, once with the shortcut and once
without, and a raw socket reads each answer whole. Apart from the ``date`` header the two must be
the same bytes: the chunked framing, the chunks' order, the last chunk, HTTP/1.0 and HEAD answers.
A spy on hypercorn's ``HTTPStream.app_send`` shows that the shortcut really carried the chunks.
"""

from __future__ import annotations

import re
import socket
from typing import AsyncIterator

import pytest
import trio
from hypercorn.config import Config
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.trio import serve
from quart import Response
from quart_trio import QuartTrio

from trillama.http import chunk_shortcut, install_tcp_server

CHUNKS = [b'{"response":"a"}\n', "é → ü\n".encode(), b"", b"x" * 70_000, b'{"done":true}\n']


def _app() -> QuartTrio:
    app = QuartTrio("chunks")

    @app.route("/stream", methods=["GET", "HEAD"])
    async def stream() -> Response:
        async def body() -> AsyncIterator[bytes]:
            for chunk in CHUNKS:
                await trio.sleep(0)
                yield chunk

        response = Response(body(), content_type="application/x-ndjson")
        response.timeout = None
        return response

    @app.route("/fixed")
    async def fixed() -> Response:
        return Response(b"whole", content_type="text/plain")

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while data := sock.recv(65536):
            received += data
    return re.sub(rb"\r\ndate: [^\r]*", b"", received)


async def _answers(shortcut: bool, requests: list[bytes]) -> list[bytes]:
    install_tcp_server(header_timeout=10, body_timeout=10)
    app = _app()
    config = Config()
    port = _free_port()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    stop = trio.Event()
    answers: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve(chunk_shortcut(app) if shortcut else app, config,
                                         shutdown_trigger=stop.wait))
        for _ in range(200):  # until it listens
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                await trio.sleep(0.02)
        for request in requests:
            answers.append(await trio.to_thread.run_sync(_exchange, port, request))
        stop.set()
    return answers


REQUESTS = {
    "chunked": b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "http/1.0": b"GET /stream HTTP/1.0\r\nHost: t\r\n\r\n",
    "head": b"HEAD /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    "fixed": b"GET /fixed HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
}


async def test_the_shortcut_puts_the_same_bytes_on_the_wire():
    plain = await _answers(False, list(REQUESTS.values()))
    short = await _answers(True, list(REQUESTS.values()))
    for name, a, b in zip(REQUESTS, plain, short):
        assert a == b, name
    chunked = dict(zip(REQUESTS, short))["chunked"]
    assert b"transfer-encoding: chunked" in chunked.lower()
    head, _, body = chunked.partition(b"\r\n\r\n")
    expected = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in CHUNKS if c) + b"0\r\n\r\n"
    assert body == expected


@pytest.mark.parametrize("shortcut, body_sends", [(False, len(CHUNKS) + 1), (True, CHUNKS.count(b"") + 1)])
async def test_the_shortcut_carries_the_chunks_of_a_chunked_body(monkeypatch, shortcut, body_sends):
    seen: list[dict] = []
    original = HTTPStream.app_send

    async def spy(self, message):
        if message is not None and message["type"] == "http.response.body":
            seen.append(message)
        await original(self, message)

    monkeypatch.setattr(HTTPStream, "app_send", spy)
    [answer] = await _answers(shortcut, [REQUESTS["chunked"]])
    assert answer.endswith(b"0\r\n\r\n")
    # without the shortcut every chunk (and the closing empty one) goes through hypercorn's
    # stream; with it, only the closing one and the empty chunk (which frames to nothing)
    assert len(seen) == body_sends
    assert seen[-1]["more_body"] is False
