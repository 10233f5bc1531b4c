"""Does chunk reuse by KV shifting (llama.cpp's ``--cache-reuse``) pay for edited histories, and is
it exact? ``python -m bench.cache_reuse [GGUF...]`` (issue 22).

An agent that clears an old tool result in the middle of its history sends a prompt whose tail
(the turns after the edit) is the same token sequence as before, at other positions. Chunk reuse
keeps that tail's KV and shifts its positions (``llama_memory_seq_rm`` + ``llama_memory_seq_add``)
instead of computing it again. Two questions decide whether trillama should do it:

* what it saves: the tail's prefill;
* whether the answer stays the same: the tail's keys and values were computed attending to the
  removed tokens, so they are not what computing the edited prompt gives. The script compares the
  logits after the edited prompt computed afresh with those after the shifted cache.

llama.cpp only takes a sequence's new tokens after its last position, so a cached tail can only be
reused when the edit is a pure deletion; an edit that puts a placeholder where the old content
was (what agents do: "[tool result cleared]") needs the placeholder decoded before the tail, which
the shifted layout cannot give. The script measures the deletion, the most favourable case.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import llama_cpp as L
import numpy as np

from trillama.actors.runner import native

VOCAB = "the file function returns value when parse tool call error path list read write edit test".split()


def words(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def measure(path: Path, threads: int) -> dict:
    model = native.load_model(path, n_gpu_layers=0, use_mmap=True)
    ctx = native.create_generation_context(model, n_ctx=4096, n_parallel=2, n_batch=512, n_threads=threads,
                                           flash_attn=None, kv_cache_type="f16")
    mem = L.llama_get_memory(ctx)
    batch = native.Batch(512)

    def tok(text: str) -> list[int]:
        return model.tokenize(text, add_special=False, parse_special=True)

    def decode(seq: int, tokens: list[int], start: int) -> np.ndarray:
        pos, n = start, 0
        while tokens:
            take, tokens = tokens[:512], tokens[512:]
            n = batch.add_run(0, take, pos, seq, logits_last=not tokens)
            pos += len(take)
            batch.struct.n_tokens = n
            if L.llama_decode(ctx, batch.struct) != 0:
                raise RuntimeError("llama_decode failed")
        return np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, n - 1), shape=(model.n_vocab,)).copy()

    head = [model.bos] + tok("System: " + words(1, 300))
    removed = tok(" Tool result: " + words(2, 250))
    tail = tok(" Assistant: " + words(3, 500))
    turn = tok(" User: and now what?")
    decode(0, head, 0)  # the shared head is reused either way: time only what follows it
    t = time.perf_counter()
    fresh = decode(0, tail + turn, len(head))
    t_fresh = time.perf_counter() - t
    decode(1, head + removed + tail, 0)  # the history before the edit, in the cache
    t = time.perf_counter()
    L.llama_memory_seq_rm(mem, 1, len(head), len(head) + len(removed))
    L.llama_memory_seq_add(mem, 1, len(head) + len(removed), -1, -len(removed))
    shifted = decode(1, turn, len(head) + len(tail))
    t_shift = time.perf_counter() - t
    top = lambda logits: set(np.argsort(logits)[-10:].tolist())  # noqa: E731
    out = {"model": path.name, "can_shift": bool(L.llama_memory_can_shift(mem)),
           "n_swa": int(L.llama_model_n_swa(model.ptr)), "tail_tokens": len(tail),
           "computed_fresh": len(tail) + len(turn), "computed_shifted": len(turn),
           "seconds_fresh": round(t_fresh, 2), "seconds_shifted": round(t_shift, 2),
           "max_logit_diff": float(np.abs(fresh - shifted).max()),
           "same_argmax": int(fresh.argmax()) == int(shifted.argmax()),
           "top10_overlap": len(top(fresh) & top(shifted))}
    L.llama_free(ctx)
    model.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cache_reuse", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    L.llama_backend_init()
    native.install_log_callback(False)
    models = args.models or [Path.home() / ".cache" / "trillama-tests" / "gemma-3-270m-q4_k_m.gguf"]
    for path in models:
        print(measure(path, args.threads), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
