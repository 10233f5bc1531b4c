"""Token bytes in, showable text out: UTF-8 completion and stop strings, per slot.

A token is a run of bytes that may end in the middle of a multi-byte character, and text already
sent to a client cannot be taken back. So the stream holds back (1) incomplete UTF-8 — the
incremental decoder does that — and (2) any tail that could still grow into a stop string. Once
a stop string appears, everything from its first byte on is dropped and the job stops.

Cost matters (this runs once per generated token): without stop strings ``push`` is one decoder
call; with them the work is bounded by the held tail, which is shorter than the longest stop.
"""

from __future__ import annotations

import codecs

__all__ = ["TextStream"]


class TextStream:
    __slots__ = ("_decode", "_stops", "_held")

    def __init__(self, stops: tuple[str, ...] = ()) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def push(self, data: bytes) -> tuple[str, bool]:
        """Add one token's bytes; returns (text now safe to emit, whether a stop string matched)."""
        text = self._decode(data)
        if not self._stops:
            return text, False
        held = self._held + text
        cut = -1
        for stop in self._stops:
            at = held.find(stop)
            if at >= 0 and (cut < 0 or at < cut):
                cut = at
        if cut >= 0:
            self._held = ""
            return held[:cut], True
        keep = 0
        for stop in self._stops:
            # the longest proper prefix of `stop` that ends `held`
            for k in range(min(len(stop) - 1, len(held)), keep, -1):
                if held.endswith(stop[:k]):
                    keep = k
                    break
        if keep:
            self._held = held[-keep:]
            return held[:-keep], False
        self._held = ""
        return held, False

    def flush(self) -> str:
        """Everything still held at the end of generation (no stop string can complete now)."""
        rest = self._held + self._decode(b"", True)
        self._held = ""
        return rest
