"""Agent-shaped traces against trillama (with and without its prompt cache) and llama-server:
``python -m bench.agents`` (issue 22).

What coding agents send: a long system-and-tools prefix shared by every session (Claude Code,
Codex and opencode resend 6k-20k tokens of it on every turn), several sessions at once, each turn
adding 300-2,000 tokens of history, a short side request beside each turn (a title, a summary),
and now and then an edit in the middle of the history (old tool results cleared). The trace here
is synthetic text of those shapes, the same for every subject (seeded), scaled by ``--scale`` (1.0
is the real size: a 20k-token prefix).

Subjects, one GGUF (gemma3:270m), the same slots, context per slot, threads and batch size:

* ``trillama`` — as shipped (prefixes shared across slots, the prompt cache);
* ``trillama-nocache`` — ``TRILLAMA_PROMPT_CACHE=0``: each slot reuses only its own tokens;
* ``llama-server`` — its default prompt cache (``--cache-ram``), ``--cache-reuse 256``.

The subjects take turns trace by trace (the order rotates every round), so load from other
processes on the machine hits them alike; ``uptime`` is recorded before each trace. Reported per
subject: prompt tokens computed (trillama: ``/metrics``; llama-server: each answer's
``timings.prompt_n``), TTFT p50/p95 of first turns and of later turns, the trace's wall time,
the peak RSS of the server's process tree. Two short phases measure prefill scheduling: 4
concurrent short requests (TTFT p50/p95) and 2 concurrent long distinct prompts (aggregate prompt
tokens/s). Greedy decoding everywhere: trillama's answers with and without the cache are compared
request by request. Results: ``bench/results/agents-<time>.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
import httpx
import psutil

from bench import env
from bench.env import BENCH_DIR
from bench.plan import Plan
from bench.servers import RunningServer, ServerSpec, llama_server_spec, trillama_spec
from bench.stats import percentile

SUBJECTS = ("trillama", "trillama-nocache", "llama-server")
GEMMA = Path.home() / ".cache" / "trillama-tests" / "gemma-3-270m-q4_k_m.gguf"
VOCAB = ("the file function returns value when parse tool call error path list read write edit test "
         "module class import config request response stream token cache slot model prompt output "
         "input string number array object field type check run build commit branch merge diff line "
         "user system agent session turn result status done fail retry timeout server client").split()
#: gemma3's tokenizer makes about this many tokens of a word of VOCAB with its space
TOKENS_PER_WORD = 1.0


def text(seed: int | str, n_tokens: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(max(1, int(n_tokens / TOKENS_PER_WORD))))


@attrs.frozen
class Trace:
    """The requests of one run, as data: every subject replays exactly these."""

    prefix_tokens: int
    sessions: int
    turns: int
    turn_tokens: tuple[int, int]
    side_tokens: int
    edit_every: int
    max_tokens: int
    seed: int = 22

    def system(self) -> str:
        return "You are a coding agent. Tools: " + text(self.seed, self.prefix_tokens)

    def turn_text(self, session: int, turn: int) -> str:
        rng = random.Random(self.seed * 1000 + session * 100 + turn)
        lo, hi = self.turn_tokens
        return f"Session {session} turn {turn}: " + text(rng.randrange(1 << 30), rng.randint(lo, hi))

    def side_text(self, session: int, turn: int) -> str:
        return f"Write a five-word title for: {text(self.seed + 7 * session + 13 * turn, self.side_tokens)}"


def scaled_trace(scale: float, sessions: int, turns: int, max_tokens: int) -> Trace:
    return Trace(prefix_tokens=int(20_000 * scale), sessions=sessions, turns=turns,
                 turn_tokens=(int(300 * scale), int(2_000 * scale)), side_tokens=max(40, int(200 * scale)),
                 edit_every=3, max_tokens=max_tokens)


# ----------------------------------------------------------------------------------- requests
@attrs.define
class Answer:
    text: str
    ttft: float
    total: float
    computed: int | None  # prompt tokens the server evaluated (None: it did not say)
    prompt: int | None


def chat(client: httpx.Client, base: str, model: str, messages: list[dict], max_tokens: int) -> Answer:
    """One streamed chat completion; TTFT is the time to the first content chunk.

    A pooled connection the server closed while idle ("disconnected without sending a response",
    llama-server does so) is retried once on a new one.
    """
    try:
        return _chat(client, base, model, messages, max_tokens)
    except httpx.RemoteProtocolError:
        return _chat(client, base, model, messages, max_tokens)


def _chat(client: httpx.Client, base: str, model: str, messages: list[dict], max_tokens: int) -> Answer:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "seed": 1,
            "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft = None
    parts: list[str] = []
    computed = prompt = None
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - start
                    parts.append(piece)
            timings = chunk.get("timings")
            if timings:  # llama-server
                computed, prompt = timings.get("prompt_n"), (timings.get("prompt_n") or 0) + (timings.get("cache_n") or 0)
            usage = chunk.get("usage")
            if usage and computed is None:
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                prompt = usage.get("prompt_tokens")
                computed = prompt - cached if cached is not None and prompt is not None else None
    total = time.perf_counter() - start
    return Answer("".join(parts), ttft if ttft is not None else total, total, computed, prompt)


def run_trace(base: str, model: str, trace: Trace) -> dict:
    """All sessions at once, each turn with its side request beside it; returns the measurements."""
    system = trace.system()
    answers: dict[str, Answer] = {}
    lock = threading.Lock()

    def session(s: int, client: httpx.Client) -> None:
        history: list[dict] = [{"role": "system", "content": system}]
        for t in range(trace.turns):
            history.append({"role": "user", "content": trace.turn_text(s, t)})
            if t and t % trace.edit_every == 0 and len(history) > 4:
                # an agent clearing an old tool result in the middle of the history
                history[2] = {"role": "user", "content": "[tool result cleared]"}
            side = [{"role": "system", "content": "You write short titles."},
                    {"role": "user", "content": trace.side_text(s, t)}]
            with cf.ThreadPoolExecutor(1) as pool:
                side_future = pool.submit(chat, client, base, model, side, 8)
                main = chat(client, base, model, list(history), trace.max_tokens)
                side_answer = side_future.result()
            history.append({"role": "assistant", "content": main.text})
            with lock:
                answers[f"s{s}t{t}"] = main
                answers[f"s{s}t{t}-side"] = side_answer

    start = time.perf_counter()
    with httpx.Client(timeout=3600) as client, cf.ThreadPoolExecutor(trace.sessions) as pool:
        for future in [pool.submit(session, s, client) for s in range(trace.sessions)]:
            future.result()
    wall = time.perf_counter() - start
    first = [a.ttft for k, a in answers.items() if k.endswith("t0")]
    later = [a.ttft for k, a in answers.items() if "side" not in k and not k.endswith("t0")]
    side = [a.ttft for k, a in answers.items() if "side" in k]
    firsts = [a for k, a in answers.items() if k.endswith("t0")]
    return {"wall_s": wall, "ttft_first": summary(first), "ttft_later": summary(later), "ttft_side": summary(side),
            # the sessions' first turns: all share the prefix; computed once, this is ~1x one prompt
            "first_turns_computed": sum(a.computed or 0 for a in firsts),
            "first_turn_prompt": min((a.prompt or 0) for a in firsts) if firsts else 0,
            "computed_from_answers": sum(a.computed or 0 for a in answers.values()),
            "prompt_tokens": sum(a.prompt or 0 for a in answers.values()),
            "texts": {k: a.text for k, a in answers.items()}}


def short_burst(base: str, model: str, n: int, tokens: int, nonce: str) -> list[float]:
    """``n`` distinct short requests at once; their TTFTs."""
    msgs = [[{"role": "user", "content": f"{nonce} {i}: " + text(f"{nonce} {i}", tokens)}] for i in range(n)]
    with httpx.Client(timeout=600) as client, cf.ThreadPoolExecutor(n) as pool:
        return [a.ttft for a in pool.map(lambda m: chat(client, base, model, m, 4), msgs)]


def long_pair(base: str, model: str, tokens: int, nonce: str) -> float:
    """Two distinct long prompts at once: aggregate prompt tokens per second until both first tokens."""
    msgs = [[{"role": "user", "content": f"{nonce} {i}: " + text(f"{nonce} {i} long", tokens)}]
            for i in range(2)]
    with httpx.Client(timeout=3600) as client, cf.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda m: chat(client, base, model, m, 1), msgs))
    elapsed = max(a.ttft for a in answers)
    return sum(a.prompt or tokens for a in answers) / elapsed


def summary(values: list[float]) -> dict:
    """p50 (the median) and p95 (nearest rank, as the rest of the bench reports it)."""
    if not values:
        return {}
    return {"n": len(values), "p50": statistics.median(values), "p95": percentile(values, 95)}


# ----------------------------------------------------------------------------------- subjects
def _cpu_has_amx() -> bool:
    try:
        return any(line.startswith("flags") and " amx_tile" in line for line in open("/proc/cpuinfo"))
    except OSError:
        return False


def subjects(plan: Plan) -> dict[str, ServerSpec]:
    tr = trillama_spec(plan)
    tr = attrs.evolve(tr, model="gemma3:270m", env=tr.env + (("TRILLAMA_BUNDLED_MODEL", "0"),))
    off = trillama_spec(plan)
    off = attrs.evolve(off, name="trillama-nocache", model="gemma3:270m",
                       env=off.env + (("TRILLAMA_BUNDLED_MODEL", "0"), ("TRILLAMA_PROMPT_CACHE", "0")))
    ls = llama_server_spec(plan, str(GEMMA))
    argv = list(ls.argv) + ["--cache-reuse", "256", "--metrics"]
    if _cpu_has_amx():
        # trillama's runner loads without extra weight buffers on AMX CPUs (ggml's AMX kernels fault
        # there); llama-server the same, or it dies with SIGILL on its first decode.
        argv.append("--no-repack")
    ls = attrs.evolve(ls, argv=tuple(argv), model="gemma3:270m")
    return {"trillama": tr, "trillama-nocache": off, "llama-server": ls}


def create_gemma(base: str) -> None:
    """Put gemma3:270m into a fresh trillama store through its API (blob upload, create)."""
    data_digest = hashlib.sha256()
    with open(GEMMA, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            data_digest.update(block)
    digest = "sha256:" + data_digest.hexdigest()
    with httpx.Client(timeout=600) as client:
        with open(GEMMA, "rb") as fh:
            client.post(f"{base}/api/blobs/{digest}", content=fh).raise_for_status()
        r = client.post(f"{base}/api/create", json={"model": "gemma3:270m", "files": {GEMMA.name: digest},
                                                     "stream": False})
        r.raise_for_status()


def computed_tokens(name: str, base: str) -> int | None:
    """trillama's own count of prompt tokens it evaluated (``/metrics``); None for llama-server."""
    if not name.startswith("trillama"):
        return None
    total = 0.0
    for line in httpx.get(f"{base}/metrics", timeout=30).text.splitlines():
        if line.startswith("trillama_prompt_tokens_total{") and 'kind="computed"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


class PeakRss:
    """Samples the RSS of a process and its children every 0.5 s; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            self._stop.wait(0.5)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agents", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.1, help="1.0: a 20k-token prefix, turns of 300-2,000 tokens")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="traces per subject (subjects take turns)")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens each turn generates")
    parser.add_argument("--threads", type=int, default=2,
                        help="for every subject; 1 on a machine others keep busy (OpenMP's spinning threads "
                             "collapse there: a 2-thread decode of gemma3 took 1.2-4.6 s, 1 thread 50-240 ms)")
    parser.add_argument("--ctx", type=int, default=32768, help="context per slot")
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--phases", default="trace,prefill", help="trace (the agent trace), prefill (4 short "
                        "concurrent requests, 2 long ones)")
    parser.add_argument("--burst-tokens", type=int, default=150, help="prompt tokens of each short request")
    parser.add_argument("--long-tokens", type=int, default=2000, help="prompt tokens of each long request")
    args = parser.parse_args(argv)
    if Path(sys.prefix).resolve() != env.VENV_DIR.resolve():  # llama-server lives in the bench venv
        python = env.ensure()
        os.chdir(env.REPO_DIR)
        os.execv(str(python), [str(python), "-m", "bench.agents", *(sys.argv[1:] if argv is None else argv)])
    from bench.__main__ import _terminate

    signal.signal(signal.SIGTERM, _terminate)  # unwind, so every started server is stopped
    names = [n for n in args.subjects.split(",") if n]
    plan = Plan(mode="agents", threads=args.threads, slots=4, ctx_per_slot=args.ctx, flash_attn=True)
    trace = scaled_trace(args.scale, args.sessions, args.turns, args.max_tokens)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    logs = BENCH_DIR / "results" / f"agents-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    specs = {n: s for n, s in subjects(plan).items() if n in names}
    results: dict[str, dict] = {n: {"traces": [], "burst": [], "long": []} for n in specs}
    servers = {n: RunningServer(s, logs / f"{n}.log") for n, s in specs.items()}
    try:
        for name, server in servers.items():
            server.__enter__()
            server.wait_ready()
            if name.startswith("trillama"):
                create_gemma(server.spec.base_url)
            chat(httpx.Client(timeout=600), server.spec.base_url, "gemma3:270m",
                 [{"role": "user", "content": "warm up"}], 2)  # load the model
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[: round_ % len(names)]
            for name in order if "trace" in args.phases else ():
                server = servers[name]
                base = server.spec.base_url
                load = uptime()
                before = computed_tokens(name, base)
                with PeakRss(server.pid) as rss:
                    # a fresh trace each round (another seed): nothing of the last round is reused
                    measured = run_trace(base, "gemma3:270m", attrs.evolve(trace, seed=22 + round_))
                after = computed_tokens(name, base)
                measured["computed"] = (after - before) if before is not None else measured["computed_from_answers"]
                measured["peak_rss"] = rss.peak
                measured["uptime"] = load
                results[name]["traces"].append(measured)
                print(f"round {round_} {name}: wall {measured['wall_s']:.1f}s computed {measured['computed']} "
                      f"ttft first p50 {measured['ttft_first'].get('p50', 0):.2f}s later p50 "
                      f"{measured['ttft_later'].get('p50', 0):.2f}s rss {rss.peak / 2**20:.0f} MiB  [{load}]", flush=True)
            for name in order if "prefill" in args.phases else ():
                base = servers[name].spec.base_url
                burst = short_burst(base, "gemma3:270m", 4, args.burst_tokens, f"burst {round_} {name}")
                pair = long_pair(base, "gemma3:270m", args.long_tokens, f"long {round_} {name}")
                results[name]["burst"].extend(burst)
                results[name]["long"].append(pair)
                print(f"round {round_} {name}: 4 short TTFT {[round(x, 2) for x in burst]}  "
                      f"2 long prefill {pair:.0f} tok/s  [{uptime()}]", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    report = summarise(results, trace)
    out = BENCH_DIR / "results" / f"agents-{stamp}.json"
    out.write_text(json.dumps({"bench": "agents", "started": stamp, "plan": plan.as_dict(), "trace": attrs.asdict(trace),
                               "scale": args.scale, "results": results, "summary": report}, indent=2))
    print(json.dumps(report, indent=2))
    print(f"written: {out}")
    return 0


def summarise(results: dict[str, dict], trace: Trace) -> dict:
    out: dict[str, dict] = {}
    for name, r in results.items():
        traces = r["traces"]
        if not traces:
            out[name] = {"burst_ttft": summary(r["burst"]),
                         "long_pair_tok_s": statistics.median(r["long"]) if r["long"] else None}
            continue
        out[name] = {
            "computed_median": statistics.median(t["computed"] for t in traces),
            "prompt_tokens": statistics.median(t["prompt_tokens"] for t in traces),
            "wall_median_s": statistics.median(t["wall_s"] for t in traces),
            "first_turns_computed_over_one_prompt": statistics.median(
                t["first_turns_computed"] / max(1, t["first_turn_prompt"]) for t in traces),
            "ttft_first_p50": statistics.median(t["ttft_first"]["p50"] for t in traces),
            "ttft_first_p95": statistics.median(t["ttft_first"]["p95"] for t in traces),
            "ttft_later_p50": statistics.median(t["ttft_later"]["p50"] for t in traces),
            "ttft_later_p95": statistics.median(t["ttft_later"]["p95"] for t in traces),
            "ttft_side_p50": statistics.median(t["ttft_side"]["p50"] for t in traces),
            "peak_rss_mib": max(t["peak_rss"] for t in traces) / 2**20,
            "burst_ttft": summary(r["burst"]),
            "long_pair_tok_s": statistics.median(r["long"]) if r["long"] else None,
        }
    base = out.get("llama-server")
    for name, row in out.items():
        if base and name != "llama-server":
            if "wall_median_s" in row and "wall_median_s" in base:
                row["wall_ratio_vs_llama_server"] = base["wall_median_s"] / row["wall_median_s"]
                row["computed_ratio_vs_llama_server"] = row["computed_median"] / max(1, base["computed_median"])
            if row["long_pair_tok_s"] and base["long_pair_tok_s"]:
                row["long_pair_ratio_vs_llama_server"] = row["long_pair_tok_s"] / base["long_pair_tok_s"]
    on, off = results.get("trillama"), results.get("trillama-nocache")
    if on and off:
        same = total = 0
        for a, b in zip(on["traces"], off["traces"]):
            for key, value in a["texts"].items():
                total += 1
                same += value == b["texts"].get(key)
        out["same_output_with_and_without_cache"] = {"same": same, "of": total}
    one_prefix = trace.prefix_tokens
    out["trace_prefix_tokens_nominal"] = one_prefix
    return out


if __name__ == "__main__":
    sys.exit(main())
