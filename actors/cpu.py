"""How many decode threads each runner gets: the CPU that is really there, shared among busy runners.

llama.cpp's CPU backend (built with OpenMP here) makes every decode thread spin at each barrier
of a graph. A barrier waits for the slowest thread, so a decode is only as fast as the thread
the OS runs least. Three ways that thread ends up descheduled, and what this module does:

- **Another runner** of ours asks for the same cores: two runners that each use all the cores
  made 7 tokens/s together on a 2-core machine, 166 with one thread each (docs/runner.md). The
  scheduler splits the budget among the runners that are *busy* (:func:`share_threads`).
- **A container's CPU limit**: ``os.cpu_count()`` reports the host's cores, but a pod limited
  to one core by a CFS quota is throttled each period once its threads have used the quota.
  :func:`available_cpus` reads CPU affinity and the cgroup quota (v2 ``cpu.max``, v1
  ``cpu.cfs_quota_us``), and the default thread count never exceeds it.
- **A busy neighbour** (a browser, a build, another tenant): one foreign process on one of two
  cores cut a 2-thread decode to a third of its speed, while one thread kept 80 % of it
  (docs/benchmarks.md). :class:`ForeignLoad` measures how much CPU processes outside this
  server's tree use, and :func:`decode_budget` turns that into the threads worth running.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Collection, Hashable, Mapping
from pathlib import Path
from typing import TypeVar

import attrs

__all__ = [
    "share_threads",
    "available_cpus",
    "default_threads",
    "thread_limit",
    "cgroup_cpu_limit",
    "ForeignLoad",
    "decode_budget",
]

K = TypeVar("K", bound=Hashable)


def share_threads(
    configured: Mapping[K, int], busy: Collection[K], budget: int, pinned: Collection[K] = ()
) -> dict[K, int]:
    """Thread count for every runner in ``configured`` (its threads when loaded).

    ``busy`` are the runners with work; ``budget`` is how many threads the machine runs well at
    once (the cores this process may use, less the cores busy neighbours take). One busy runner,
    or none: each runner gets what it was configured with, capped at the budget, except the
    ``pinned`` ones (a count a user asked for), which keep theirs. Several busy: each gets an even
    share of ``budget`` (the first ones take the remainder), never more than it was configured
    with and never less than one; our own runners fighting over cores is never what anyone asked
    for. Idle runners keep their count, so a runner that wakes alone needs no change.
    """
    cap = max(1, budget)
    shares = {key: max(1, threads if key in pinned else min(threads, cap)) for key, threads in configured.items()}
    working = [key for key in configured if key in busy]
    if len(working) <= 1:
        return shares
    base, extra = divmod(cap, len(working))
    for index, key in enumerate(working):
        fair = base + (1 if index < extra else 0)
        shares[key] = max(1, min(shares[key], fair))
    return shares


# ---------------------------------------------------------------------- what the process may use
def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_dirs(proc_cgroup: str, mount: Path) -> tuple[list[Path], list[Path]]:
    """Directories (v2, v1-cpu) from this process's cgroup up to the root, innermost first."""
    v2: list[Path] = []
    v1: list[Path] = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":
            roots = [mount, mount / "unified"]
            target = v2
        elif "cpu" in controllers.split(","):
            roots = [mount / controllers, mount / "cpu", mount / "cpu,cpuacct"]
            target = v1
        else:
            continue
        for root in roots:
            if not root.is_dir():
                continue
            here = root / rel if rel else root
            while True:
                target.append(here)
                if here == root:
                    break
                here = here.parent
            break
    return v2, v1


def cgroup_cpu_limit(proc_cgroup: str | None = None, mount: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The tightest CPU quota on this process's cgroups, in cores; ``None`` when unlimited.

    Why walk up the tree: a container runtime may put the quota on a parent cgroup and the
    process in a child, and the kernel enforces every level's.
    """
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    v2, v1 = _cgroup_dirs(proc_cgroup, mount)
    limits: list[float] = []
    for d in v2:
        text = _read(d / "cpu.max")
        if text:
            quota, _, period = text.partition(" ")
            if quota != "max":
                try:
                    limits.append(int(quota) / int(period or 100000))
                except (ValueError, ZeroDivisionError):
                    pass
    for d in v1:
        quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        try:
            if quota is not None and period is not None and int(quota) > 0 and int(period) > 0:
                limits.append(int(quota) / int(period))
        except ValueError:
            pass
    return min(limits) if limits else None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def available_cpus() -> float:
    """Cores this process can use: the CPUs it may run on, capped by its cgroup's quota."""
    cpus = float(_affinity())
    limit = cgroup_cpu_limit()
    return min(cpus, limit) if limit is not None else cpus


def thread_limit() -> int:
    """The most decode threads a request may ask for: the cores this process may run on.

    More threads than cores only spin against each other at llama.cpp's barriers (``num_thread``
    10000 made 1,024 threads and 3 tokens took 16 s, issue 24). A fractional quota rounds up: a
    user who asks for every core of a 1.5-core quota gets 2.
    """
    return max(1, math.ceil(available_cpus() - 1e-9))


def default_threads() -> int:
    """Decode threads when nobody pinned a count: physical cores, within what this process may use.

    A fractional quota rounds down (1.5 cores → 1 thread): a second spinning thread would be
    throttled every period, and the barrier would wait for it.
    """
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except Exception:  # pragma: no cover - psutil is a dependency; this is belt and braces
        physical = os.cpu_count() or 1
    return max(1, min(physical, math.floor(available_cpus() + 1e-9)))


# ---------------------------------------------------------------------- busy neighbours
def _busy_seconds(cpus: Collection[int] | None) -> float:
    import psutil

    rows = psutil.cpu_times(percpu=True)
    if cpus:
        rows = [row for index, row in enumerate(rows) if index in cpus]
    return sum(r.user + r.nice + r.system + getattr(r, "irq", 0.0) + getattr(r, "softirq", 0.0) for r in rows)


@attrs.define
class ForeignLoad:
    """Cores used by processes outside this server, averaged between two samples.

    Machine-wide busy time on the CPUs this process may run on, minus the CPU time of the server
    and its runner processes (``pids``: the scheduler names its runners). Cheap — one
    ``/proc/stat`` read and one ``/proc/<pid>/stat`` per process of ours, no scan of the process
    table — so the scheduler can sample once a second without showing in the cost of a token.
    """

    pid: int = attrs.field(factory=os.getpid)
    _last: tuple[float, float] | None = attrs.field(default=None, init=False)  # (monotonic, busy)
    _cpus: frozenset[int] | None = attrs.field(default=None, init=False)
    _procs: dict = attrs.field(factory=dict, init=False)  # pid -> psutil.Process
    _spent: dict = attrs.field(factory=dict, init=False)  # pid -> CPU seconds at the last sample

    def __attrs_post_init__(self) -> None:
        try:
            self._cpus = frozenset(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._cpus = None

    def _own_seconds(self, pids: Collection[int]) -> float | None:
        """CPU seconds of ours since the last sample: the server and each named process.

        Counted per process, so a runner that exits between samples drops out cleanly. One named
        for the first time counts whole if it is younger than the sampling gap (a runner that
        just started loading a model is ours, not a neighbour); an older one makes this sample
        unknowable (``None``).
        """
        import psutil

        wanted = {self.pid, *pids}
        for gone in set(self._procs) - wanted:
            self._procs.pop(gone, None)
            self._spent.pop(gone, None)
        since = self._last[0] if self._last is not None else None
        delta, known = 0.0, True
        for pid in wanted:
            try:
                proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                t = proc.cpu_times()
                spent = t.user + t.system
                age = time.time() - proc.create_time()
            except psutil.Error:
                self._procs.pop(pid, None)
                self._spent.pop(pid, None)
                continue
            before = self._spent.get(pid)
            self._spent[pid] = spent
            if before is not None:
                delta += max(0.0, spent - before)
            elif since is not None and age <= time.monotonic() - since + 1.0:  # boot time is whole seconds
                delta += spent
            elif since is not None:
                known = False
        return delta if known else None

    def sample(self, pids: Collection[int] = ()) -> float | None:
        """Foreign cores since the previous sample (``None`` on the first one, or when unknowable)."""
        own = self._own_seconds(pids)
        now, busy = time.monotonic(), _busy_seconds(self._cpus)
        last, self._last = self._last, (now, busy)
        if last is None or own is None or now - last[0] <= 0:
            return None
        return max(0.0, ((busy - last[1]) - own) / (now - last[0]))


#: foreign load, in cores, at which a thread is given up; below the lower mark it is taken back.
#: The gap is hysteresis: a neighbour hovering at one mark must not make the threads flap.
GIVE_UP, TAKE_BACK = 0.5, 0.25


def decode_budget(cores: int, foreign: float, current: int, cpus: int | None = None) -> int:
    """Threads worth running on ``cores`` while neighbours keep ``foreign`` cores busy.

    Each core a neighbour keeps busy is one thread fewer: a spinning thread that shares its core
    with a neighbour stalls every barrier of every decode, while one thread fewer costs a
    fraction of one core's work. ``cpus`` is how many CPUs the process may run on (default
    ``cores``): neighbours fill the ones beyond ``cores`` first, so a pod with a 2-core quota on a
    64-core host is not slowed by tenants that use 30 of them. ``current`` is the budget in force;
    it is kept while the load sits between the two marks.
    """
    cores = max(1, cores)
    foreign = max(0.0, foreign - max(0, (cpus or cores) - cores))

    def leaving(mark: float) -> int:
        return max(1, min(cores, cores - math.floor(foreign + 1 - mark)))

    lower = leaving(GIVE_UP)
    if lower < current:
        return lower
    return max(min(current, cores), leaving(TAKE_BACK))
