"""How many decode threads each runner gets when several models are busy at once.

llama.cpp's CPU backend (built with OpenMP here) makes every decode thread spin at each barrier
of a graph. One runner with all the cores is the fastest single stream; two runners that each
ask for all the cores fight over them, and every barrier waits for a thread the OS has
descheduled. Measured on a 2-core machine with SmolLM2: two runners decoding at once with 2
threads each made 7 tokens/s together; with 1 thread each, 166 (docs/runner.md).

So the scheduler shares the machine's decode threads among the runners that are *busy*
(running a job): alone, a runner gets what it was loaded with; with company, the budget is split
evenly. Idle runners decode nothing, so they hold no share; they get theirs when work arrives.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Mapping
from typing import TypeVar

__all__ = ["share_threads"]

K = TypeVar("K", bound=Hashable)


def share_threads(configured: Mapping[K, int], busy: Collection[K], budget: int) -> dict[K, int]:
    """Thread count for every runner in ``configured`` (its threads when loaded).

    ``busy`` are the runners with work; ``budget`` is how many threads the machine runs well at
    once (the cores). One busy runner, or none: everyone gets what it was configured with.
    Several: each busy runner gets an even share of ``budget`` (the first ones take the
    remainder), never more than it was configured with and never less than one. Idle runners
    keep their configured count, so a runner that wakes alone needs no change.
    """
    shares = {key: max(1, threads) for key, threads in configured.items()}
    working = [key for key in configured if key in busy]
    if len(working) <= 1:
        return shares
    base, extra = divmod(max(1, budget), len(working))
    for index, key in enumerate(working):
        fair = base + (1 if index < extra else 0)
        shares[key] = max(1, min(shares[key], fair))
    return shares
