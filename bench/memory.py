"""Resident memory of a server and everything it started, sampled while it is under load.

Why the whole process tree: trillama serves from one Python process and runs each model in a
runner child process, where the weights and the KV cache live; counting only the server would
flatter it. llama-server and llama-cpp-python's server are single processes, so the same rule is
fair to all. RSS counts shared pages (the mmapped GGUF, shared libraries) once per process; PSS
splits them, so both are reported and PSS is the honest total of a multi-process server.
"""

from __future__ import annotations

import threading

import attrs
import psutil

__all__ = ["MemorySampler", "MemoryStats", "tree_memory", "tree_cpu_seconds"]


@attrs.frozen
class MemoryStats:
    samples: int
    processes: int
    peak_rss_mb: float | None
    peak_pss_mb: float | None

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def tree_memory(pid: int) -> tuple[int, int, int]:
    """``(rss_bytes, pss_bytes, processes)`` of ``pid`` and its descendants; zeros if gone."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, 0
    rss = pss = count = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return rss, pss, count


class MemorySampler:
    """Samples :func:`tree_memory` on a thread between :meth:`start` and :meth:`stop`.

    A thread rather than a task: the load generator's event loop must not stall on ``/proc`` reads,
    and these reads release the GIL.
    """

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0
        self.peak_rss = 0
        self.peak_pss = 0
        self.processes = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss, count = tree_memory(self.pid)
            if count:
                self.samples += 1
                self.peak_rss = max(self.peak_rss, rss)
                self.peak_pss = max(self.peak_pss, pss)
                self.processes = max(self.processes, count)
            self._stop.wait(self.interval)

    def start(self) -> "MemorySampler":
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MemoryStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        mb = 1024 * 1024
        return MemoryStats(
            samples=self.samples, processes=self.processes,
            peak_rss_mb=round(self.peak_rss / mb, 1) if self.samples else None,
            peak_pss_mb=round(self.peak_pss / mb, 1) if self.samples else None,
        )


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (for CPU cost per token)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total
