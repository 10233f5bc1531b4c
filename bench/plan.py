"""What one benchmark run measures and how hard: the knobs shared by every subject.

Why one frozen value: every subject (the engine in process, trillama, llama-server, llama-cpp-python's
server) must run with the same threads, context per slot, batch size, slot count and token budget,
or the ratios in the report mean nothing. Keeping them in one place makes that checkable, and the
JSON result records the plan it ran with.
"""

from __future__ import annotations

import attrs

__all__ = ["Plan", "quick_plan", "full_plan"]


@attrs.frozen
class Plan:
    """Workload sizes and engine settings for one run."""

    mode: str
    #: decode and prompt threads for every subject (pinned: the peers' defaults differ)
    threads: int = 2
    #: context tokens each slot can hold, for every subject
    ctx_per_slot: int = 4096
    #: parallel slots of the servers that batch (trillama, llama-server)
    slots: int = 4
    #: logical and physical batch size for prompt evaluation, for every subject
    n_batch: int = 512
    #: flash attention for every subject (llama.cpp's "auto" resolves to on for CPU)
    flash_attn: bool = True
    #: tokens generated per stream (the issue's 128)
    max_tokens: int = 128
    #: single-stream repetitions (median taken)
    single_repeats: int = 9
    #: concurrency levels for the aggregate runs
    levels: tuple[int, ...] = (1, 2, 4, 8)
    #: rounds per concurrency level; each round starts N streams at once and waits for all
    rounds: int = 5
    #: repetitions of the two-turn chat for prefix reuse (each with a fresh, uncached history)
    prefix_repeats: int = 6
    #: approximate tokens of chat history before the first measured turn
    history_tokens: int = 1000
    #: tokens generated per turn in the prefix test (only the first one matters)
    prefix_max_tokens: int = 16
    #: connections for the cheap-endpoint test
    cheap_connections: int = 64
    #: seconds the cheap-endpoint test runs (after a short warm-up)
    cheap_seconds: float = 10.0
    #: hard cap on cheap-endpoint requests, so the loop is bounded in count as well as time
    cheap_max_requests: int = 1_000_000
    #: retakes of a sample during which other processes used the CPU (see bench/contention.py)
    noisy_retries: int = 3
    #: seconds each process (the bench, the in-process worker) may spend on retakes in all
    retake_budget_s: float = 180.0
    #: per-request timeout for streams (seconds)
    request_timeout: float = 300.0
    #: py-spy sampling of trillama under the 4-stream load (seconds; 0 = skip)
    profile_seconds: float = 0.0

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def quick_plan() -> Plan:
    """A few minutes in all: enough to see that every path works and get rough numbers."""
    return Plan(
        mode="quick",
        single_repeats=3,
        levels=(1, 4, 8),
        rounds=1,
        prefix_repeats=2,
        cheap_seconds=3.0,
        cheap_max_requests=300_000,
        retake_budget_s=45.0,
    )


def full_plan() -> Plan:
    """The run the write-up quotes: about 20 minutes on a 2-core machine."""
    return Plan(mode="full", profile_seconds=20.0)
