"""Slots: the sequences of the shared context, what each one holds, and which one a job gets.

A slot is one sequence id of the generation context. ``cached`` mirrors the tokens llama.cpp
holds for that sequence, position by position, so prefix reuse is a list comparison instead of a
question to llama.cpp. A job that finishes leaves its tokens in the slot: the next turn of the
same chat finds them there and evaluates only what is new.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import attrs

if TYPE_CHECKING:
    from trillama.actors.runner.engine import Job

__all__ = ["Slot", "common_prefix", "best_free_slot"]


@attrs.define(eq=False)
class Slot:
    """One sequence of the shared context; ``cached[i]`` is the token at KV position ``i``."""

    seq: int
    cached: list[int] = attrs.Factory(list)
    job: "Job | None" = None
    last_used: int = 0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case for a chat's next turn, compared in C
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]; halve with slice compares (in C)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def best_free_slot(free: Sequence[Slot], prompt: list[int]) -> tuple[Slot, int]:
    """The free slot whose cached tokens share the longest prefix with ``prompt``, and that length.

    Ties go to an empty slot, then to the least recently used one.
    """
    best, best_key = None, None
    for slot in free:
        k = common_prefix(slot.cached, prompt)
        key = (k, not slot.cached, -slot.last_used)
        if best_key is None or key > best_key:
            best, best_key = slot, key
    assert best is not None and best_key is not None
    return best, best_key[0]
