"""Draft verification: which drafted tokens the model confirms, and cutting off the rest.

A generating slot may carry prompt-lookup draft tokens (:mod:`.drafting` proposes them and plans
how many each slot gets); after the decode, its rows are sampled one after another with the job's
own chain while the sampled token is the drafted one, and the rejected positions are removed from
the sequence. The engine hands in its ``sample`` function, so a confirmed token goes through
exactly the path an undrafted one takes (text stream, stop strings, end of generation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import llama_cpp as L

from trillama.actors.runner.drafting import RowCost, plan_drafts

if TYPE_CHECKING:
    from trillama.actors.runner.engine import Job
    from trillama.actors.runner.slots import Slot

__all__ = ["DraftVerifier"]


class DraftVerifier:
    """Plans the drafts of a step and verifies them after the decode; counts for the runner."""

    def __init__(self, mem, sample: Callable[["Slot", int, list, int], None]) -> None:
        self.mem = mem
        self.sample = sample
        self.drafted = 0  # draft tokens put in batches, all jobs
        self.accepted = 0  # of which the model confirmed

    def plan(self, generating: list["Slot"], budget: int, shared: bool, row_cost: RowCost) -> int:
        """Give generating slots draft tokens out of the ``budget`` that real tokens left over
        (:func:`.drafting.plan_drafts` decides); returns the draft rows.

        A draft may not reach past the job's context or its ``num_predict``: the step yields up
        to one token more than it drafts.
        """
        candidates = [
            (slot.job.drafter,
             min(slot.job.limit - len(slot.cached) - 1, slot.job.max_new - len(slot.job.generated) - 1),
             slot.job.last)
            for slot in generating
        ]
        rows = 0
        for slot, draft in zip(generating, plan_drafts(candidates, budget, shared, row_cost)):
            slot.job.draft = draft
            rows += len(draft)
        return rows

    def verify(self, slot: "Slot", job: "Job", i: int, events: list, now: int) -> None:
        """Sample row after row while the sampled token is the drafted one; drop the rest.

        Row ``i`` holds the logits after ``job.last``, row ``i + m + 1`` those after draft token
        ``m``. Each row is sampled with the job's own chain exactly as without drafts (the chain
        accepts only sampled tokens, and the random stream advances once per generated token), so
        greedy and seeded output are token-for-token what they would have been. For sampling this
        is the speculative acceptance rule with a point-mass draft: the draft survives with
        probability p(draft), and a rejection leaves a token drawn from p without it.
        """
        draft, job.draft = job.draft, []
        drafter = job.drafter
        drafter.drafted += len(draft)
        self.drafted += len(draft)  # counted first: the job may finish (and log) mid-draft
        start = len(slot.cached) - len(draft)  # KV position of the first draft token
        accepted = 0
        for m, tok in enumerate(draft):
            self.sample(slot, i + m, events, now)
            if slot.job is not job or job.last != tok:
                break
            accepted += 1
            drafter.accepted += 1
            self.accepted += 1
        else:
            self.sample(slot, i + len(draft), events, now)
        keep = start + accepted
        if keep < len(slot.cached):
            L.llama_memory_seq_rm(self.mem, slot.seq, keep, -1)
            del slot.cached[keep:]
        drafter.verified(len(draft), accepted)
