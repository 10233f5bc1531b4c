"""Detects other processes' CPU use during a measurement, so noisy samples can be retaken.

Why: llama.cpp's worker threads spin at barriers. On 2 cores, one busy foreign process does not
cost a decode its share of the CPU, it costs it most of its speed (a 140 tok/s stream fell to
2 tok/s in development while other engineers' tests ran). A median over such samples says nothing
about the subject. So every sample is timed with a meter: machine-wide busy CPU minus the CPU of
this process tree (the bench, the server it started, the server's runners). When the foreign share
is above a limit the sample is taken again, a bounded number of times; if every attempt was noisy
the quietest is kept and counted as noisy in the results.
"""

from __future__ import annotations

import os
import time
from typing import Awaitable, Callable, TypeVar

import psutil

from bench.memory import tree_cpu_seconds

__all__ = ["CpuMeter", "retake_if_noisy", "NOISE_LIMIT", "sync_retake_if_noisy", "set_retake_budget"]

T = TypeVar("T")

#: foreign CPU, as a fraction of all cores, above which a sample is retaken (0.1 of 2 cores =
#: a fifth of one core on average over the sample)
NOISE_LIMIT = 0.10

#: seconds this process may still spend on retakes; under sustained noise retaking everything
#: would multiply the run time, so past this budget noisy samples are kept (and counted)
_budget = {"left": float("inf")}


def set_retake_budget(seconds: float) -> None:
    _budget["left"] = seconds


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


def _own_tree_seconds() -> float:
    return tree_cpu_seconds(os.getpid())


class CpuMeter:
    """``start()`` then ``stop()`` → average foreign CPU over the window, as a fraction of all cores."""

    def __init__(self) -> None:
        self.cores = psutil.cpu_count() or 1
        self._t0 = self._busy0 = self._own0 = 0.0
        self.wall = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._busy0 = _busy_seconds()
        self._own0 = _own_tree_seconds()

    def stop(self) -> float:
        wall = self.wall = time.perf_counter() - self._t0
        foreign = (_busy_seconds() - self._busy0) - (_own_tree_seconds() - self._own0)
        if wall <= 0:
            return 0.0
        return max(0.0, foreign / wall / self.cores)


class _Retakes:
    """The bookkeeping of one sample's attempts: meter each, keep the quietest, stop when quiet."""

    def __init__(self, limit: float) -> None:
        self.meter = CpuMeter()
        self.limit = limit
        self.best: tuple[object, float] | None = None
        self.attempts = 0

    def begin(self) -> int:
        self.attempts += 1
        self.meter.start()
        return self.attempts - 1

    def done(self, result: object) -> bool:
        foreign = self.meter.stop()
        if self.attempts > 1:
            _budget["left"] -= self.meter.wall
        if self.best is None or foreign < self.best[1]:
            self.best = (result, foreign)
        return foreign <= self.limit or _budget["left"] <= 0

    def outcome(self) -> tuple:
        assert self.best is not None
        return self.best[0], self.best[1], self.attempts


async def retake_if_noisy(take: Callable[[int], Awaitable[T]], retries: int,
                          limit: float = NOISE_LIMIT) -> tuple[T, float, int]:
    """Run ``take(attempt)`` until a quiet attempt; return ``(result, foreign share, attempts)``.

    ``attempt`` counts from 0 so that a retake can use a fresh prompt: repeating the same one would
    be answered from the server's prefix cache and flatter the time to first token.
    """
    retakes = _Retakes(limit)
    for _ in range(retries + 1):
        if retakes.done(await take(retakes.begin())):
            break
    return retakes.outcome()


def sync_retake_if_noisy(take: Callable[[int], T], retries: int,
                         limit: float = NOISE_LIMIT) -> tuple[T, float, int]:
    """:func:`retake_if_noisy` for blocking code (the in-process engine run)."""
    retakes = _Retakes(limit)
    for _ in range(retries + 1):
        if retakes.done(take(retakes.begin())):
            break
    return retakes.outcome()
