"""Per-slot sampler chains built from Ollama's options, with grammars validated up front.

Each slot owns one native chain, so slots sample independently inside the same decode step and a
seed reproduces its own stream whatever else runs beside it. The chain follows llama.cpp's
common order — grammar, penalties, top-k, typical, top-p, min-p, temperature, dist — and leaves
out every stage whose option is neutral: a sampler over the full vocabulary is not free, and the
speed of this loop is the product's ceiling. ``temperature <= 0`` means greedy.

A GBNF grammar llama.cpp cannot parse makes ``llama_sampler_init_grammar`` return NULL; adding
NULL to a chain crashes the process (llama-cpp-python's high-level API does exactly that), so the
NULL is turned into :class:`GrammarError` before anything is added.
"""

from __future__ import annotations

import llama_cpp as L

from trillama.actors.runner.native import Model

__all__ = ["GrammarError", "SamplerChain", "build_chain"]

_RANDOM_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: llama.cpp draws a random seed


class GrammarError(ValueError):
    """The grammar does not parse; the job fails with kind ``bad_grammar``."""


class SamplerChain:
    """A native sampler chain plus the handle of its penalties stage (to feed it the prompt)."""

    __slots__ = ("ptr", "penalties")

    def __init__(self, ptr: int, penalties: int | None) -> None:
        self.ptr = ptr
        self.penalties = penalties

    def seed_history(self, tokens: list[int]) -> None:
        """Let repeat/presence/frequency penalties see the prompt, as llama.cpp's server does.

        Only the penalties stage is fed: the grammar stage must not "accept" prompt tokens.
        """
        if self.penalties is None:
            return
        accept = L.llama_sampler_accept
        for tok in tokens:
            accept(self.penalties, tok)

    def free(self) -> None:
        if self.ptr:
            L.llama_sampler_free(self.ptr)  # frees every stage it owns
            self.ptr = None
            self.penalties = None


def build_chain(model: Model, options: dict, *, n_ctx: int) -> SamplerChain:
    """Build the chain for one job; ``options`` is the job dict (GenerateJob field names)."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    penalties = None
    try:
        grammar = options.get("grammar")
        if grammar:
            stage = L.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
            if not stage:
                raise GrammarError("failed to parse grammar")
            L.llama_sampler_chain_add(chain, stage)

        repeat = float(options.get("repeat_penalty", 1.0))
        freq = float(options.get("frequency_penalty", 0.0))
        present = float(options.get("presence_penalty", 0.0))
        last_n = int(options.get("repeat_last_n", 64))
        if last_n < 0:  # Ollama: -1 means the whole context
            last_n = n_ctx
        if last_n and (repeat != 1.0 or freq != 0.0 or present != 0.0):
            if repeat <= 0:
                repeat = 1.0
            penalties = L.llama_sampler_init_penalties(model.n_vocab, last_n, repeat, freq, present)
            L.llama_sampler_chain_add(chain, penalties)

        temperature = float(options.get("temperature", 0.8))
        if temperature <= 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            top_k = int(options.get("top_k", 40))
            typical_p = float(options.get("typical_p", 1.0))
            top_p = float(options.get("top_p", 0.9))
            min_p = float(options.get("min_p", 0.0))
            if top_k > 0:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(top_k))
            if 0 < typical_p < 1:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_typical(typical_p, 1))
            if 0 < top_p < 1:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(top_p, 1))
            if 0 < min_p < 1:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(min_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(temperature))
            seed = int(options.get("seed", -1))
            seed = _RANDOM_SEED if seed < 0 else seed & 0xFFFFFFFF
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
    except BaseException:
        L.llama_sampler_free(chain)
        raise
    return SamplerChain(chain, penalties)


def check_grammar(model: Model, grammar: str) -> None:
    """Raise :class:`GrammarError` unless ``grammar`` parses (used to fail fast on submit)."""
    stage = L.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
    if not stage:
        raise GrammarError("failed to parse grammar")
    L.llama_sampler_free(stage)
