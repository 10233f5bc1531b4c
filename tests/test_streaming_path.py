"""The cheap streaming path (issue 14, part 2): same bytes, fewer task hops and writes.

Unit tests pin the pieces (timestamps, backlog coalescing, the runner handing tokens straight to
the request's channel); the end-to-end test streams a long answer to a client that reads slowly
through a tiny receive buffer, so the server's direct write meets a full socket and falls back to
hypercorn's path, and checks that every token arrives once, in order, with its own logprobs.
"""

from __future__ import annotations

import json
import re
import socket
import time
from datetime import datetime, timezone

import pytest
import trio

from trillama.actors.runner.messages import Done, Failed, Piece
from trillama.api import completion
from trillama.api.completion import _with_waiting_pieces, now_rfc3339

SMOL = "smollm2:135m"


# ----------------------------------------------------------------------------- timestamps
def _reference(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{nanos:09d}".rstrip("0")
    return f"{stamp}.{frac}Z" if frac else f"{stamp}Z"


@pytest.mark.parametrize("ns", [1_764_633_600_000_000_000, 1_764_633_600_120_000_000,
                                1_764_633_601_000_000_001, 1_764_633_659_999_999_999])
def test_cached_timestamps_match_a_fresh_format(monkeypatch, ns):
    monkeypatch.setattr(completion.time, "time_ns", lambda: ns)
    assert now_rfc3339() == _reference(ns)
    # the next second must not reuse the cached date part
    monkeypatch.setattr(completion.time, "time_ns", lambda: ns + 1_000_000_000)
    assert now_rfc3339() == _reference(ns + 1_000_000_000)


def test_timestamps_are_go_rfc3339_nano():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z", now_rfc3339())


# ----------------------------------------------------------------------------- coalescing
DONE = Done(done_reason="stop", prompt_eval_count=1, prompt_eval_duration_ns=1, eval_count=3,
            eval_duration_ns=1, context=[], cached_count=0)


def _backlog(events: list, *, close: bool = True) -> tuple[Piece, object]:
    """What ``run_job`` sends for the first of ``events`` when all of them are already waiting."""
    send, receive = trio.open_memory_channel(100)
    for event in events:
        send.send_nowait(event)
    if close:
        send.close()
    return _with_waiting_pieces(receive, receive.receive_nowait())


def test_a_backlog_of_pieces_goes_out_as_one_and_the_final_event_follows():
    lp = [{"token": "a"}], [{"token": "b"}], None
    assert _backlog([Piece("a", lp[0]), Piece("b", lp[1]), Piece("c"), DONE]) == (
        Piece("abc", [{"token": "a"}, {"token": "b"}]), DONE)


def test_pieces_without_logprobs_stay_without_and_failures_pass_through():
    assert _backlog([Piece("x"), Piece("y"), Failed("boom", "internal")]) == (
        Piece("xy", None), Failed("boom", "internal"))


@pytest.mark.parametrize("close", [True, False])
def test_a_piece_that_arrives_alone_is_sent_alone(close):
    piece = Piece("one", [{"token": "one"}])
    joined, after = _backlog([piece], close=close)
    assert joined is piece and after is None


# ----------------------------------------------------------------------------- end to end
def _read_chunked_ndjson(raw: bytes) -> list[dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert b"transfer-encoding: chunked" in head.lower()
    data = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        data, body = data + body[:size], body[size + 2:]
    return [json.loads(line) for line in data.decode().splitlines()]


@pytest.mark.slow
def test_a_slow_reader_gets_every_byte_in_order(shared_server):
    body = {"model": SMOL, "prompt": "Write a long story about a lighthouse keeper.", "stream": True,
            "logprobs": True, "top_logprobs": 5,
            "options": {"num_predict": 300, "temperature": 0, "seed": 1}}
    data = json.dumps(body).encode()
    request = (f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # a window the server soon fills
    sock.connect(("127.0.0.1", shared_server.port))
    sock.settimeout(120)
    sock.sendall(request)
    time.sleep(3)  # the whole answer is generated while nothing is read
    received = b""
    while chunk := sock.recv(512):
        received += chunk
        time.sleep(0.001)
    sock.close()
    slow = _read_chunked_ndjson(received)
    # Checked against itself, not against a second run: two greedy runs of the same prompt can
    # part at a near-tie (the KV cache's layout, left by earlier requests, changes the rounding).
    assert slow[-1]["done"] is True and slow[-1]["done_reason"] == "length"
    text = "".join(c["response"] for c in slow)
    tokens = [lp["token"] for c in slow for lp in c.get("logprobs", [])]
    assert len(tokens) == slow[-1]["eval_count"] == 300  # not one token lost or doubled…
    assert "".join(tokens) == text  # …in order, each chunk's text with its own logprobs
    assert all(len(lp["top_logprobs"]) == 5 for c in slow for lp in c.get("logprobs", []))
    # the answer (~150 KB with five alternatives per token) is far larger than what a 2 KB
    # receive window and the server's initial send buffer (16 KB) take while nobody reads
    assert len(received) > 100_000, len(received)


# ----------------------------------------------------------------------------- chunk encoding
from hypothesis import given, settings, strategies as st  # noqa: E402

from trillama.api import streaming  # noqa: E402

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def test_the_fast_chunk_encoder_is_in_use():
    assert streaming._fast_encode is not None  # CPython's C encoder: the streaming path uses it


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _json_values, max_size=6))
def test_chunks_encode_exactly_as_the_standard_encoder_does(obj):
    import json

    assert streaming.dumps(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def test_a_value_json_cannot_encode_is_refused_the_same_way():
    with pytest.raises(TypeError, match="not JSON serializable"):
        streaming.dumps({"x": object()})
