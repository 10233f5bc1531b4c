"""The measurements: single stream, concurrency, prefix reuse, cheap endpoint.

Why interleaved: on a shared virtual machine the speed of the same server drifts by ±20 % over
minutes (seen in development with no other process on the CPU), more than the differences the
targets ask about. So every subject is started and warmed first, and then each phase takes its
samples in turns — sample 1 of every subject, then sample 2 of every subject (in a rotated order),
and so on — while the other subjects sit idle. A slow spell then hits every subject alike, and the
ratios in the report compare samples taken minutes apart at most. Every loop is bounded: a fixed
number of samples, each with a timeout, and retakes within a budget (``bench/contention.py``).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import attrs
import httpx
import structlog

from bench.cheap import run_cheap
from bench.contention import NOISE_LIMIT, retake_if_noisy
from bench.memory import tree_cpu_seconds
from bench.plan import Plan
from bench.stats import median, percentile, ratio
from bench.streams import Endpoint, StreamResult, run_stream
from bench.workload import history_chat, second_turn, stream_messages

__all__ = ["Target", "single_stream", "concurrency", "prefix_reuse", "cheap_endpoint", "probe_protocol",
           "warm_up", "http_client"]

log = structlog.get_logger("bench.measure")


@attrs.frozen
class Target:
    """One subject on one wire format.

    HTTP subjects take any message list (``send``); the in-process worker takes prompt keys only
    (``keyed``), which is all the single-stream phase needs.
    """

    subject: str
    protocol: str
    pid: int
    send: Callable[[list, int], Awaitable[StreamResult]] | None = attrs.field(default=None, eq=False, repr=False)
    keyed: Callable[[tuple, int, int], Awaitable[StreamResult]] | None = attrs.field(default=None, eq=False,
                                                                                    repr=False)

    @property
    def label(self) -> str:
        return f"{self.subject}/{self.protocol}"

    async def stream(self, key: tuple, attempt: int, max_tokens: int) -> StreamResult:
        if self.keyed is not None:
            return await self.keyed(key, attempt, max_tokens)
        return await self.send(_messages(key, attempt), max_tokens)


def http_target(subject: str, endpoint: Endpoint, pid: int, client: httpx.AsyncClient) -> Target:
    async def send(messages: list, max_tokens: int) -> StreamResult:
        return await run_stream(client, endpoint, messages, max_tokens)

    return Target(subject, endpoint.protocol, pid, send=send)


def _messages(key: tuple, attempt: int) -> list[dict]:
    if key and key[0] == "history":  # (history, target_tokens, *key) → a prefix-test chat
        return history_chat(key[1], *key[2:], *((attempt,) if attempt else ()))
    return stream_messages(*key, attempt=attempt)


__all__.append("http_target")


def http_client(connections: int = 32, timeout: float = 300.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=10.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


def _rotated(items: list, i: int) -> list:
    k = i % len(items) if items else 0
    return items[k:] + items[:k]


async def probe_protocol(client: httpx.AsyncClient, endpoint: Endpoint) -> str | None:
    """``None`` when the endpoint streams; otherwise why not (e.g. ``/v1`` not built yet)."""
    result = await run_stream(client, endpoint, stream_messages("probe", endpoint.protocol), 4)
    return None if result.ok else result.error


async def warm_up(client: httpx.AsyncClient, endpoint: Endpoint) -> StreamResult:
    """Loads the model where loading is lazy (trillama) and touches every code path once."""
    result = StreamResult(ok=False)
    for i in range(2):
        result = await run_stream(client, endpoint, stream_messages("warmup", endpoint.protocol, i), 16)
    return result


def _noise(samples: list[tuple[float, int]]) -> dict:
    """How clean a phase was: samples kept although noisy, retakes spent, worst foreign share."""
    return {"noisy_samples": sum(1 for f, _ in samples if f > NOISE_LIMIT),
            "retakes": sum(a - 1 for _, a in samples),
            "max_foreign_cpu": round(max((f for f, _ in samples), default=0.0), 3)}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# ----------------------------------------------------------------------------- single stream
async def single_stream(targets: list[Target], plan: Plan) -> dict[str, dict]:
    """``plan.single_repeats`` streams per target, one at a time, targets taking turns.

    The prompt key depends on the wire format only, so the in-process engine and every server
    answer the same chats on the same format (``bench/workload.py``).
    """
    runs: dict[str, list] = {t.label: [] for t in targets}
    noise: dict[str, list] = {t.label: [] for t in targets}
    for i in range(plan.single_repeats):
        for t in _rotated(targets, i):
            key = ("single", t.protocol, i)
            result, foreign, attempts = await retake_if_noisy(
                lambda attempt, t=t, key=key: t.stream(key, attempt, plan.max_tokens), plan.noisy_retries)
            runs[t.label].append(result)
            noise[t.label].append((foreign, attempts))
    out = {}
    for t in targets:
        rs = runs[t.label]
        ok = [r for r in rs if r.ok]
        out[t.label] = {
            "n": len(rs), "errors": len(rs) - len(ok), **_noise(noise[t.label]),
            "decode_tps": median(r.decode_tps for r in ok),
            "ttft_ms": _ms(median(r.ttft for r in ok)),
            "ttfb_ms": _ms(median(r.ttfb for r in ok)),
            "tokens": median(r.tokens for r in ok),
            "tokens_from": ok[0].tokens_from if ok else None,
            "prompt_tokens": median(r.prompt_tokens for r in ok if r.prompt_tokens),
            "runs": [r.as_dict() for r in rs],
        }
        s = out[t.label]
        log.info("single_stream", target=t.label, decode_tps=_round(s["decode_tps"]), ttft_ms=_round(s["ttft_ms"]),
                 tokens=s["tokens"], errors=s["errors"], noisy=s["noisy_samples"], retakes=s["retakes"])
    return out


# ----------------------------------------------------------------------------- concurrency
async def concurrency(targets: list[Target], plan: Plan) -> tuple[dict[str, dict], dict[str, dict]]:
    """Aggregate tokens/s and TTFT percentiles at each level; also each subject's CPU per token."""
    per_target: dict[str, dict] = {t.label: {} for t in targets}
    cpu: dict[str, dict] = {t.subject: {"server_cpu_s": 0.0, "wall_s": 0.0, "tokens": 0} for t in targets}
    for level in plan.levels:
        state = {t.label: {"rounds": [], "noise": [], "streams": []} for t in targets}
        for r in range(plan.rounds):
            for t in _rotated(targets, r):
                async def one_round(attempt: int, t: Target = t, r: int = r) -> tuple:
                    cpu0 = tree_cpu_seconds(t.pid)
                    batch = await asyncio.gather(*(
                        t.stream(("conc", t.protocol, level, r, i), attempt, plan.max_tokens) for i in range(level)
                    ))
                    return batch, tree_cpu_seconds(t.pid) - cpu0

                (batch, used), foreign, attempts = await retake_if_noisy(one_round, plan.noisy_retries)
                ok = [s for s in batch if s.ok]
                wall = (max(s.t_send + s.total for s in ok) - min(s.t_send for s in batch)) if ok else None
                tokens = sum(s.tokens for s in ok)
                st = state[t.label]
                st["rounds"].append({"wall_s": wall, "tokens": tokens, "errors": len(batch) - len(ok),
                                     "aggregate_tps": tokens / wall if wall else None})
                st["noise"].append((foreign, attempts))
                st["streams"].append(batch)
                c = cpu[t.subject]
                c["server_cpu_s"] += used
                c["wall_s"] += wall or 0.0
                c["tokens"] += tokens
        for t in targets:
            st = state[t.label]
            streams = [s for batch in st["streams"] for s in batch]
            ok = [s for s in streams if s.ok]
            lv = per_target[t.label][str(level)] = {
                "streams": len(streams), "errors": len(streams) - len(ok), **_noise(st["noise"]),
                "aggregate_tps": median(r["aggregate_tps"] for r in st["rounds"]),
                "ttft_p50_ms": _ms(percentile([s.ttft for s in ok], 50)),
                "ttft_p95_ms": _ms(percentile([s.ttft for s in ok], 95)),
                "per_stream_decode_tps": median(s.decode_tps for s in ok),
                "server_prompt_ms_p50": percentile([s.server_prompt_ms for s in ok], 50),
                # each round's TTFTs in order: shows whether prompts are prefilled together or in turn
                "ttft_ms_by_round": [sorted(round(s.ttft * 1000) for s in b if s.ok) for b in st["streams"]],
                "tokens_per_stream": median(s.tokens for s in ok),
                "rounds": st["rounds"],
                "errors_sample": [s.error for s in streams if not s.ok][:3],
            }
            log.info("concurrency", target=t.label, level=level, aggregate_tps=_round(lv["aggregate_tps"]),
                     ttft_p50_ms=_round(lv["ttft_p50_ms"]), ttft_p95_ms=_round(lv["ttft_p95_ms"]),
                     decode_per_stream=_round(lv["per_stream_decode_tps"]), errors=lv["errors"],
                     noisy=lv["noisy_samples"], retakes=lv["retakes"])
    for c in cpu.values():
        c["server_cpu_ms_per_token"] = round(1000 * c["server_cpu_s"] / c["tokens"], 3) if c["tokens"] else None
        c["server_cpu_s"] = round(c["server_cpu_s"], 2)
        c["wall_s"] = round(c["wall_s"], 2)
    return per_target, cpu


# ----------------------------------------------------------------------------- prefix reuse
async def prefix_reuse(targets: list[Target], plan: Plan) -> dict[str, dict]:
    """First turn on a fresh ~1,000-token history versus the next turn of the same chat."""
    pairs: dict[str, list] = {t.label: [] for t in targets}
    noise: dict[str, list] = {t.label: [] for t in targets}
    for r in range(plan.prefix_repeats):
        for t in _rotated(targets, r):
            async def two_turns(attempt: int, t: Target = t, r: int = r) -> tuple:
                # A retake needs a history nothing has cached yet: the attempt goes into the key.
                key = ("history", plan.history_tokens, "prefix", t.protocol, r)
                messages = _messages(key, attempt)
                first = await t.stream(key, attempt, plan.prefix_max_tokens)
                second = None
                if first.ok:
                    second = await t.send(second_turn(messages, first.text), plan.prefix_max_tokens)
                return first, second

            pair, foreign, attempts = await retake_if_noisy(two_turns, plan.noisy_retries)
            pairs[t.label].append(pair)
            noise[t.label].append((foreign, attempts))
    out = {}
    for t in targets:
        ps = pairs[t.label]
        firsts = [f.ttft for f, s in ps if f.ok and s is not None and s.ok]
        seconds = [s.ttft for f, s in ps if f.ok and s is not None and s.ok]
        p = out[t.label] = {
            "pairs": len(ps), "ok_pairs": len(firsts), **_noise(noise[t.label]),
            "first_ttft_ms": _ms(median(firsts)), "second_ttft_ms": _ms(median(seconds)),
            "speedup": ratio(median(firsts), median(seconds)),
            "first_prompt_tokens": median(f.prompt_tokens for f, _ in ps if f.prompt_tokens),
            "second_prompt_tokens": median(s.prompt_tokens for _, s in ps if s is not None and s.prompt_tokens),
            "runs": [{"first": f.as_dict(), "second": s.as_dict() if s else None} for f, s in ps],
        }
        log.info("prefix_reuse", target=t.label, first_ttft_ms=_round(p["first_ttft_ms"]),
                 second_ttft_ms=_round(p["second_ttft_ms"]), speedup=_round(p["speedup"]),
                 prompt_tokens=p["first_prompt_tokens"])
    return out


# ----------------------------------------------------------------------------- cheap endpoint
async def cheap_endpoint(port: int, path: str, plan: Plan) -> dict:
    async def take(attempt: int):
        return await run_cheap("127.0.0.1", port, path, connections=plan.cheap_connections,
                               seconds=plan.cheap_seconds, max_requests=plan.cheap_max_requests)

    result, foreign, attempts = await retake_if_noisy(take, min(plan.noisy_retries, 1))
    log.info("cheap_endpoint", port=port, path=path, rps=_round(result.rps), p99_ms=_round(result.p99_ms),
             errors=result.errors, client_cpu_s=_round(result.client_cpu_s), foreign_cpu=round(foreign, 3))
    return {**result.as_dict(), **_noise([(foreign, attempts)])}
