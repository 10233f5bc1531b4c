"""Prompt-lookup drafts: guess a slot's next tokens from text already in its own context.

Much real work repeats its input — rewriting code, quoting a document, continuing a list — and
then the tokens after the context's last few tokens are very often the tokens that followed the
same few tokens earlier. :class:`Drafter` keeps an index from every short n-gram of the slot's
context (prompt and generated text) to the position right after its latest occurrence, so a
proposal is a few dictionary lookups and a list slice, whatever the context's length.

The engine puts the proposal in the same ``llama_decode`` as everything else and keeps only what
the model confirms (see :mod:`.engine`); a draft never changes the output, only the cost. How long
a draft may be follows the job's recent acceptance rate and what one more batch row costs
(:func:`best_length`): long while drafts are confirmed, zero while they are not worth their rows.

While it is zero the drafter keeps learning without spending a row: it still looks up what it
would have proposed (a *shadow* draft) and checks it against the tokens the model goes on to
generate. That check is exact, not an estimate: a draft token is confirmed if and only if it is
the token the job's own sampler picks at that position (see ``Engine._verify``), and the tokens
generated are the same with drafts or without. So a chat that does not repeat itself costs
nothing but the lookups, and text that starts repeating is noticed at the next step.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["DEFAULT_DRAFT_MAX", "DRAFT_ROW_COST", "DRAFT_ROW_COST_SHARED", "MAX_DRAFT_MAX", "Drafter",
           "RowCost", "best_length", "plan_drafts"]

#: Draft tokens per step at most, unless the request or the Modelfile says otherwise.
DEFAULT_DRAFT_MAX = 8
#: The largest ``draft_max`` a request may ask for.
MAX_DRAFT_MAX = 64
#: Starting prices of one draft row, as a share of a decode step, for a slot alone in the batch
#: and beside other sequences; the engine then measures them (``RowCost``). Drafting token m pays
#: while acceptance**m > price.
DRAFT_ROW_COST = 0.15
# Beside other sequences: 1.0 keeps shared steps from drafting (rate ** m never exceeds it). On a
# quiet 2-core machine (2026-12-02, docs/benchmarks.md) a starting price of 0.5, learnt from
# there, ran 4 streams at 0.77-0.92x of no drafts on every workload (about half the drafted rows,
# padding included, confirmed), so shared steps stay undrafted on CPUs. A GPU, where a row is
# nearly free, is where a lower price would pay; it is unmeasured.
DRAFT_ROW_COST_SHARED = 1.0
_ANY_PRICE = 1e-3  # a price at which any draft with some hope is proposed whole
#: n-gram lengths looked up, longest first: a longer match predicts better, a shorter one
#: finds something more often.
_SIZES = (4, 3, 2)
#: The running acceptance estimate forgets old verifications at this rate (per verification).
_DECAY = 0.9
#: Prior: as if this many trials had been seen at _PRIOR_RATE (an optimistic start, so a job that
#: repeats its input drafts from its first tokens on).
_PRIOR_TRIALS = 2.0
_PRIOR_RATE = 0.6


def best_length(rate: float, cost: float, limit: int) -> int:
    """The draft length that maximises expected confirmed tokens minus the rows' cost.

    With each draft token confirmed (given the ones before it were) with probability ``rate``,
    token ``m`` of a draft is worth ``rate ** m`` tokens and costs ``cost`` steps' worth of
    compute: drafting token ``m`` pays while ``rate ** m > cost``.
    """
    if rate <= cost or limit <= 0:
        return 0
    if rate >= 1.0:
        return limit
    return max(0, min(limit, int(math.log(cost) / math.log(rate))))


class Drafter:
    """One job's n-gram index, its acceptance estimate and its counters.

    ``drafted`` and ``accepted`` are kept by the engine as it verifies (a job may end in the
    middle of a draft, and its final event must count what happened up to there).
    """

    __slots__ = ("tokens", "_index", "limit", "_hits", "_trials", "_shadow", "_shadow_seen", "drafted",
                 "accepted")

    def __init__(self, tokens: list[int], limit: int) -> None:
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}
        self.limit = limit  # the job's draft_max
        self._hits = _PRIOR_TRIALS * _PRIOR_RATE
        self._trials = _PRIOR_TRIALS
        #: the draft that would have been proposed while drafting did not pay, checked against the
        #: tokens that follow as they are generated; and how many of it matched so far
        self._shadow: list[int] | None = None
        self._shadow_seen = 0
        self.drafted = 0
        self.accepted = 0
        for tok in tokens:
            self.append(tok)

    @property
    def rate(self) -> float:
        """Estimated chance that a draft token is confirmed, given the ones before it were."""
        return self._hits / self._trials

    def append(self, tok: int) -> None:
        """``tok`` joins the context: index the n-grams it follows."""
        shadow = self._shadow
        if shadow is not None:
            if shadow[self._shadow_seen] == tok:
                self._shadow_seen += 1
                if self._shadow_seen == len(shadow):
                    self._shadow = None
                    self.verified(len(shadow), len(shadow))
            else:
                self._shadow = None
                self.verified(len(shadow), self._shadow_seen)
        toks = self.tokens
        t = len(toks)
        toks.append(tok)
        index = self._index
        for n in _SIZES:
            if t >= n:
                index[tuple(toks[t - n : t])] = t

    def propose(self, room: int, cost: float) -> list[int]:
        """Draft tokens that may follow the context: as many as pay at this row ``cost``, at most
        ``room``; none when the context's tail has not been seen before. While none pay, the
        proposal is kept as a shadow and checked against the tokens generated next."""
        k = best_length(self.rate, cost, min(room, self.limit))
        if k <= 0:
            if self._shadow is None and room > 0 and self.limit > 0:
                shadow = self._lookup(min(room, self.limit))
                if shadow:
                    self._shadow, self._shadow_seen = shadow, 0
            return []
        if self._shadow is not None:  # drafting for real again: the shadow's check is moot
            self._shadow = None
        return self._lookup(k)

    def _lookup(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the context's tail."""
        toks = self.tokens
        end = len(toks)
        index = self._index
        for n in _SIZES:
            if end < n:
                continue
            at = index.get(tuple(toks[end - n :]))
            if at is not None:
                draft = toks[at : at + k]
                for i, tok in enumerate(draft):
                    if tok < 0:  # an image placeholder is no token to propose
                        return draft[:i]
                return draft
        return []

    def verified(self, drafted: int, accepted: int) -> None:
        """The model confirmed the first ``accepted`` of the ``drafted`` tokens just proposed.

        Each confirmed token is a success; the first rejected one (if any) is the one failure —
        the tokens after it were never tried.
        """
        if drafted <= 0:
            return
        self._hits = _DECAY * self._hits + accepted
        self._trials = _DECAY * self._trials + accepted + (accepted < drafted)


class RowCost:
    """What one draft row adds to a decode step, as a share of a step without drafts, measured.

    The price of a row differs by an order of magnitude between a GPU (almost free) and a busy
    CPU (most of a step), so it is learnt from the decodes themselves: the running time of steps
    without drafts, per number of generating slots, against the time of steps with ``rows`` draft
    rows. Two prices: a slot alone in the batch, and a slot beside other sequences, where
    llama.cpp's equal split (one KV stream per slot) decodes a longer run in an extra pass.
    Steps that prefill a prompt are not observed (their time is the prompt's).
    """

    __slots__ = ("_plain", "_cost", "_since_plain")

    _ALPHA = 0.1
    _FLOOR, _CEILING = 0.01, 1.0
    #: a step without drafts at least this often (per number of generating slots), so the
    #: baseline stays measured even while every step could draft
    PLAIN_EVERY = 32

    def __init__(self, alone: float = DRAFT_ROW_COST, shared: float = DRAFT_ROW_COST_SHARED) -> None:
        self._plain: dict[int, float] = {}
        self._cost = [alone, shared]
        self._since_plain: dict[int, int] = {}

    def get(self, shared: bool) -> float:
        return self._cost[shared]

    def wants_plain(self, n_generating: int) -> bool:
        """True when the next step with this many generating slots should not draft."""
        return n_generating not in self._plain or self._since_plain.get(n_generating, 0) >= self.PLAIN_EVERY

    def observe(self, n_generating: int, rows: int, seconds: float, shared: bool) -> None:
        base = self._plain.get(n_generating)
        if rows == 0:
            self._plain[n_generating] = seconds if base is None else base + self._ALPHA * (seconds - base)
            self._since_plain[n_generating] = 0
            return
        self._since_plain[n_generating] = self._since_plain.get(n_generating, 0) + 1
        if not base:
            return
        sample = min(self._CEILING, max(self._FLOOR, (seconds / base - 1.0) / rows))
        self._cost[shared] += self._ALPHA * (sample - self._cost[shared])


#: One generating slot as the planner sees it: its drafter (``None``: ``draft_max`` 0), the room
#: its draft has (context and ``num_predict`` left, less the step's own token), and its pending
#: token (what padding repeats).
Candidate = tuple["Drafter | None", int, int]


def plan_drafts(candidates: Sequence[Candidate], budget: int, shared: bool, row_cost: RowCost) -> list[list[int]]:
    """The draft of each generating slot in one decode step, out of ``budget`` spare batch rows.

    A slot alone (``shared`` false) drafts what pays at the measured price of a row alone.

    Beside other sequences (``shared``), llama.cpp's equal split (one KV stream per slot) puts
    into one micro-batch the same number of tokens of each sequence; uneven runs cost a whole
    extra pass over the weights per length — 4 streams ran at half speed that way. So there every
    generating slot gets the same number of rows (:func:`_even_drafts`), the others padded with
    their pending token repeated (a cheap guess, right now and then in repetitive text). A slot
    that must not draft (``draft_max`` 0), or a recent plain step missing for the row price, means
    no drafts in this step.
    """
    drafts: list[list[int]] = [[] for _ in candidates]
    if row_cost.wants_plain(len(candidates)) or (shared and any(d is None for d, _, _ in candidates)):
        return drafts
    cost = row_cost.get(shared)
    rows = 0
    for i, (drafter, room, _) in enumerate(candidates):
        if drafter is None or room <= 0 or rows >= budget:
            continue
        if shared:  # the whole candidate: the step-wide length is chosen below
            drafts[i] = drafter.propose(min(room, budget), _ANY_PRICE)
        else:
            drafts[i] = drafter.propose(min(room, budget - rows), cost)
        rows += len(drafts[i])
    if shared and rows:
        return _even_drafts(candidates, drafts, budget, cost)
    return drafts


def _even_drafts(candidates: Sequence[Candidate], drafts: list[list[int]], budget: int, cost: float
                 ) -> list[list[int]]:
    """One draft length for all: the ``k`` that maximises expected confirmed tokens (slot i's
    draft token m is worth ``rate_i ** m``, padding nothing) minus ``cost`` per row, with
    ``n × k`` rows in all; drafts are cut to ``k`` and padded up to it."""
    n = len(candidates)
    rates = [drafter.rate for drafter, _, _ in candidates]  # type: ignore[union-attr]
    best_k, best, gain = 0, 0.0, 0.0
    for k in range(1, min(max(len(d) for d in drafts), budget // n) + 1):
        gain += sum(r**k for d, r in zip(drafts, rates) if len(d) >= k)
        if gain - cost * n * k > best:
            best_k, best = k, gain - cost * n * k
    out = []
    for (_, room, last), draft in zip(candidates, drafts):
        k = min(best_k, max(0, room))
        draft = draft[:k]
        if len(draft) < k:
            draft = draft + [draft[-1] if draft else last] * (k - len(draft))
        out.append(draft)
    return out
