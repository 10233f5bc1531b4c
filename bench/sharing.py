"""Two models busy at once: does the second model cost the first its speed?

``python -m bench.sharing`` (the product's Python is enough: no peers are involved). Why a
separate benchmark: the main suite measures one model against peer servers; this one measures
what happens when *two* models generate at the same time, which is where llama.cpp's spinning
OpenMP threads make runners that each use every core collapse (docs/runner.md, "Threads and CPU").

Three numbers from the same run, all SmolLM2-135M generating ``--tokens`` tokens per stream:

* **one alone** — trillama, one model, one stream (the baseline);
* **two, shared** — trillama, two models (two runner processes), one stream each at once: the
  scheduler splits the thread budget between the busy runners (actors/cpu.py);
* **two, unshared** — two runner processes started directly, each with every thread, decoding
  at once: one runner per model, each with all the cores — what a server without the sharing
  does, Ollama included.

Target: two shared ≥ 0.9 × one alone (a second busy model does not make the machine slower).
Printed as ratios; written to ``bench/results/sharing-<time>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from contextlib import AsyncExitStack, aclosing

import httpx
import trio

from bench.env import BENCH_DIR
from bench.plan import Plan
from bench.servers import RunningServer, trillama_spec

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # SmolLM2 keeps counting: every stream runs to its budget
SECOND = "smollm2-b:135m"  # the same weights under another name and slot count: a second runner


async def _stream(client: httpx.AsyncClient, model: str, tokens: int) -> int:
    body = {"model": model, "prompt": PROMPT, "raw": True, "stream": False,
            "options": {"num_predict": tokens, "temperature": 0}}
    r = await client.post("/api/generate", json=body)
    r.raise_for_status()
    return int(r.json()["eval_count"])


async def _rate(run_streams) -> float:
    """Tokens per second of the streams ``run_streams`` starts at once (wall clock of all)."""
    counts: list[int] = []
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for stream in run_streams:
            async def one(stream=stream) -> None:
                counts.append(await stream())
            nursery.start_soon(one)
    return sum(counts) / (time.perf_counter() - started)


async def _server_rates(base_url: str, tokens: int, repeats: int) -> tuple[list[float], list[float]]:
    alone, shared = [], []
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        r = await client.post("/api/create", json={"model": SECOND, "from": "smollm2:135m",
                                                   "parameters": {"num_parallel": 2}, "stream": False})
        r.raise_for_status()
        for model in ("smollm2:135m", SECOND):  # load and warm both runners
            await _stream(client, model, 8)
        for _ in range(repeats):  # alternate, so drift in the machine hits both alike
            alone.append(await _rate([lambda: _stream(client, "smollm2:135m", tokens)]))
            shared.append(await _rate([lambda: _stream(client, "smollm2:135m", tokens),
                                       lambda: _stream(client, SECOND, tokens)]))
    return alone, shared


async def _unshared_rates(threads: int, tokens: int, repeats: int) -> list[float]:
    from trillama.actors.runner.client import Done, GenerateJob, Runner, RunnerSpec

    async def generate(runner: Runner, job_id: str, n: int) -> int:
        job = GenerateJob(prompt=PROMPT, temperature=0, num_predict=n)
        async with aclosing(runner.run_job(job_id, job)) as events:
            async for event in events:
                if isinstance(event, Done):
                    return event.eval_count
        return 0

    from trillama.bundled import bundled_gguf_path

    rates = []
    gguf = bundled_gguf_path()
    assert gguf is not None, "the bundled model is not installed: run `make bootstrap` first"
    async with AsyncExitStack() as stack:
        runners = [await stack.enter_async_context(Runner.open(
            RunnerSpec(model_path=gguf, n_ctx=4096, n_parallel=1, n_threads=threads), forward_stderr=False))
            for _ in range(2)]
        for i, runner in enumerate(runners):
            await generate(runner, f"warm-{i}", 8)
        for r in range(repeats):
            rates.append(await _rate([
                lambda runner=runner, i=i: generate(runner, f"job-{r}-{i}", tokens)
                for i, runner in enumerate(runners)]))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sharing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="TRILLAMA_NUM_THREADS and the unshared runners' threads")
    args = parser.parse_args(argv)

    plan = Plan(mode="sharing", threads=args.threads, slots=1)
    spec = trillama_spec(plan)
    results_dir = BENCH_DIR / "results"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with RunningServer(spec, results_dir / f"sharing-{stamp}-trillama.log") as server:
        server.wait_ready()
        alone, shared = trio.run(_server_rates, spec.base_url, args.tokens, args.repeats)
    unshared = trio.run(_unshared_rates, args.threads, args.tokens, args.repeats)

    med = {name: statistics.median(v) for name, v in (("one_alone", alone), ("two_shared", shared),
                                                       ("two_unshared", unshared))}
    report = {
        "when": stamp, "threads": args.threads, "tokens": args.tokens, "repeats": args.repeats,
        "tokens_per_s": {"one_alone": alone, "two_shared": shared, "two_unshared": unshared},
        "median_tokens_per_s": {k: round(v, 1) for k, v in med.items()},
        "ratios": {
            "two_shared / one_alone": round(med["two_shared"] / med["one_alone"], 2),
            "two_unshared / one_alone": round(med["two_unshared"] / med["one_alone"], 2),
            "two_shared / two_unshared": round(med["two_shared"] / med["two_unshared"], 1),
        },
    }
    report["target_met"] = report["ratios"]["two_shared / one_alone"] >= 0.9
    path = results_dir / f"sharing-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    for name, value in report["median_tokens_per_s"].items():
        print(f"{name:>14}: {value:7.1f} tok/s (all streams together, median of {args.repeats})")
    for name, value in report["ratios"].items():
        print(f"{name:>28}: {value}×")
    print(f"target (two shared ≥ 0.9 × one alone): {'met' if report['target_met'] else 'MISSED'}; {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
