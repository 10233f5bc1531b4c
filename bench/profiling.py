"""py-spy profiles of trillama (server and runner processes) under the 4-stream load and under the
cheap-endpoint load: the two places the issue's targets may show a shortfall.

Why py-spy: it samples a running process from outside, so trillama runs unmodified, started as a
user starts it, and ``--subprocesses`` follows into the runner processes where decoding happens.
Idle threads are left out (py-spy's default), so the counts are where CPU time goes. The profile is
taken in a separate phase after the measurements, because sampling costs CPU on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import collections
import re
import subprocess
import time
from pathlib import Path

import httpx
import structlog

from bench.cheap import run_cheap
from bench.env import VENV_DIR
from bench.plan import Plan
from bench.streams import Endpoint, run_stream
from bench.workload import stream_messages

__all__ = ["profile_under_load", "profile_cheap", "summarise_raw", "format_summary"]

log = structlog.get_logger("bench.profile")

_PROCESS = re.compile(r"^process (\d+):\"?(.*?)\"?$")


def _start_spy(pid: int, seconds: float, raw_path: Path) -> subprocess.Popen:
    py_spy = VENV_DIR / "bin" / "py-spy"
    cmd = [str(py_spy), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
           "--rate", "100", "--duration", str(max(1, int(seconds))), "--format", "raw",
           "--output", str(raw_path)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish_spy(spy: subprocess.Popen, raw_path: Path, extra: dict) -> dict:
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if spy.returncode != 0 or not raw_path.exists():
        message = err.decode(errors="replace").strip()[-500:]
        log.warning("profile_failed", returncode=spy.returncode, error=message)
        return {"ok": False, "error": message}
    summary = summarise_raw(raw_path.read_text())
    summary.update({"ok": True, "raw": str(raw_path), **extra})
    return summary


async def profile_under_load(pid: int, endpoint: Endpoint, plan: Plan, raw_path: Path,
                             streams: int = 4) -> dict:
    """Rounds of ``streams`` simultaneous streams while py-spy samples the server and its runner."""
    spy = _start_spy(pid, plan.profile_seconds, raw_path)
    deadline = time.perf_counter() + plan.profile_seconds + 60
    rounds = 0
    async with httpx.AsyncClient(timeout=plan.request_timeout) as client:
        while spy.poll() is None and time.perf_counter() < deadline and rounds < 200:
            await asyncio.gather(*(
                run_stream(client, endpoint, stream_messages("profile", rounds, i), plan.max_tokens)
                for i in range(streams)
            ))
            rounds += 1
    return _finish_spy(spy, raw_path, {"load": f"{streams} concurrent streams", "rounds": rounds})


async def profile_cheap(pid: int, port: int, path: str, plan: Plan, raw_path: Path) -> dict:
    """The cheap-endpoint load (``plan.cheap_connections`` connections) under py-spy."""
    seconds = max(3.0, plan.profile_seconds / 2)
    spy = _start_spy(pid, seconds, raw_path)
    result = await run_cheap("127.0.0.1", port, path, connections=plan.cheap_connections, seconds=seconds,
                             max_requests=plan.cheap_max_requests, warmup=0.0)
    return _finish_spy(spy, raw_path, {"load": f"GET {path} from {plan.cheap_connections} connections",
                                       "rps_while_profiled": round(result.rps, 1)})


def summarise_raw(text: str, top: int = 15) -> dict:
    """Per process: total samples, top functions by self and by inclusive samples."""
    per_proc: dict[str, dict] = {}
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        proc = "?"
        # A child's stacks start with its parent's "process" frame, then its own.
        while frames and (m := _PROCESS.match(frames[0])):
            proc = _label(m.group(1), m.group(2))
            frames = frames[1:]
        frames = [f for f in frames if not f.startswith("thread ")]
        entry = per_proc.setdefault(proc, {"samples": 0, "self": collections.Counter(),
                                           "inclusive": collections.Counter(), "lines": collections.Counter(),
                                           "packages": collections.Counter()})
        entry["samples"] += count
        if frames:
            entry["lines"][frames[-1]] += count
            entry["packages"][_package(frames[-1])] += count
            functions = [_function(f) for f in frames]
            entry["self"][functions[-1]] += count
            for function in set(functions):
                entry["inclusive"][function] += count
    out = {}
    for proc, entry in per_proc.items():
        total = entry["samples"] or 1

        def pct(counter: collections.Counter) -> list:
            return [(f, n, round(100 * n / total, 1)) for f, n in counter.most_common(top)]

        out[proc] = {"samples": entry["samples"], "top_self": pct(entry["self"]),
                     "top_inclusive": pct(entry["inclusive"]), "top_lines": pct(entry["lines"]),
                     "self_by_package": pct(entry["packages"])}
    return {"processes": out}


def _package(frame: str) -> str:
    """``wrapper (trio/_socket.py:476)`` → ``trio``; files at the top level are the standard library."""
    m = re.search(r"\(([^():]+)(?::\d+)?\)$", frame)
    if not m:
        return "?"
    path = m.group(1)
    if path.startswith("<"):
        return "python"
    return path.split("/", 1)[0] if "/" in path else "stdlib"


def _function(frame: str) -> str:
    """``step (actors/runner/engine.py:366)`` → ``step (actors/runner/engine.py)``: one entry per function."""
    return re.sub(r":\d+\)$", ")", frame)


def _label(pid: str, cmdline: str) -> str:
    kind = "runner" if "trillama.actors.runner" in cmdline else ("server" if "trillama" in cmdline else "other")
    return f"{kind} (pid {pid})"


def format_summary(summary: dict, top: int = 10) -> str:
    """A text excerpt for the report and the docs."""
    lines = []
    for proc, entry in summary.get("processes", {}).items():
        lines.append(f"{proc}: {entry['samples']} samples (100 Hz, idle excluded)")
        if entry.get("self_by_package"):
            lines.append("  self by package: " + ", ".join(f"{p} {pct:.0f}%" for p, _, pct in entry["self_by_package"][:8]))
        lines.append("  self%   function")
        for frame, _, pct in entry["top_self"][:top]:
            lines.append(f"  {pct:5.1f}   {frame}")
        lines.append("  incl%   function")
        for frame, _, pct in entry["top_inclusive"][:top]:
            lines.append(f"  {pct:5.1f}   {frame}")
        lines.append("  self%   line")
        for frame, _, pct in entry.get("top_lines", [])[:3]:
            lines.append(f"  {pct:5.1f}   {frame}")
    return "\n".join(lines)
