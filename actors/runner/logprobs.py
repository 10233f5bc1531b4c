"""Log-probabilities of a sampled token and its best alternatives, Ollama-shaped.

Computed from the raw logits row of the one output that produced the token — the context keeps
one row per output of the last decode, so nothing like llama-cpp-python's ``logits_all`` (a row
for every prompt token) is needed. The values are the model's distribution before sampling
settings (temperature, top-k…) reshape it, which is what Ollama reports.
"""

from __future__ import annotations

import ctypes
from typing import Callable

import llama_cpp as L
import numpy as np

__all__ = ["token_logprob_entry"]


def _entry(token_text: bytes, logprob: float) -> dict:
    return {
        "token": token_text.decode("utf-8", errors="replace"),
        "logprob": logprob,
        "bytes": list(token_text),
    }


def token_logprob_entry(
    ctx: int,
    output_index: int,
    n_vocab: int,
    token: int,
    top_n: int,
    piece: Callable[[int], bytes],
) -> dict:
    ptr = L.llama_get_logits_ith(ctx, output_index)
    row = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
    row = row.astype(np.float64)
    peak = row.max()
    log_z = peak + np.log(np.exp(row - peak).sum())
    entry = _entry(piece(token), float(row[token] - log_z))
    if top_n > 0:
        n = min(top_n, n_vocab)
        best = np.argpartition(row, -n)[-n:]
        best = best[np.argsort(row[best])[::-1]]
        entry["top_logprobs"] = [_entry(piece(int(t)), float(row[t] - log_z)) for t in best]
    return entry
