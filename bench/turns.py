"""Single-stream decode speed of trillama and llama-server measured in turns: ``python -m bench.turns``.

Why a bench of its own: ``bench.neighbour`` must measure its subjects one after another (an
adaptive trillama beside a busy llama-server would see a neighbour and give up a thread), so a
host that speeds up or slows down between subjects moves its ratios by 10 % and more. Here both
servers are started at once and take turns, one request each per round (the order reversed every
other round), so drift hits them alike;
each is idle while the other decodes. The figure is each server's own decode rate: trillama's
``eval_count / eval_duration``, llama-server's ``timings.predicted_per_second``. Subjects:
trillama as shipped (drafts on), the same server with ``draft_max: 0``, and llama-server. The
prompt is the counting prompt of ``bench.neighbour`` (SmolLM2 keeps counting to its budget);
greedy. Re-runs itself in the bench venv, where llama-server is. Results go to
``bench/results/turns-<time>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path

import httpx

from bench import env
from bench.env import BENCH_DIR
from bench.plan import Plan
from bench.servers import RunningServer, llama_server_spec, trillama_spec

PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
SUBJECTS = ("llama-server", "trillama", "trillama-nodraft")


def _trillama_rate(client: httpx.Client, base_url: str, tokens: int, options: dict) -> float:
    r = client.post(f"{base_url}/api/generate", json={
        "model": "smollm2:135m", "prompt": PROMPT, "raw": True, "stream": False,
        "options": {"num_predict": tokens, "temperature": 0, **options}})
    r.raise_for_status()
    body = r.json()
    return body["eval_count"] / (body["eval_duration"] / 1e9)


def _llama_server_rate(client: httpx.Client, base_url: str, tokens: int) -> float:
    r = client.post(f"{base_url}/completion", json={"prompt": PROMPT, "n_predict": tokens, "temperature": 0,
                                                     "cache_prompt": True})
    r.raise_for_status()
    return float(r.json()["timings"]["predicted_per_second"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.turns", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="rounds after one warm-up round")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if Path(sys.prefix).resolve() != env.VENV_DIR.resolve():  # llama-server lives in the bench venv
        python = env.ensure()
        os.chdir(env.REPO_DIR)
        os.execv(str(python), [str(python), "-m", "bench.turns", *(sys.argv[1:] if argv is None else argv)])
    from bench.__main__ import _bundled_gguf

    plan = Plan(mode="turns", threads=args.threads, slots=4)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    logs = BENCH_DIR / "results" / f"turns-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    ls_spec, tr_spec = llama_server_spec(plan, _bundled_gguf()), trillama_spec(plan)
    rates: dict[str, list[float]] = {name: [] for name in SUBJECTS}
    with RunningServer(ls_spec, logs / "llama-server.log") as ls, RunningServer(tr_spec, logs / "trillama.log") as tr, \
            httpx.Client(timeout=300) as client:
        ls.wait_ready()
        tr.wait_ready()
        for round_ in range(args.rounds + 1):
            measure = {
                "llama-server": lambda: _llama_server_rate(client, ls_spec.base_url, args.tokens),
                "trillama": lambda: _trillama_rate(client, tr_spec.base_url, args.tokens, {}),
                "trillama-nodraft": lambda: _trillama_rate(client, tr_spec.base_url, args.tokens, {"draft_max": 0}),
            }
            order = SUBJECTS if round_ % 2 == 0 else SUBJECTS[::-1]  # no subject always goes first
            sample = {name: measure[name]() for name in order}
            if round_ == 0:
                continue  # warm-up: loads, first prefill
            for name, value in sample.items():
                rates[name].append(value)
            print(f"round {round_:2d}: " + "  ".join(f"{n} {v:6.1f}" for n, v in sample.items()), flush=True)
    medians = {name: round(statistics.median(values), 1) for name, values in rates.items()}
    print("\nmedian decode tok/s: " + "  ".join(f"{n} {v}" for n, v in medians.items()))
    for name in ("trillama", "trillama-nodraft"):
        print(f"{name} / llama-server: {medians[name] / medians['llama-server']:.2f}×")
    out = BENCH_DIR / "results" / f"turns-{stamp}.json"
    out.write_text(json.dumps({"bench": "turns", "started": stamp, "plan": plan.as_dict(), "tokens": args.tokens,
                               "rates": rates, "medians": medians}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
