"""Placement: which slot a job gets, and where the prefix of its prompt comes from.

Why a module of its own: the batching loop (:mod:`.engine`) only needs jobs in slots with some
prompt tokens already in their KV sequence; *which* tokens and *how they got there* is a policy
with its own costs and rules (copies inside the KV cache, saved states, spare parking streams,
waiting for another slot's prefill), and it grew with the prompt cache (issue 22). Everything
here runs on the engine's decode thread, between two decodes.

The sources of a reused prefix, named as the ``reuse`` field of a finished job reports them:

* ``slot`` — the slot the job gets already holds it (a chat's next turn);
* ``copy`` — another slot holds it, and its sequence is copied inside the KV cache
  (``llama_memory_seq_cp``) and cut to the shared prefix;
* ``park`` — a spare KV stream holds it (a sliding-window model's sequence parked there before
  its slot was taken: such states cannot be saved and restored exactly);
* ``ram`` / ``disk`` — the prompt cache holds a saved state of it (:mod:`.prompt_cache`).

A copy is applied by llama.cpp before the next decode; until then nothing may touch either
stream, which is what :attr:`Placement.copied` tracks (the engine clears it after each decode).
"""

from __future__ import annotations

import collections
import ctypes
import time
from typing import TYPE_CHECKING

import llama_cpp as L

from trillama.actors.runner.prompt_cache import MIN_ENTRY_TOKENS, ParkedStreams, PromptCache
from trillama.actors.runner.slots import Slot, best_free_slot, common_prefix
from trillama.logs import get_logger

if TYPE_CHECKING:
    from trillama.actors.runner.engine import Job

__all__ = ["Placement", "MOVE_MIN_GAIN", "FOLLOW_MIN_GAIN"]

log = get_logger("trillama.runner.placement")

#: Prefill tokens a copy or restore of a prefix must save over what the slot holds itself (a copy
#: moves the whole sequence's cells; on a CPU a step of 512 prompt tokens costs ~1-2 s, a copy of
#: a 32k-cell stream a fraction of that).
MOVE_MIN_GAIN = 128
#: Prefill tokens that make waiting for another slot's prefill worth it instead of computing them.
FOLLOW_MIN_GAIN = 256


class Placement:
    """Admits waiting jobs into free slots with the longest prefix they can reuse from anywhere.

    ``can_copy``: prefixes may move between slots (a copied sequence can be cut to a prefix,
    which recurrent memories cannot do; a runner may also be told not to share).
    ``cache``: the prompt cache of saved states, only for models whose states restore exactly.
    ``parking``: spare KV streams for the models whose states do not (sliding-window layers).
    """

    def __init__(self, ctx, mem, slots: list[Slot], *, can_copy: bool, cache: PromptCache | None,
                 parking: ParkedStreams | None) -> None:
        self.ctx = ctx
        self.mem = mem
        self.slots = slots
        self.can_copy = can_copy
        self.cache = cache
        self.parking = parking
        self.copied: set[int] = set()  # sequences a copy touched since the last decode
        self.reuse_counts = {"slot": 0, "copy": 0, "park": 0, "ram": 0, "disk": 0}  # jobs, by source
        self.tokens_reused = 0
        self.tokens_computed = 0

    def admit(self, queue: collections.deque[Job], active: list[Slot]) -> None:
        """Give waiting jobs free slots, each with the longest prefix it can reuse from anywhere.

        Where a prompt's prefix can come from, best first at equal length:

        * the free slot it gets already holds it (a chat's next turn): nothing to do — unless the
          slot holds a longer history that the prompt leaves (another session on the same system
          prompt): then the prefix is copied into another free slot and the history stays;
        * another slot holds more of it (a second session of an agent beside the first): the
          sequence is copied inside the KV cache (``llama_memory_seq_cp``) and cut to the prefix;
        * the prompt cache holds more of it (a session whose slot another request took): the
          saved state is restored into the slot;
        * another slot is still *prefilling* more of it: the job waits for that prefill (it holds
          its slot, computes nothing) and then copies it, so four sessions that start together
          with one system prompt compute it once instead of four times.

        Moving a prefix costs a copy of the sequence's cells, so it has to save at least
        ``MOVE_MIN_GAIN`` tokens of prefill over what the slot itself holds, and waiting for a
        prefill ``FOLLOW_MIN_GAIN``. Before a slot's tokens are overwritten, they are saved to the
        prompt cache (where the model's states restore exactly), so they survive the slot being
        taken.
        """
        self.resolve_followers(active)
        now = time.monotonic_ns()
        while queue:
            free = [s for s in self.slots if s.job is None]
            if not free:
                return
            job = queue[0]
            prompt = job.prompt
            slot, k = best_free_slot(free, prompt)
            plan = self._better_source(job, k, active)
            if (plan is None and self.can_copy and k >= MOVE_MIN_GAIN and len(free) > 1
                    and len(slot.cached) - k >= MOVE_MIN_GAIN):
                # Another session's history starts with our prefix (the shared system prompt):
                # copy the prefix out instead of cutting that history short.
                plan = ("copy", slot)
            if plan is not None:
                target = self._target_slot(free, plan)
                if target is None:  # the slots involved are in a copy already: next step
                    return
                slot = target
            queue.popleft()
            job.t_start = now
            slot.job = job
            active.append(slot)
            if plan is None:
                self._take_in_place(slot, job, k)
            elif plan[0] == "follow":
                _, leader, upto = plan
                job.leader, job.leader_job, job.follow_upto = leader, leader.job, upto
                job.pending = list(prompt)  # nothing computed yet; the leader's copy decides
                log.debug("job_follows", job_id=job.job_id, seq=slot.seq, leader=leader.seq, upto=upto)
            elif plan[0] == "copy":
                self._copy_into(slot, plan[1], job)
            elif plan[0] == "park":
                self.parking.hit(plan[1])
                self._copy_seq(slot, plan[1], self.parking.tokens(plan[1]), job, "park")
            else:
                if not self._restore_into(slot, plan[1], job):
                    self._take_in_place(slot, job, common_prefix(slot.cached, prompt))

    def _better_source(self, job: Job, k_here: int, active: list[Slot]) -> tuple | None:
        """Where ``job`` can get more of its prefix than ``k_here`` tokens, if anywhere worth it."""
        prompt = job.prompt
        usable = len(prompt) - 1  # the last prompt token is always decoded: its logits are needed
        if job.spans or usable - k_here < MOVE_MIN_GAIN:
            return None
        best: tuple | None = None
        best_k = k_here + MOVE_MIN_GAIN - 1
        if self.can_copy:
            for other in self.slots:
                if other.job is not None and other.job.leader is not None:
                    continue  # its tokens are not the ones its job will have
                k = min(common_prefix(other.cached, prompt), usable)
                if k > best_k:
                    best, best_k = ("copy", other), k
        if self.cache is not None:
            entry, k = self.cache.best(prompt)
            if entry is not None and min(k, usable) > best_k:
                best, best_k = (entry.tier, entry), min(k, usable)
        if self.parking is not None:
            seq, k = self.parking.best(prompt)
            if seq is not None and min(k, usable) > best_k:
                best, best_k = ("park", seq), min(k, usable)
        if self.can_copy:
            have = max(best_k, k_here)
            for other in active:
                lead = other.job
                if not lead.pending or lead.leader is not None or lead.spans:
                    continue
                k = min(common_prefix(lead.prompt, prompt), usable)
                if k - have >= FOLLOW_MIN_GAIN and k > len(other.cached):
                    best, best_k, have = ("follow", other, k), k, k
        return best

    def _target_slot(self, free: list[Slot], plan: tuple) -> Slot | None:
        """The free slot a moved prefix goes into: an empty one, else the least recently used."""
        source = plan[1] if plan[0] in ("copy", "follow") else None
        candidates = [s for s in free if s is not source and s.seq not in self.copied]
        if source is not None and source.seq in self.copied:
            return None
        if plan[0] == "park" and plan[1] in self.copied:
            return None
        if not candidates:
            return None
        return min(candidates, key=lambda s: (bool(s.cached), s.last_used))

    def _take_in_place(self, slot: Slot, job: Job, k: int) -> None:
        """Reuse the first ``k`` tokens the slot holds; the rest of the prompt is computed."""
        prompt = job.prompt
        k = self._cut_point(job, min(k, len(prompt) - 1))
        if k < len(slot.cached):
            self._save(slot, lose_from=k)
            if not L.llama_memory_seq_rm(self.mem, slot.seq, k, -1):
                L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
                k = 0
            del slot.cached[k:]
        self._start(job, k, "slot" if k else "")

    @staticmethod
    def _cut_point(job: Job, k: int) -> int:
        for span in job.spans:  # an image is decoded whole or not at all
            if span.start < k < span.start + span.n_pos:
                k = span.start
        return k

    def _start(self, job: Job, k: int, source: str) -> None:
        job.pending = job.prompt[k:]
        job.cached_count = k
        job.reuse = source
        if source:
            self.reuse_counts[source] += 1

    def _copy_into(self, slot: Slot, source: Slot, job: Job) -> None:
        """Copy ``source``'s sequence into ``slot`` inside the KV cache and keep the shared prefix.

        With one KV stream per slot llama.cpp copies the whole stream (it does so before the next
        decode; nothing may touch either stream in between, hence ``_copied``).
        """
        self._copy_seq(slot, source.seq, source.cached, job, "copy")

    def _copy_seq(self, slot: Slot, src: int, src_tokens: list[int], job: Job, tier: str) -> None:
        k = self._cut_point(job, min(common_prefix(src_tokens, job.prompt), len(job.prompt) - 1))
        self._save(slot, lose_from=0)
        L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        L.llama_memory_seq_cp(self.mem, src, slot.seq, -1, -1)
        if not L.llama_memory_seq_rm(self.mem, slot.seq, k, -1):
            L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            k = 0
        slot.cached = list(src_tokens[:k])
        self.copied.update((slot.seq, src))
        log.debug("prefix_copied", job_id=job.job_id, seq=slot.seq, source=src, tier=tier, n_tokens=k)
        self._start(job, k, tier if k else "")

    def _restore_into(self, slot: Slot, entry, job: Job) -> bool:
        """Restore a saved state into ``slot`` and keep the prefix it shares with the prompt."""
        tier = entry.tier
        entry = self.cache.load(entry)
        if entry is None:
            return False
        self._save(slot, lose_from=0)
        L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        state = entry.state
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if L.llama_state_seq_set_data(self.ctx, buf, len(state), slot.seq) != len(state):
            log.warning("prompt_cache_restore_failed", job_id=job.job_id, seq=slot.seq)
            L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            slot.cached = []
            return False
        k = self._cut_point(job, min(common_prefix(entry.tokens, job.prompt), len(job.prompt) - 1))
        if not L.llama_memory_seq_rm(self.mem, slot.seq, k, -1):
            L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            k = 0
        slot.cached = list(entry.tokens[:k])
        log.debug("prefix_restored", job_id=job.job_id, seq=slot.seq, tier=tier, n_tokens=k)
        self._start(job, k, tier if k else "")
        return True

    def _save(self, slot: Slot, *, lose_from: int) -> None:
        """Keep the slot's sequence in the prompt cache before its tokens from ``lose_from`` on go.

        Only when something worth a state is lost, the cache does not hold it already and no other
        slot holds it either.
        """
        cache, parking = self.cache, self.parking
        tokens = slot.cached
        if ((cache is None and parking is None) or len(tokens) < MIN_ENTRY_TOKENS
                or len(tokens) - lose_from < MIN_ENTRY_TOKENS or slot.seq in self.copied
                or (cache if cache is not None else parking).covers(tokens)):
            return
        n = len(tokens)
        for other in self.slots:
            if other is not slot and len(other.cached) >= n and other.cached[:n] == tokens:
                return
        if parking is not None:
            seq = parking.stream_for(tokens, self.copied)
            if seq is None:
                return
            L.llama_memory_seq_rm(self.mem, seq, -1, -1)
            L.llama_memory_seq_cp(self.mem, slot.seq, seq, -1, -1)
            parking.record(seq, tokens)
            self.copied.update((slot.seq, seq))
            log.debug("sequence_parked", seq=slot.seq, stream=seq, n_tokens=n)
            return
        size = L.llama_state_seq_get_size(self.ctx, slot.seq)
        data = bytearray(size)
        got = L.llama_state_seq_get_data(self.ctx, (ctypes.c_uint8 * size).from_buffer(data), size, slot.seq)
        if got != size:
            log.warning("prompt_cache_save_failed", seq=slot.seq, n_tokens=n)
            return
        if cache.put(list(tokens), bytes(data)):
            log.debug("prompt_cache_saved", seq=slot.seq, n_tokens=n, bytes=size, cache_bytes=cache.bytes)

    def resolve_followers(self, active: list[Slot]) -> None:
        """Followers whose leader has computed their prefix (or stopped) copy it now."""
        for slot in active:
            job = slot.job
            leader = job.leader
            if leader is None:
                continue
            if leader.job is job.leader_job and len(leader.cached) < job.follow_upto:
                continue
            if leader.seq in self.copied or slot.seq in self.copied:
                continue
            job.leader = job.leader_job = None
            k = min(common_prefix(leader.cached, job.prompt), len(job.prompt) - 1)
            if k >= MOVE_MIN_GAIN or k > common_prefix(slot.cached, job.prompt):
                self._copy_into(slot, leader, job)
            else:
                self._take_in_place(slot, job, common_prefix(slot.cached, job.prompt))
            log.debug("job_follow_resolved", job_id=job.job_id, seq=slot.seq, leader=leader.seq,
                      n_tokens=job.cached_count)

    def count(self, job: "Job") -> None:
        """Account a finished job's prompt: the tokens it reused and the ones it computed."""
        self.tokens_reused += job.cached_count
        self.tokens_computed += len(job.prompt) - job.cached_count

    def cache_bytes(self) -> int:
        return self.cache.bytes if self.cache is not None else 0

    def stats(self) -> dict:
        """The prompt cache and prefix reuse, for /api/runners and /metrics."""
        out = {"enabled": self.cache is not None or self.parking is not None, "reuse": dict(self.reuse_counts),
               "tokens_reused": self.tokens_reused, "tokens_computed": self.tokens_computed}
        if self.cache is not None:
            out.update(self.cache.stats())
        if self.parking is not None:
            out.update(self.parking.stats())
        return out

    def set_cache_limit(self, limit: int) -> dict:
        if self.cache is not None:
            before = self.cache.bytes
            self.cache.set_limit(limit)
            log.info("prompt_cache_limit", limit=limit, bytes_before=before, bytes_after=self.cache.bytes)
        return self.stats()

    def forget_all(self) -> None:
        """The KV memory was cleared: nothing is parked any more."""
        if self.parking is not None:
            self.parking.clear()
