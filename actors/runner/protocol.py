"""The wire format between the server and a runner process.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack. msgpack because it
is compact and fast to pack from Python (one ``packb`` per decode step); length prefixes because a
pipe delivers a byte stream and the reader must know where a message ends without scanning it.

Server → runner frames are one command each, a list whose first item names the operation
(``OP_*``). Runner → server frames are a *list of events* so that everything one decode step
produced for every slot leaves in a single ``write`` (``EV_*`` tags). The tags are short strings:
they are packed once per token.
"""

from __future__ import annotations

import struct
from typing import Any, BinaryIO

import msgpack

__all__ = [
    "HEADER",
    "MAX_FRAME",
    "ProtocolError",
    "encode_frame",
    "FrameDecoder",
    "read_frame",
    "OP_GENERATE",
    "OP_CANCEL",
    "OP_TOKENIZE",
    "OP_DETOKENIZE",
    "OP_EMBED",
    "OP_SLOTS",
    "OP_THREADS",
    "OP_CACHE_LIMIT",
    "OP_STOP",
    "EV_READY",
    "EV_LOAD_FAILED",
    "EV_PIECE",
    "EV_DONE",
    "EV_FAILED",
    "EV_REPLY",
    "EV_ERROR",
    "cancelled_event",
]

HEADER = struct.Struct(">I")
#: A frame larger than this is a protocol error, not a message: it guards against reading garbage.
MAX_FRAME = 512 * 1024 * 1024

# server → runner
OP_GENERATE = "gen"  # [op, job_id, job dict]
OP_CANCEL = "cancel"  # [op, job_id] → the job's EV_DONE with done_reason "cancel" and its counts
OP_TOKENIZE = "tok"  # [op, req_id, text, add_special, max_tokens?] → tokens (None: over max_tokens)
OP_DETOKENIZE = "detok"  # [op, req_id, tokens]
OP_EMBED = "embed"  # [op, req_id, inputs, truncate]
OP_SLOTS = "slots"  # [op, req_id] → {"slots": [slot state…], "n_threads": n}
OP_THREADS = "threads"  # [op, n]: decode with n threads from the next step on (no reply)
OP_CACHE_LIMIT = "cache_limit"  # [op, req_id, bytes] → prompt cache stats after shrinking to bytes
OP_STOP = "stop"  # [op]

# runner → server (each frame is a list of these)
EV_READY = "ready"  # [ev, facts dict]
EV_LOAD_FAILED = "load_failed"  # [ev, message]
EV_PIECE = "p"  # [ev, job_id, text, logprobs | None]
EV_DONE = "d"  # [ev, job_id, done dict]
EV_FAILED = "f"  # [ev, job_id, message, kind]
EV_REPLY = "r"  # [ev, req_id, result]
EV_ERROR = "e"  # [ev, req_id, message, kind]


def cancelled_event(job_id: str) -> list:
    """The answer to a cancel for a job that never ran (still queued or being prepared)."""
    return [EV_DONE, job_id, {"done_reason": "cancel", "prompt_eval_count": 0, "prompt_eval_duration_ns": 0,
                              "eval_count": 0, "eval_duration_ns": 0, "context": [], "cached_count": 0}]


class ProtocolError(Exception):
    """The byte stream does not hold well-formed frames: the peer is broken or not a runner."""


_packb = msgpack.Packer(use_bin_type=True).pack


def encode_frame(obj: Any) -> bytes:
    body = _packb(obj)
    return HEADER.pack(len(body)) + body


def _unpack(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable frame: {exc}") from None


class FrameDecoder:
    """Incremental decoder for the asynchronous side: feed it chunks, get whole messages back."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out: list[Any] = []
        start = 0
        size = len(buf)
        while size - start >= 4:
            (length,) = HEADER.unpack_from(buf, start)
            if length > MAX_FRAME:
                raise ProtocolError(f"frame of {length} bytes exceeds the limit")
            end = start + 4 + length
            if end > size:
                break
            out.append(_unpack(bytes(buf[start + 4 : end])))
            start = end
        if start:
            del buf[:start]
        return out

    @property
    def pending_bytes(self) -> int:
        return len(self._buf)


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_frame(stream: BinaryIO) -> Any | None:
    """Blocking read of one frame (runner side); ``None`` at end of stream."""
    head = _read_exactly(stream, 4)
    if head is None:
        return None
    (length,) = HEADER.unpack(head)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit")
    body = _read_exactly(stream, length)
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return _unpack(body)
