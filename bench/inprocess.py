"""The engine's own single-stream speed: llama-cpp-python's ``Llama`` in a worker process.

Why a separate process: the measurement must not share an interpreter (or a GIL) with the load
generator, and its memory must be its own to report. Why a long-lived worker driven over pipes: the
single-stream samples of every subject are interleaved (see ``bench/measure.py``), so the engine
must stay loaded between its turns, idle like the servers are while another subject is measured.

Protocol: one JSON line in per sample, ``{"key": [...], "attempt": n}``; one JSON line out with the
timings. EOF on stdin ends the worker, which then prints ``{"peak_rss_mb": ..., "done": true}``.
The chats are exactly the servers' (same messages, greedy, same token budget, threads, context,
batch, flash attention); ``create_chat_completion(stream=True)`` is how a Python user streams from
the engine, and timing is taken as for the servers: first non-empty content, last content,
``(tokens - 1) / (last - first)``.

    python -m bench.inprocess '{"gguf": ..., "plan": {...}}'
"""

from __future__ import annotations

import json
import resource
import sys
import time


def main(argv: list[str]) -> int:
    args = json.loads(argv[1])
    from llama_cpp import Llama

    from bench.workload import stream_messages

    plan = args["plan"]
    t0 = time.perf_counter()
    llm = Llama(
        model_path=args["gguf"], n_ctx=plan["ctx_per_slot"], n_batch=plan["n_batch"],
        n_ubatch=plan["n_batch"], n_threads=plan["threads"], n_threads_batch=plan["threads"],
        flash_attn=plan["flash_attn"], verbose=False,
    )
    load_s = time.perf_counter() - t0
    # Warm-up: first-call costs (thread pool start, page faults on the weights) are not decode speed.
    for _ in llm.create_chat_completion(messages=stream_messages("warmup"), max_tokens=8, temperature=0,
                                        stream=True):
        pass
    _say({"ready": True, "load_s": load_s, "llama_cpp_python": __import__("llama_cpp").__version__})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        messages = stream_messages(*req["key"], attempt=req.get("attempt", 0))
        run = _one(llm, messages, plan)
        run["prompt_tokens"] = len(llm.tokenize(_render(messages), add_bos=False, special=True))
        _say(run)
    _say({"done": True, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    return 0


def _say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _one(llm, messages: list[dict], plan: dict) -> dict:
    """One timed stream, measured exactly as the servers' streams are."""
    start = time.perf_counter()
    ttft = t_last = None
    pieces = []
    for chunk in llm.create_chat_completion(messages=messages, max_tokens=plan["max_tokens"],
                                            temperature=0, seed=1, stream=True):
        content = (chunk["choices"][0].get("delta") or {}).get("content") or ""
        if content:
            now = time.perf_counter() - start
            ttft = now if ttft is None else ttft
            t_last = now
            pieces.append(content)
    total = time.perf_counter() - start
    tokens = len(pieces)
    decode = (tokens - 1) / (t_last - ttft) if tokens > 1 and t_last > ttft else None
    return {"ok": ttft is not None, "ttft": ttft, "t_last": t_last, "total": total, "tokens": tokens,
            "decode_tps": decode}


def _render(messages: list[dict]) -> bytes:
    """The ChatML text the template produces, for a prompt-token count comparable to the servers'."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return (text + "<|im_start|>assistant\n").encode()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
