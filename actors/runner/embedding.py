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
import numpy as np

from trillama.actors.runner.native import Batch, Model, create_embedding_context
from trillama.logs import get_logger

__all__ = ["ContextExceeded", "Embedder"]

log = get_logger("trillama.runner.embedding")


class ContextExceeded(ValueError):
    """An input does not fit the context and truncation was not allowed."""


class Embedder:
    #: inputs decoded together in one call (distinct sequence ids in one batch)
    MAX_SEQ = 8
    #: tokens per decode where the model has a KV cache (every decoder-only model). Pooled by
    #: llama.cpp, a whole input is one decode, and each of its tokens then gets a row of logits
    #: (the output layer runs whether or not anyone reads them): a 4,096-token input held
    #: ~1.6 GB of buffers for SmolLM2's 49k vocabulary, kept while the model stays loaded
    #: (issue 24). In chunks, the logits rows are ``CHUNK``, and the mean over token states is
    #: the same.
    CHUNK = 256

    def __init__(self, model: Model, *, n_ctx: int, n_threads: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.chunk: int | None = min(self.CHUNK, n_ctx)
        self.ctx = create_embedding_context(model, n_ctx=n_ctx, n_seq=self.MAX_SEQ, n_threads=n_threads,
                                            chunk=self.chunk)
        self.mem = L.llama_get_memory(self.ctx)
        if not self.mem:  # no KV cache (an encoder): an input must be pooled in one decode
            L.llama_free(self.ctx)
            self.chunk = None
            self.ctx = create_embedding_context(model, n_ctx=n_ctx, n_seq=self.MAX_SEQ, n_threads=n_threads)
            self.mem = L.llama_get_memory(self.ctx)
        self.batch = Batch(self.chunk or n_ctx)
        self.n_embd = model.n_embd_out

    def _tokens(self, text: str, truncate: bool) -> list[int]:
        model = self.model
        if not truncate and model.proven_too_long(text, self.n_ctx):
            raise ContextExceeded("the input length exceeds the context length")
        # Only the text that the context holds is tokenized, however long the input (issue 24).
        room = self.n_ctx - (1 if model.add_bos else 0)
        tokens, whole = model.leading_tokens(text, room, add_special=False)
        if model.add_bos:
            tokens.insert(0, model.bos)
        if not whole or len(tokens) > self.n_ctx:
            if not truncate:
                raise ContextExceeded("the input length exceeds the context length")
            tokens = tokens[: self.n_ctx]
        if not tokens:  # an empty string still needs one position to pool over
            tokens = [model.bos if model.bos >= 0 else 0]
        return tokens

    def embed(self, inputs: list[str], truncate: bool) -> tuple[list[list[float]], list[int]]:
        all_tokens = [self._tokens(text, truncate) for text in inputs]
        vectors: list[list[float]] = [[] for _ in inputs]
        capacity = self.chunk or self.n_ctx
        i = 0
        while i < len(all_tokens):
            if len(all_tokens[i]) > capacity:  # only with chunks: a long input alone, in several
                vectors[i] = self._mean_in_chunks(all_tokens[i])
                i += 1
                continue
            # pack as many whole inputs as fit in one micro-batch
            group = []
            used = 0
            while (
                i < len(all_tokens)
                and len(group) < self.MAX_SEQ
                and used + len(all_tokens[i]) <= capacity
            ):
                group.append(i)
                used += len(all_tokens[i])
                i += 1
            self._decode_group(group, all_tokens, vectors)
        return vectors, [len(t) for t in all_tokens]

    def _decode(self, n: int) -> None:
        batch = self.batch
        batch.np_logits[:n] = 1  # pooling needs every token as an output
        batch.struct.n_tokens = n
        rc = L.llama_decode(self.ctx, batch.struct)
        if rc != 0:
            raise RuntimeError(f"embedding decode failed ({rc})")

    def _token_states(self, n: int) -> np.ndarray:
        """The last decode's ``n`` token states (chunked contexts pool nothing themselves)."""
        ptr = L.llama_get_embeddings(self.ctx)
        if not ptr:
            raise RuntimeError("the model produced no embeddings")
        return np.ctypeslib.as_array(ptr, shape=(n, self.model.n_embd))

    def _decode_group(self, group: list[int], all_tokens: list[list[int]], vectors: list) -> None:
        L.llama_memory_clear(self.mem, True)
        batch = self.batch
        n = 0
        for seq, idx in enumerate(group):
            n = batch.add_run(n, all_tokens[idx], 0, seq, logits_last=False)
        self._decode(n)
        if self.chunk is not None:
            states = self._token_states(n)
            at = 0
            for idx in group:
                k = len(all_tokens[idx])
                vectors[idx] = states[at:at + k].mean(axis=0, dtype=np.float64).tolist()
                at += k
            return
        n_embd = self.n_embd
        for seq, idx in enumerate(group):
            ptr = L.llama_get_embeddings_seq(self.ctx, seq)
            if not ptr:
                raise RuntimeError("the model produced no pooled embedding")
            floats = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))
            vectors[idx] = floats[:n_embd]

    def _mean_in_chunks(self, tokens: list[int]) -> list[float]:
        """The mean token state of an input longer than a chunk: the KV cache carries the earlier
        chunks, so each token attends to everything before it, as in one decode."""
        assert self.chunk is not None
        L.llama_memory_clear(self.mem, True)
        total = np.zeros(self.model.n_embd, dtype=np.float64)
        for start in range(0, len(tokens), self.chunk):
            part = tokens[start:start + self.chunk]
            n = self.batch.add_run(0, part, start, 0, logits_last=False)
            self._decode(n)
            total += self._token_states(n).sum(axis=0, dtype=np.float64)
        return (total / len(tokens)).tolist()

    def close(self) -> None:
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None
