"""A busy neighbour and a CPU-limited container: do the decode threads fit the CPU that is there?

``python -m bench.neighbour`` (re-runs itself in the bench's venv for llama-server). Why: llama.cpp's
decode threads spin at every barrier and wait for the slowest, so one foreign process busy on one
of two cores costs a 2-thread decode about two thirds of its speed, while one thread would keep
most of it (issue 14). This run measures, side by side, SmolLM2-135M, greedy, ``--tokens`` per
stream, 1 and 4 streams:

* **quiet** — nothing else running: trillama as shipped (threads fitted to the CPU), trillama with
  the count pinned (``TRILLAMA_NUM_THREADS=2``: what it did before), llama-server ``-t 2``;
* **hog** — the same three beside a one-core CPU hog the bench starts (``while True: pass``);
* **container** — trillama as shipped, started (a) in a cgroup with a one-core CFS quota that the
  bench creates (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``; where neither is writable the scenario
  is skipped and the report says so), (b) pinned to one CPU by affinity (``sched_setaffinity``),
  and (c) in the same quota with ``TRILLAMA_NUM_THREADS=2`` (a server that trusts the core count).

Targets (issue 14): under the hog, trillama keeps ≥ 0.70 of its quiet throughput and makes
≥ 2× llama-server's; quiet, trillama as shipped ≥ 0.97× the pinned count; in the quota,
≥ 0.9× the affinity figure. Printed as ratios; written to ``bench/results/neighbour-<time>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import attrs
import httpx
import trio

from bench import env
from bench.plan import Plan
from bench.servers import RunningServer, ServerSpec, llama_server_spec, trillama_spec

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # SmolLM2 keeps counting: every stream runs to its budget


# ---------------------------------------------------------------------- load
async def _one(client: httpx.AsyncClient, subject: str, tokens: int) -> int:
    if subject == "llama-server":
        r = await client.post("/completion", json={"prompt": PROMPT, "n_predict": tokens, "temperature": 0,
                                                   "cache_prompt": True})
        r.raise_for_status()
        return int(r.json()["tokens_predicted"])
    r = await client.post("/api/generate", json={"model": "smollm2:135m", "prompt": PROMPT, "raw": True,
                                                 "stream": False,
                                                 "options": {"num_predict": tokens, "temperature": 0}})
    r.raise_for_status()
    return int(r.json()["eval_count"])


async def _rates(base_url: str, subject: str, streams: int, tokens: int, repeats: int) -> list[float]:
    """Aggregate tokens/s of ``streams`` streams started at once, ``repeats`` times."""
    out = []
    async with httpx.AsyncClient(base_url=base_url, timeout=900) as client:
        await _one(client, subject, 8)  # load and warm
        await trio.sleep(2.5)  # two samples of the scheduler's CPU watch see the scenario's load
        for _ in range(repeats):
            counts: list[int] = []
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    async def one() -> None:
                        counts.append(await _one(client, subject, tokens))
                    nursery.start_soon(one)
            out.append(sum(counts) / (time.perf_counter() - started))
    return out


# ---------------------------------------------------------------------- the neighbour and the limits
@contextmanager
def cpu_hog() -> Iterator[subprocess.Popen]:
    """One process that keeps one core busy for as long as the block runs."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield hog
    finally:
        hog.kill()
        hog.wait()


@attrs.frozen
class Quota:
    """A cgroup with a CPU quota that a started process joins before it execs."""

    procs: Path  # the cgroup's cgroup.procs
    kind: str

    def join(self) -> None:
        self.procs.write_text(str(os.getpid()))


@contextmanager
def one_core_quota() -> Iterator[Quota | None]:
    """A fresh cgroup limited to one core (100 ms per 100 ms); ``None`` where none can be made."""
    name = f"trillama-bench-{os.getpid()}"
    made: Path | None = None
    quota: Quota | None = None
    try:
        v2 = Path("/sys/fs/cgroup")
        if (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.subtree_control").read_text():
            made = v2 / name
            made.mkdir()
            (made / "cpu.max").write_text("100000 100000")
            quota = Quota(made / "cgroup.procs", "cgroup v2 cpu.max = 100000 100000")
        elif (Path("/sys/fs/cgroup/cpu") / "cpu.cfs_quota_us").exists():
            made = Path("/sys/fs/cgroup/cpu") / name
            made.mkdir()
            (made / "cpu.cfs_period_us").write_text("100000")
            (made / "cpu.cfs_quota_us").write_text("100000")
            quota = Quota(made / "cgroup.procs", "cgroup v1 cpu.cfs_quota_us = 100000 / 100000")
    except OSError:
        quota = None
    try:
        yield quota
    finally:
        if made is not None:
            try:
                made.rmdir()
            except OSError:
                pass


def _with_env(spec: ServerSpec, **changes: str | None) -> ServerSpec:
    env_ = {k: v for k, v in spec.env}
    for key, value in changes.items():
        if value is None:
            env_.pop(key, None)
        else:
            env_[key] = value
    return attrs.evolve(spec, env=tuple(env_.items()))


def _measure(spec: ServerSpec, subject: str, log_dir: Path, args, before_exec=None) -> dict[int, float]:
    with RunningServer(spec, log_dir / f"{spec.name}-{spec.port}.log", before_exec) as server:
        server.wait_ready()
        return {n: statistics.median(trio.run(_rates, spec.base_url, subject, n, args.tokens, args.repeats))
                for n in args.streams}


def _subjects(plan: Plan, gguf: str) -> dict[str, Callable[[], ServerSpec]]:
    return {
        "trillama": lambda: _with_env(trillama_spec(plan), TRILLAMA_NUM_THREADS=None),
        "trillama-pinned": lambda: trillama_spec(plan),
        "llama-server": lambda: llama_server_spec(plan, gguf),
    }


def _pin_one_cpu() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def run(args) -> dict:
    from bench.__main__ import _bundled_gguf

    gguf = _bundled_gguf()
    plan = Plan(mode="neighbour", threads=args.threads, slots=max(args.streams))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    logs = env.BENCH_DIR / "results" / f"neighbour-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    subjects = _subjects(plan, gguf)
    tps: dict[str, dict[str, dict[int, float]]] = {"quiet": {}, "hog": {}, "container": {}}
    for name, make in subjects.items():
        tps["quiet"][name] = _measure(make(), name, logs, args)
        with cpu_hog():
            tps["hog"][name] = _measure(make(), name, logs, args)
    container_note = "skipped: no writable cgroup with a cpu controller"
    with one_core_quota() as quota:
        tps["container"]["affinity-1cpu"] = _measure(subjects["trillama"](), "trillama", logs, args, _pin_one_cpu)
        if quota is not None:
            container_note = quota.kind
            tps["container"]["quota-1core"] = _measure(subjects["trillama"](), "trillama", logs, args, quota.join)
            tps["container"]["quota-1core-2threads"] = _measure(subjects["trillama-pinned"](), "trillama", logs,
                                                                args, quota.join)

    ratios: dict[str, float] = {}
    for n in args.streams:
        q, h = tps["quiet"], tps["hog"]
        ratios[f"{n} streams: trillama hog / quiet"] = round(h["trillama"][n] / q["trillama"][n], 2)
        ratios[f"{n} streams: trillama / llama-server, hog"] = round(h["trillama"][n] / h["llama-server"][n], 2)
        ratios[f"{n} streams: trillama / pinned, quiet"] = round(q["trillama"][n] / q["trillama-pinned"][n], 2)
        ratios[f"{n} streams: llama-server hog / quiet"] = round(h["llama-server"][n] / q["llama-server"][n], 2)
        if "quota-1core" in tps["container"]:
            c = tps["container"]
            ratios[f"{n} streams: quota / affinity"] = round(c["quota-1core"][n] / c["affinity-1cpu"][n], 2)
            ratios[f"{n} streams: quota / quota with 2 threads"] = round(
                c["quota-1core"][n] / c["quota-1core-2threads"][n], 2)
    targets = {}
    for n in args.streams:
        targets[f"{n} streams: hog ≥ 0.70 × quiet"] = ratios[f"{n} streams: trillama hog / quiet"] >= 0.70
        targets[f"{n} streams: ≥ 2 × llama-server under the hog"] = ratios[f"{n} streams: trillama / llama-server, hog"] >= 2.0
        targets[f"{n} streams: quiet ≥ 0.97 × pinned"] = ratios[f"{n} streams: trillama / pinned, quiet"] >= 0.97
        if f"{n} streams: quota / affinity" in ratios:
            targets[f"{n} streams: quota ≥ 0.9 × affinity"] = ratios[f"{n} streams: quota / affinity"] >= 0.9
    return {"when": stamp, "tokens": args.tokens, "repeats": args.repeats, "threads": args.threads,
            "container": container_note,
            "tokens_per_s": {s: {k: {str(n): round(v, 1) for n, v in d.items()} for k, d in by.items()}
                             for s, by in tps.items()},
            "ratios": ratios, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.neighbour", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="llama-server's -t and the pinned trillama's count")
    parser.add_argument("--streams", type=lambda s: tuple(int(x) for x in s.split(",")), default=(1, 4))
    args = parser.parse_args(argv)
    if Path(sys.prefix).resolve() != env.VENV_DIR.resolve():
        python = env.ensure()
        os.chdir(env.REPO_DIR)
        os.execv(str(python), [str(python), "-m", "bench.neighbour", *argv])
    report = run(args)
    path = env.BENCH_DIR / "results" / f"neighbour-{report['when']}.json"
    path.write_text(json.dumps(report, indent=2))
    for scenario, by in report["tokens_per_s"].items():
        for subject, figures in by.items():
            print(f"{scenario:>9} {subject:>22}: " + ", ".join(f"{n} streams {v:6.1f} tok/s" for n, v in figures.items()))
    for name, value in report["ratios"].items():
        print(f"{name:>45}: {value}×")
    for name, met in report["targets"].items():
        print(f"target {name}: {'met' if met else 'MISSED'}")
    print(f"container limit: {report['container']}; {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
