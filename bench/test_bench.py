"""Checks of the benchmark's own machinery (not of trillama's speed: no timing assertions).

Run with the product's venv, which has everything these need:
``.venv/bin/python -m pytest bench/test_bench.py -q``. Not collected by ``make test`` (testpaths).
"""

from __future__ import annotations

import asyncio
import json

import httpx

from bench.cheap import run_cheap
from bench.profiling import format_summary, summarise_raw
from bench.stats import median, percentile, ratio
from bench.streams import Endpoint, run_stream
from bench.workload import history_chat, second_turn, stream_messages


def test_percentile_is_nearest_rank():
    data = list(range(1, 21))
    assert percentile(data, 95) == 19
    assert percentile(data, 50) == 10
    assert percentile(data, 100) == 20
    assert percentile([], 50) is None
    assert median([3, 1, 2]) == 2
    assert ratio(1.0, 0) is None and ratio(3.0, 2.0) == 1.5


def test_prompts_are_stable_and_distinct():
    assert stream_messages("a", 1) == stream_messages("a", 1)
    assert stream_messages("a", 1)[0] != stream_messages("a", 2)[0]
    retake = stream_messages("a", 1, attempt=1)
    assert retake[0] != stream_messages("a", 1)[0]  # fresh nonce: not served from a prefix cache
    assert retake[1] == stream_messages("a", 1)[1]  # same task, so the same amount of work
    chat = history_chat(1000, "k")
    assert chat[0]["role"] == "system" and chat[-1]["role"] == "user"
    words = sum(len(m["content"].split()) for m in chat)
    assert 500 < words < 1100
    nxt = second_turn(chat, "reply")
    assert nxt[: len(chat)] == chat and nxt[len(chat)]["content"] == "reply"


def test_summarise_raw_attributes_child_processes():
    raw = "\n".join([
        'process 10:"python -m trillama serve";main (cli.py:1);handle (app.py:5) 3',
        'process 10:"python -m trillama serve";process 11:"python -m trillama.actors.runner --spec {}";'
        "run (engine.py:1);step (engine.py:9) 7",
        'process 10:"python -m trillama serve";process 11:"python -m trillama.actors.runner --spec {}";'
        "run (engine.py:1);sample (engine.py:20) 3",
    ])
    out = summarise_raw(raw)["processes"]
    assert out["server (pid 10)"]["samples"] == 3
    runner = out["runner (pid 11)"]
    assert runner["samples"] == 10
    assert runner["top_self"][0] == ("step (engine.py)", 7, 70.0)
    assert runner["top_lines"][0] == ("step (engine.py:9)", 7, 70.0)
    assert ("run (engine.py)", 10, 100.0) in runner["top_inclusive"]
    assert "runner (pid 11): 10 samples" in format_summary({"processes": out})


def _serve(handler_bodies):
    """A tiny HTTP/1.1 server cycling through canned replies (bytes)."""
    replies = iter(handler_bodies * 100000)

    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    break
                reply = next(replies)
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


def test_cheap_client_counts_keepalive_chunked_close_and_errors():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    close = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    bad = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"

    async def main():
        server = await asyncio.start_server(_serve([ok, chunked, close, bad]), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await run_cheap("127.0.0.1", port, "/x", connections=4, seconds=0.5, max_requests=400,
                                   warmup=0.0)

    result = asyncio.run(main())
    assert 0 < result.requests <= 400
    assert result.reconnects > 0
    assert result.errors > 0  # the 500s
    assert result.p99_ms is not None and result.rps > 0


def _mock_client(body: bytes, content_type: str) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


def test_ndjson_stream_uses_server_token_count():
    lines = [{"message": {"role": "assistant", "content": t}, "done": False} for t in ("a", "b", "", "c")]
    lines.append({"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 5,
                  "prompt_eval_count": 40, "prompt_eval_duration": 2_000_000})
    body = "\n".join(json.dumps(x) for x in lines).encode()

    async def main():
        async with _mock_client(body, "application/x-ndjson") as client:
            return await run_stream(client, Endpoint("http://t", "ndjson-chat", "m"), [], 8)

    r = asyncio.run(main())
    assert r.ok and r.chunks == 3 and r.tokens == 5 and r.tokens_from == "server"
    assert r.prompt_tokens == 40 and r.server_prompt_ms == 2.0 and r.text == "abc"
    assert r.ttft is not None and r.t_last >= r.ttft


def test_sse_stream_counts_chunks_without_usage_and_reports_errors():
    events = [": ping", "", 'data: {"choices":[{"delta":{"role":"assistant"}}]}', "",
              'data: {"choices":[{"delta":{"content":"x"}}]}', "",
              'data: {"choices":[{"delta":{"content":"y"}}]}', "", "data: [DONE]", ""]

    async def main(body):
        async with _mock_client(body, "text/event-stream") as client:
            return await run_stream(client, Endpoint("http://t", "sse-chat", "m"), [], 8)

    r = asyncio.run(main("\n".join(events).encode()))
    assert r.ok and r.tokens == 2 and r.tokens_from == "chunks" and r.text == "xy"
    bad = asyncio.run(main(b'data: {"error": {"message": "boom"}}\n\n'))
    assert not bad.ok and "boom" in bad.error
