"""What the server process itself spends per streamed token: ``python -m bench.server_cost``.

Why a figure of its own: on a GPU one server process streams for many small-model slots at once,
so the HTTP/actor process must never be what limits the tokens (issue 14). Wall-clock speed on a
2-core CPU machine cannot show that cost (the model takes the cores), so this bench reads the
*server process's* CPU seconds (user + system, its runner children excluded) over a load of N
concurrent streams and divides by the tokens the server reported (``eval_count`` /
``usage.completion_tokens``). What it includes: everything the server does for a request, from
reading the runner's frames to writing the chunks, plus each request's fixed cost (parsing,
templating, the lease) spread over its tokens.

The load: ``--streams`` concurrent streams (a slot each: ``OLLAMA_NUM_PARALLEL`` is set to the
largest level), ``--tokens`` tokens each, greedy, one decode thread (so that on a 2-core machine
the server process has a core of its own and its figure is not inflated by waiting for llama.cpp), on the bundled SmolLM2-135M, for each wire
format: NDJSON ``/api/generate``, NDJSON ``/api/chat``, SSE ``/v1/chat/completions``. The client is
a lean raw-socket reader in this process (it only looks for the last chunk), so it takes as little
CPU from the server as it can; its own CPU time is reported next to the result.

Each level is measured ``--rounds`` times, alternating the wire formats, and the median is taken.
``--profile SECONDS`` adds a py-spy profile of the server process under the 8-stream NDJSON load
(py-spy from the bench venv, or ``TRILLAMA_BENCH_PY_SPY``). Results go to
``bench/results/server-cost-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import attrs
import psutil

from bench.plan import Plan
from bench.servers import RunningServer, trillama_spec

__all__ = ["CostSample", "measure_cost", "main"]

RESULTS = Path(__file__).resolve().parent / "results"
PROTOCOLS = ("ndjson-generate", "ndjson-chat", "sse-chat")
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # SmolLM2 keeps counting: every stream runs to its budget
#: the target the issue sets (server CPU per streamed token)
TARGET_US = 50.0


@attrs.frozen
class CostSample:
    protocol: str
    streams: int
    tokens: int
    server_cpu_s: float
    client_cpu_s: float
    wall_s: float
    failed: int

    @property
    def us_per_token(self) -> float:
        return 1e6 * self.server_cpu_s / max(1, self.tokens)


def _request(protocol: str, port: int, tokens: int) -> tuple[bytes, str]:
    """A prebuilt HTTP/1.1 request and the marker of its last chunk."""
    if protocol == "ndjson-generate":
        path, body = "/api/generate", {"model": "smollm2:135m", "prompt": PROMPT, "raw": True,
                                       "options": {"temperature": 0, "num_predict": tokens}}
    elif protocol == "ndjson-chat":
        path, body = "/api/chat", {"model": "smollm2:135m",
                                   "messages": [{"role": "user", "content": "Continue: " + PROMPT}],
                                   "options": {"temperature": 0, "num_predict": tokens}}
    else:
        path, body = "/v1/chat/completions", {
            "model": "smollm2:135m", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "Continue: " + PROMPT}],
            "temperature": 0, "max_tokens": tokens}
    data = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    return head + data, protocol


def _tokens_in(protocol: str, raw: bytes) -> int:
    """The token count the server reported in the stream's last chunk (0 if none: a failure)."""
    text = raw.decode("utf-8", errors="replace")
    if protocol == "sse-chat":
        for line in reversed(text.split("\n")):
            if line.startswith("data: {") and '"usage"' in line:
                usage = json.loads(line[6:]).get("usage") or {}
                return int(usage.get("completion_tokens") or 0)
        return 0
    for line in reversed(text.split("\n")):
        line = line.strip()
        if line.startswith("{") and '"done":true' in line:
            return int(json.loads(line).get("eval_count") or 0)
    # chunked encoding splits lines at chunk boundaries only by chance: fall back to a scan
    marker = '"eval_count":'
    at = text.rfind(marker)
    if at < 0:
        return 0
    digits = "".join(ch for ch in text[at + len(marker):at + len(marker) + 12] if ch.isdigit())
    return int(digits or 0)


async def _one(port: int, request: bytes, protocol: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        chunks = []
        while True:
            data = await reader.read(65536)
            if not data:
                break
            chunks.append(data)
        raw = b"".join(chunks)
    finally:
        writer.close()
    if not raw.startswith(b"HTTP/1.1 200"):
        return 0
    return _tokens_in(protocol, raw)


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _load(port: int, protocol: str, streams: int, tokens: int) -> tuple[int, int]:
    request, _ = _request(protocol, port, tokens)
    counts = await asyncio.gather(*(_one(port, request, protocol) for _ in range(streams)))
    return sum(counts), sum(1 for c in counts if c == 0)


def measure_cost(server: psutil.Process, port: int, protocol: str, streams: int, tokens: int) -> CostSample:
    """One round: ``streams`` streams at once, the server's CPU time across it."""
    cpu0, own0, t0 = _cpu(server), _own_cpu(), time.perf_counter()
    total, failed = asyncio.run(_load(port, protocol, streams, tokens))
    wall = time.perf_counter() - t0
    return CostSample(protocol=protocol, streams=streams, tokens=total, server_cpu_s=_cpu(server) - cpu0,
                      client_cpu_s=_own_cpu() - own0, wall_s=wall, failed=failed)


def _py_spy() -> str | None:
    override = os.environ.get("TRILLAMA_BENCH_PY_SPY")
    if override:
        return override
    candidate = Path(__file__).resolve().parent / ".venv" / "bin" / "py-spy"
    return str(candidate) if candidate.exists() else None


def _profile(pid: int, port: int, seconds: float, tokens: int, out: Path) -> str | None:
    """py-spy (raw folded stacks) of the server process while 8 NDJSON streams keep it busy."""
    py_spy = _py_spy()
    if py_spy is None:
        return None
    spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                            "--rate", "250", "--format", "raw", "--output", str(out), "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and spy.poll() is None:
        asyncio.run(_load(port, "ndjson-generate", 8, tokens))
    spy.wait(timeout=seconds + 60)
    return str(out) if out.exists() else None


def _summary(samples: list[CostSample]) -> list[dict]:
    rows = []
    for streams in sorted({s.streams for s in samples}):
        for protocol in PROTOCOLS:
            group = [s for s in samples if s.streams == streams and s.protocol == protocol]
            if not group:
                continue
            rows.append({
                "protocol": protocol, "streams": streams, "rounds": len(group),
                "us_per_token": round(statistics.median(s.us_per_token for s in group), 1),
                "tokens": sum(s.tokens for s in group),
                "server_cpu_s": round(sum(s.server_cpu_s for s in group), 3),
                "client_cpu_s": round(sum(s.client_cpu_s for s in group), 3),
                "tokens_per_s": round(statistics.median(s.tokens / s.wall_s for s in group), 1),
                "failed": sum(s.failed for s in group),
            })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="decode threads (default 1: on 2 cores the server keeps a core of its own)")
    parser.add_argument("--profile", type=float, default=0.0, help="seconds of py-spy profile (0: none)")
    parser.add_argument("--label", default="", help="a name for this run in the results file")
    parser.add_argument("--source", choices=("model", "fixed-rate"), default="model",
                        help="model: the real runner and SmolLM2; fixed-rate: bench/token_source.py "
                             "emits a token per running stream every 1/--rate s (a busy server, as "
                             "behind a GPU)")
    parser.add_argument("--rate", type=float, default=100.0, help="decode steps per second (fixed-rate)")
    parser.add_argument("--checkout", default=None,
                        help="measure the trillama of another checkout (with its own .venv), e.g. a "
                             "git worktree of the commit to compare with")
    args = parser.parse_args(argv)

    slots = max(args.streams)
    plan = Plan(mode="server-cost", threads=args.threads, slots=slots, ctx_per_slot=256 + args.tokens, max_tokens=args.tokens)
    spec = trillama_spec(plan)
    if args.source == "fixed-rate":
        env = (*spec.env, ("TRILLAMA_BENCH_STEP_RATE", str(args.rate)))
        spec = attrs.evolve(spec, argv=(spec.argv[0], str(Path(__file__).resolve().parent / "serve_token_source.py")),
                            env=env)
    if args.checkout:
        checkout = Path(args.checkout).resolve()
        spec = attrs.evolve(spec, argv=(str(checkout / ".venv" / "bin" / "python"), *spec.argv[1:]),
                            cwd=str(checkout))
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    samples: list[CostSample] = []
    profile_path = None
    with RunningServer(spec, RESULTS / f"server-cost-{stamp}.log") as server:
        server.wait_ready()
        proc = psutil.Process(server.pid)
        for protocol in PROTOCOLS:  # warm-up: load the model, fill every slot once
            measure_cost(proc, spec.port, protocol, slots, 16)
        for round_ in range(args.rounds):
            for streams in args.streams:
                order = PROTOCOLS if round_ % 2 == 0 else tuple(reversed(PROTOCOLS))
                for protocol in order:
                    sample = measure_cost(proc, spec.port, protocol, streams, args.tokens)
                    samples.append(sample)
                    print(f"{protocol:16s} streams={streams:3d} tokens={sample.tokens:6d} "
                          f"server={sample.us_per_token:7.1f} µs/token  client cpu={sample.client_cpu_s:.2f}s "
                          f"wall={sample.wall_s:.1f}s failed={sample.failed}", flush=True)
        if args.profile > 0:
            profile_path = _profile(server.pid, spec.port, args.profile, args.tokens,
                                    RESULTS / f"server-cost-{stamp}.folded")
    rows = _summary(samples)
    print()
    print(f"{'protocol':16s} {'streams':>7s} {'µs/token':>9s} {'vs target':>9s} {'tok/s':>7s} {'failed':>6s}")
    for row in rows:
        print(f"{row['protocol']:16s} {row['streams']:7d} {row['us_per_token']:9.1f} "
              f"{row['us_per_token'] / TARGET_US:8.2f}× {row['tokens_per_s']:7.1f} {row['failed']:6d}")
    result = {"bench": "server_cost", "label": args.label, "checkout": args.checkout,
              "source": args.source, "rate": args.rate if args.source == "fixed-rate" else None, "started": stamp, "plan": plan.as_dict(),
              "server": spec.describe(), "target_us_per_token": TARGET_US, "rows": rows,
              "samples": [attrs.asdict(s) | {"us_per_token": s.us_per_token} for s in samples],
              "profile": profile_path}
    out = RESULTS / f"server-cost-{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {out}")
    return 0 if all(row["failed"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
