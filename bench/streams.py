"""Streaming clients for the three wire formats under test, timestamping every piece.

Why client-side timing: a server's own counters (``eval_duration``, llama-server's ``timings``)
leave out its HTTP layer, which is exactly what differs between the subjects. Each stream records
the time to the response headers (TTFB), to the first non-empty piece of content (TTFT) and to the
last piece; decode speed is ``(tokens - 1) / (last - first)``, which excludes prompt evaluation.

Token counts come from the server when it reports them (``eval_count`` on the native API,
``usage.completion_tokens`` on ``/v1`` with ``include_usage``); otherwise the non-empty content
pieces are counted, which is one per token for ASCII text on llama-cpp-python's server.

The load generator is httpx on asyncio in the benchmark's one process: a stream costs it one
``json.loads`` per token, a few hundred per second at most, small next to the servers' work.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import httpx

__all__ = ["StreamResult", "Endpoint", "run_stream", "PROTOCOLS"]

#: wire formats: native chat (NDJSON), native generate (NDJSON), OpenAI chat completions (SSE)
PROTOCOLS = ("ndjson-chat", "ndjson-generate", "sse-chat")


@attrs.frozen
class Endpoint:
    """Where and how to send streams to one subject."""

    base_url: str
    protocol: str  # one of PROTOCOLS
    model: str


@attrs.frozen
class StreamResult:
    ok: bool
    error: str | None = None
    #: seconds from sending the request to the response headers / first content / last content
    ttfb: float | None = None
    ttft: float | None = None
    t_last: float | None = None
    #: seconds from sending to the end of the response body
    total: float | None = None
    #: absolute perf_counter() of the send, to align concurrent streams
    t_send: float = 0.0
    chunks: int = 0
    tokens: int = 0
    tokens_from: str = "chunks"
    prompt_tokens: int | None = None
    #: the server's own prompt-evaluation time where it reports one (native ``prompt_eval_duration``,
    #: llama-server's ``timings.prompt_ms``): TTFT minus this is queueing and serving overhead
    server_prompt_ms: float | None = None
    text: str = ""

    @property
    def decode_tps(self) -> float | None:
        if not self.ok or self.tokens < 2 or self.ttft is None or self.t_last is None:
            return None
        span = self.t_last - self.ttft
        return (self.tokens - 1) / span if span > 0 else None

    def as_dict(self) -> dict:
        d = attrs.asdict(self)
        d.pop("text")
        d["decode_tps"] = self.decode_tps
        return d


def _body(endpoint: Endpoint, messages: list[dict], max_tokens: int,
          options: dict | None = None) -> tuple[str, dict]:
    if endpoint.protocol == "ndjson-chat":
        return "/api/chat", {
            "model": endpoint.model, "messages": messages, "stream": True, "keep_alive": -1,
            "options": {"temperature": 0, "num_predict": max_tokens, "seed": 1, **(options or {})},
        }
    if endpoint.protocol == "ndjson-generate":
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        prompt = "\n".join(m["content"] for m in messages if m["role"] != "system")
        return "/api/generate", {
            "model": endpoint.model, "prompt": prompt, "system": system, "stream": True, "keep_alive": -1,
            "options": {"temperature": 0, "num_predict": max_tokens, "seed": 1},
        }
    if endpoint.protocol == "sse-chat":
        return "/v1/chat/completions", {
            "model": endpoint.model, "messages": messages, "stream": True, "max_tokens": max_tokens,
            "temperature": 0, "seed": 1, "stream_options": {"include_usage": True},
        }
    raise ValueError(f"unknown protocol {endpoint.protocol!r}")


def _content_of(protocol: str, event: dict) -> str:
    if protocol == "ndjson-chat":
        return (event.get("message") or {}).get("content") or ""
    if protocol == "ndjson-generate":
        return event.get("response") or ""
    choices = event.get("choices") or []
    if not choices:
        return ""
    return (choices[0].get("delta") or {}).get("content") or ""


async def run_stream(client: httpx.AsyncClient, endpoint: Endpoint, messages: list[dict],
                     max_tokens: int, options: dict | None = None) -> StreamResult:
    """Send one streaming request and time it; never raises for server or network errors.

    ``options`` are extra native-API options (``ndjson-chat`` only), e.g. ``{"draft_max": 0}``.
    """
    path, body = _body(endpoint, messages, max_tokens, options)
    sse = endpoint.protocol == "sse-chat"
    t0 = time.perf_counter()
    ttfb = ttft = t_last = None
    chunks = 0
    pieces: list[str] = []
    server_tokens: int | None = None
    prompt_tokens: int | None = None
    server_prompt_ms: float | None = None
    try:
        async with client.stream("POST", endpoint.base_url + path, json=body) as response:
            ttfb = time.perf_counter() - t0
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:300]
                return StreamResult(ok=False, error=f"HTTP {response.status_code}: {text}", ttfb=ttfb, t_send=t0)
            async for line in response.aiter_lines():
                if not line:
                    continue
                if sse:
                    if not line.startswith("data:"):
                        continue  # comments (": ping") and event names
                    payload = line[5:].strip()
                    if payload.startswith("[DONE]"):
                        break
                else:
                    payload = line
                event: dict[str, Any] = json.loads(payload)
                if "error" in event:
                    return StreamResult(ok=False, error=f"stream error: {event['error']}", ttfb=ttfb, t_send=t0)
                content = _content_of(endpoint.protocol, event)
                if content:
                    now = time.perf_counter() - t0
                    if ttft is None:
                        ttft = now
                    t_last = now
                    chunks += 1
                    pieces.append(content)
                if sse:
                    usage = event.get("usage")
                    if usage:
                        server_tokens = usage.get("completion_tokens")
                        prompt_tokens = usage.get("prompt_tokens")
                    timings = event.get("timings")
                    if isinstance(timings, dict) and timings.get("prompt_ms") is not None:
                        server_prompt_ms = float(timings["prompt_ms"])
                elif event.get("done"):
                    server_tokens = event.get("eval_count")
                    prompt_tokens = event.get("prompt_eval_count")
                    if event.get("prompt_eval_duration"):
                        server_prompt_ms = event["prompt_eval_duration"] / 1e6
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
        return StreamResult(ok=False, error=f"{type(exc).__name__}: {exc}", ttfb=ttfb, t_send=t0)
    total = time.perf_counter() - t0
    if ttft is None:
        return StreamResult(ok=False, error="no content streamed", ttfb=ttfb, total=total, t_send=t0)
    return StreamResult(
        ok=True, ttfb=ttfb, ttft=ttft, t_last=t_last, total=total, t_send=t0, chunks=chunks,
        tokens=server_tokens if server_tokens else chunks,
        tokens_from="server" if server_tokens else "chunks",
        prompt_tokens=prompt_tokens, server_prompt_ms=server_prompt_ms, text="".join(pieces),
    )
