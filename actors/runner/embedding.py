"""Embeddings on a second, lazily created context of the same weights.

The generation context keeps its slots and KV cache untouched; the embedding context exists only
once someone asks for an embedding (most generative models never get asked). Mean pooling makes a
generative model such as SmolLM2 yield one vector per input. Vectors are returned raw:
normalising (and cutting to ``dimensions``) is the API layer's job, as /api/embeddings (legacy)
does not normalise while /api/embed does.
"""

from __future__ import annotations

import ctypes

import llama_cpp as L

from trillama.actors.runner.native import Batch, Model, create_embedding_context
from trillama.logs import get_logger

__all__ = ["ContextExceeded", "Embedder"]

log = get_logger("trillama.runner.embedding")


class ContextExceeded(ValueError):
    """An input does not fit the context and truncation was not allowed."""


class Embedder:
    #: inputs decoded together in one call (distinct sequence ids in one batch)
    MAX_SEQ = 8

    def __init__(self, model: Model, *, n_ctx: int, n_threads: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.ctx = create_embedding_context(model, n_ctx=n_ctx, n_seq=self.MAX_SEQ, n_threads=n_threads)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = Batch(n_ctx)
        self.n_embd = model.n_embd_out

    def _tokens(self, text: str, truncate: bool) -> list[int]:
        model = self.model
        if model.proven_too_long(text, self.n_ctx):
            # Certainly longer than the context: refuse, or keep a prefix that still holds more
            # than the context's worth of tokens, without tokenizing all of it.
            if not truncate:
                raise ContextExceeded("the input length exceeds the context length")
            bound = model.text_bound(self.n_ctx)
            text = text[:bound].encode("utf-8", errors="replace")[:bound].decode("utf-8", errors="ignore")
        tokens = model.tokenize(text, add_special=False)
        if model.add_bos:
            tokens.insert(0, model.bos)
        if len(tokens) > self.n_ctx:
            if not truncate:
                raise ContextExceeded("the input length exceeds the context length")
            tokens = tokens[: self.n_ctx]
        if not tokens:  # an empty string still needs one position to pool over
            tokens = [model.bos if model.bos >= 0 else 0]
        return tokens

    def embed(self, inputs: list[str], truncate: bool) -> tuple[list[list[float]], list[int]]:
        all_tokens = [self._tokens(text, truncate) for text in inputs]
        vectors: list[list[float]] = [[] for _ in inputs]
        i = 0
        while i < len(all_tokens):
            # pack as many whole inputs as fit in one micro-batch
            group = []
            used = 0
            while (
                i < len(all_tokens)
                and len(group) < self.MAX_SEQ
                and used + len(all_tokens[i]) <= self.n_ctx
            ):
                group.append(i)
                used += len(all_tokens[i])
                i += 1
            self._decode_group(group, all_tokens, vectors)
        return vectors, [len(t) for t in all_tokens]

    def _decode_group(self, group: list[int], all_tokens: list[list[int]], vectors: list) -> None:
        L.llama_memory_clear(self.mem, True)
        batch = self.batch
        n = 0
        for seq, idx in enumerate(group):
            n = batch.add_run(n, all_tokens[idx], 0, seq, logits_last=False)
        batch.np_logits[:n] = 1  # pooling needs every token as an output
        batch.struct.n_tokens = n
        rc = L.llama_decode(self.ctx, batch.struct)
        if rc != 0:
            raise RuntimeError(f"embedding decode failed ({rc})")
        n_embd = self.n_embd
        for seq, idx in enumerate(group):
            ptr = L.llama_get_embeddings_seq(self.ctx, seq)
            if not ptr:
                raise RuntimeError("the model produced no pooled embedding")
            floats = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
            vectors[idx] = floats[:n_embd]

    def close(self) -> None:
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None
