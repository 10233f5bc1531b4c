"""The continuous-batching loop: N slots, one llama context, one ``llama_decode`` per step.

One step is:

1. apply commands that arrived since the last step (new jobs, cancels, slot queries, embeds);
2. give waiting jobs free slots with the longest prefix of their prompt that is cached anywhere,
   so a chat's next turn, or a second session on the same system prompt, evaluates only its new
   tokens (:mod:`.placement`);
3. build ONE batch: the next token of every generating slot first, then chunks of pending
   prompts with what is left of ``n_batch`` (a long prompt is prefilled over several steps while
   the other streams keep getting a token per step);
4. ``llama_decode`` (the GIL is released inside it);
5. sample every slot that produced logits (with that slot's own chain and its own logits row),
   stream text, check stop conditions, and send all events of the step in one frame.

A job that finishes or is cancelled leaves its slot at once; the slot keeps the tokens that are in
its KV cache, for prefix reuse. Everything here runs on one thread: no locks in the hot path,
and the commands deque is the only thing other threads touch.

Images (a model with a vision projector, see :mod:`.media`): a job's prompt may contain image
spans. Text before an image is prefilled in the batch as usual and stops at the image; the image
itself is encoded and decoded into its slot by libmtmd at the start of a step, one image per step,
so the other streams keep going between pictures.

Context full while generating: with ``shift`` (Ollama's default) the slot keeps its first
``num_keep`` tokens, drops half of the rest, shifts positions down and goes on; without it, or
when the model's memory cannot shift, the job ends with ``done_reason: "length"``. A prompt that
does not fit the job's context at all is refused up front with kind ``context_exceeded``.
"""

from __future__ import annotations

import collections
import operator
import threading
import time
from typing import Callable

import attrs
import llama_cpp as L

from trillama.actors.runner import protocol as P
from trillama.actors.runner.drafting import DEFAULT_DRAFT_MAX, MAX_DRAFT_MAX, Drafter, RowCost
from trillama.actors.runner.embedding import ContextExceeded, Embedder
from trillama.actors.runner.logprobs import token_logprob_entry
from trillama.actors.runner.media import ImageSpan, MediaError, MediaPrompt, Vision
from trillama.actors.runner.messages import PROMPT_TOO_LONG, GenerateJob
from trillama.actors.runner.native import Batch, Model
from trillama.actors.runner.placement import Placement
from trillama.actors.runner.prompt_cache import ParkedStreams, PromptCache
from trillama.actors.runner.sampling import GrammarError, SamplerChain, build_chain
from trillama.actors.runner.slots import Slot
from trillama.actors.runner.textstream import TextStream
from trillama.actors.runner.verification import DraftVerifier
from trillama.logs import get_logger

__all__ = ["Engine", "JobError", "Job"]

log = get_logger("trillama.runner.engine")

_JOB_FIELDS = frozenset(f.name for f in attrs.fields(GenerateJob))
#: An idle engine waits this long for the rest of a burst before a prefill of at least
#: ``BURST_MIN_TOKENS`` (seconds; one such step takes ~0.3-2 s on a CPU).
BURST_WINDOW = 0.03
BURST_MIN_TOKENS = 64
_SEQ = operator.attrgetter("seq")


def _PENDING(slot: Slot) -> int:
    return len(slot.job.pending)


class JobError(Exception):
    """A job cannot start; ``kind`` as in ``Failed.kind``."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


@attrs.define(eq=False)
class Job:
    """A job inside the runner: its prompt, its sampler, and where it is in its life."""

    job_id: str
    prompt: list[int]
    chain: SamplerChain
    stream: TextStream
    limit: int  # tokens this job may occupy in its slot (the request's num_ctx)
    max_new: int  # tokens it may generate
    num_keep: int
    shift: bool
    logprobs: bool
    top_logprobs: int
    pending: list[int] = attrs.Factory(list)  # prompt tokens not yet in the KV cache
    generated: list[int] = attrs.Factory(list)
    last: int = -1  # sampled, not yet decoded
    i_batch: int = -1  # index of this job's output row in the current batch, -1 if none
    cached_count: int = 0
    t_start: int = 0
    t_first: int = 0
    held_logprobs: list = attrs.Factory(list)
    spans: list[ImageSpan] = attrs.Factory(list)  # images in ``prompt``, by start position
    media: MediaPrompt | None = None  # owns the image chunks of ``spans``
    drafter: Drafter | None = None  # prompt-lookup drafts; None when draft_max is 0
    draft: list[int] = attrs.Factory(list)  # tokens drafted after ``last`` in the current batch
    reuse: str = ""  # where the reused prefix came from: "slot", "copy", "ram", "disk" ("" none)
    leader: Slot | None = None  # while waiting for another slot to prefill our prefix: that slot
    leader_job: "Job | None" = None  # ... and the job prefilling it
    follow_upto: int = 0  # prompt tokens the leader will have computed for us

    def next_image(self, head: int) -> ImageSpan | None:
        """The first image that starts at or after prompt position ``head``."""
        for span in self.spans:
            if span.start >= head:
                return span
        return None

    def free(self) -> None:
        self.chain.free()
        if self.media is not None:
            self.media.free()
            self.media = None


class Engine:
    """Owns the generation context and its slots. Call :meth:`run` on the decode thread."""

    def __init__(
        self,
        model: Model,
        ctx: int,
        *,
        n_ctx: int,
        n_parallel: int,
        n_batch: int,
        n_threads: int,
        emit: Callable[[list], None],
        vision: Vision | None = None,
        cache: PromptCache | None = None,
        n_park: int = 0,
        share_prefixes: bool = True,
    ) -> None:
        self.model = model
        self.vision = vision
        self.ctx = ctx
        self.mem = L.llama_get_memory(ctx)
        self.can_shift = bool(L.llama_memory_can_shift(self.mem))
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.n_threads = n_threads
        self.batch = Batch(n_batch)
        self.slots = [Slot(seq=i) for i in range(n_parallel)]
        self.active: list[Slot] = []  # slots with a job, in admission order
        self.queue: collections.deque[Job] = collections.deque()  # jobs waiting for a slot
        self.commands: collections.deque[tuple] = collections.deque()
        self.wake = threading.Event()
        self.stopping = False
        self.emit = emit
        self._embedder: Embedder | None = None
        # Rejected drafts are cut off the sequence's tail; a recurrent memory cannot do that.
        self.can_draft = not (L.llama_model_is_recurrent(model.ptr) or L.llama_model_is_hybrid(model.ptr))
        self.row_cost = RowCost()
        self.verifier = DraftVerifier(self.mem, self._sample)
        # Prefixes move between slots by copying a sequence inside the KV cache, which is exact
        # for every attention model; recurrent memories cannot cut a copied sequence to a prefix.
        can_copy = self.can_draft and share_prefixes
        # Saved states restore exactly only without sliding-window layers: llama.cpp's state of
        # an SWA sequence loses the window's geometry (ggml-org/llama.cpp#25295; measured here on
        # gemma3: logits off by up to 0.74 after a restore, bit-identical for SmolLM2).
        n_swa = int(L.llama_model_n_swa(model.ptr))
        cache = cache if (cache is not None and can_copy and n_swa == 0) else None
        # ... those models park sequences in spare KV streams instead (exact: it is a copy).
        parking = (ParkedStreams(range(n_parallel, n_parallel + n_park))
                   if n_park > 0 and can_copy and cache is None else None)
        self.placement = Placement(ctx, self.mem, self.slots, can_copy=can_copy, cache=cache, parking=parking)

    # ------------------------------------------------------------------ called from other threads
    def submit(self, command: tuple) -> None:
        self.commands.append(command)
        self.wake.set()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()

    def prepare(self, job_id: str, spec: dict) -> Job:
        """Tokenize and validate a job, build its sampler (reader thread: keeps the loop lean)."""
        unknown = set(spec) - _JOB_FIELDS
        if unknown:
            raise JobError(f"unknown job fields: {sorted(unknown)}", "bad_request")
        model = self.model
        tokens = [int(t) for t in (spec.get("prompt_tokens") or [])]
        for t in tokens:
            if not 0 <= t < model.n_vocab:
                raise JobError(f"token {t} is outside the vocabulary", "bad_request")
        text = spec.get("prompt") or ""
        if text and model.proven_too_long(text, self._limit(spec)):
            # Longer than the context can hold, whatever the tokenizer makes of it: refused before
            # tokenizing, which would cost memory in proportion to the text (issue 12).
            raise JobError(PROMPT_TOO_LONG, "context_exceeded")
        media = self._media_prompt(text, spec.get("images") or ())
        try:
            return self._prepare(job_id, spec, tokens, text, media)
        except BaseException:
            if media is not None:
                media.free()
            raise

    def _limit(self, spec: dict) -> int:
        """The context this job may use: its ``num_ctx``, at most the runner's."""
        if spec.get("num_ctx"):
            return max(1, min(int(spec["num_ctx"]), self.n_ctx))
        return self.n_ctx

    def _media_prompt(self, text: str, images) -> MediaPrompt | None:
        if not images:
            return None
        if self.vision is None:
            raise JobError("this model does not support images (it has no vision projector)", "bad_request")
        try:
            return self.vision.tokenize(text, [bytes(image) for image in images])
        except MediaError as exc:
            raise JobError(str(exc), "bad_request") from None

    def _prepare(self, job_id: str, spec: dict, tokens: list[int], text: str, media: MediaPrompt | None) -> Job:
        model = self.model
        limit = self._limit(spec)
        if media is not None:
            text_tokens = media.tokens
        elif text:
            bounded = model.tokenize_bounded(text, limit, add_special=False, parse_special=True)
            if bounded is None:
                raise JobError(PROMPT_TOO_LONG, "context_exceeded")
            text_tokens = bounded
        else:
            text_tokens = []
        add_bos = spec.get("add_bos")
        if add_bos is None:
            add_bos = model.add_bos
        if add_bos and not tokens and model.bos >= 0 and text_tokens[:1] != [model.bos]:
            tokens.append(model.bos)
        offset = len(tokens)
        tokens.extend(text_tokens)
        if not tokens:
            raise JobError("empty prompt", "bad_request")
        spans = [] if media is None else [attrs.evolve(s, start=s.start + offset) for s in media.spans]
        if len(tokens) > limit:
            raise JobError(PROMPT_TOO_LONG, "context_exceeded")
        top = int(spec.get("top_logprobs") or 0)
        if not 0 <= top <= 20:
            raise JobError("top_logprobs must be between 0 and 20", "bad_request")
        num_predict = int(spec.get("num_predict", -1))
        draft_max = spec.get("draft_max")
        draft_max = DEFAULT_DRAFT_MAX if draft_max is None else int(draft_max)
        if not 0 <= draft_max <= MAX_DRAFT_MAX:
            raise JobError(f"draft_max must be between 0 and {MAX_DRAFT_MAX}", "bad_request")
        try:
            chain = build_chain(model, spec, n_ctx=limit)
        except GrammarError as exc:
            raise JobError(str(exc), "bad_grammar") from None
        if chain.penalties:
            last_n = int(spec.get("repeat_last_n", 64))
            history = tokens[-(limit if last_n < 0 else last_n) :]
            chain.seed_history([t for t in history if t >= 0] if spans else history)
        return Job(
            job_id=job_id,
            prompt=tokens,
            chain=chain,
            stream=TextStream(tuple(spec.get("stop") or ())),
            limit=limit,
            max_new=num_predict if num_predict >= 0 else 10 * limit,
            num_keep=int(spec.get("num_keep", 4)),
            shift=bool(spec.get("shift", True)),
            logprobs=bool(spec.get("logprobs")) or top > 0,
            top_logprobs=top,
            spans=spans,
            media=media,
            drafter=Drafter(tokens, draft_max) if draft_max else None,
        )

    # ------------------------------------------------------------------ the decode thread
    def run(self) -> None:
        while not self.stopping:
            idle = not self.active and not self.queue
            if idle and not self.commands:
                self.wake.wait()
            self.wake.clear()
            try:
                self._apply_commands()
                if idle and self._worth_a_window():
                    self._gather_burst()
                if self.queue:
                    self.placement.admit(self.queue, self.active)
                if self.active:
                    self.step()
            except Exception as exc:  # keep the process (and the other models' server) alive
                log.exception("engine_step_failed")
                self._fail_everything(f"internal error: {exc}")

    def _worth_a_window(self) -> bool:
        """Is the first job of an idle engine's next step a prefill long enough to share?"""
        return any(len(job.prompt) >= BURST_MIN_TOKENS for job in self.queue)

    def _gather_burst(self) -> None:
        """Wait ``BURST_WINDOW`` for the rest of a burst before the first step of an idle engine.

        Requests sent together reach the runner a few milliseconds apart (each is rendered,
        tokenized and framed on its own). Starting the first one's prefill at once would leave the
        others waiting a whole step behind it: four 150-token prompts took one step of 1.25 s for
        the first and another of 1.9 s for the other three (all four at 3.1 s), where one step for
        all four takes ~2.5 s. Only when the engine is idle, and only for a prompt long enough that
        its step dwarfs the wait.
        """
        deadline = time.monotonic() + BURST_WINDOW
        while (left := deadline - time.monotonic()) > 0:
            if self.wake.wait(left):
                self.wake.clear()
                self._apply_commands()

    def _apply_commands(self) -> None:
        commands = self.commands
        while commands:
            cmd = commands.popleft()
            op = cmd[0]
            if op == P.OP_GENERATE:
                self.queue.append(cmd[1])
            elif op == P.OP_CANCEL:
                self._cancel(cmd[1])
            elif op == P.OP_SLOTS:
                self.emit([[P.EV_REPLY, cmd[1], {"slots": self.slot_states(), "n_threads": self.n_threads,
                                                 "cache": self.placement.stats()}]])
            elif op == P.OP_CACHE_LIMIT:
                self.emit([[P.EV_REPLY, cmd[1], self.placement.set_cache_limit(cmd[2])]])
            elif op == P.OP_THREADS:
                self.set_threads(cmd[1])
            elif op == P.OP_EMBED:
                self._embed(cmd[1], cmd[2], cmd[3])

    def set_threads(self, n: int) -> None:
        """Decode with ``n`` threads from now on (the scheduler shares the cores among busy runners)."""
        n = max(1, int(n))
        if n == self.n_threads:
            return
        L.llama_set_n_threads(self.ctx, n, n)
        if self._embedder is not None:
            L.llama_set_n_threads(self._embedder.ctx, n, n)
        log.debug("threads_set", n_threads=n, was=self.n_threads)
        self.n_threads = n

    def slot_states(self) -> list[dict]:
        """Each slot's bookkeeping, and the KV cells llama.cpp itself holds for its sequence.

        ``n_cells`` is read from the context's memory (the span of positions the sequence
        occupies), not from ``cached``: the gateway metrics report real cache use, and a test can
        hold the two against each other. ``n_ctx`` is the sequence's share of the cells.
        """
        n_ctx_seq = int(L.llama_n_ctx_seq(self.ctx))
        out = []
        for s in self.slots:
            top = int(L.llama_memory_seq_pos_max(self.mem, s.seq))
            bottom = int(L.llama_memory_seq_pos_min(self.mem, s.seq))
            out.append({
                "seq": s.seq,
                "busy": s.job is not None,
                "job_id": s.job.job_id if s.job is not None else None,
                "n_cached": len(s.cached),
                "n_cells": top - bottom + 1 if top >= 0 else 0,
                "n_ctx": n_ctx_seq,
            })
        return out

    def _cancel(self, job_id: str) -> None:
        # Answered with the job's counts so far: the server logs what a request it gave up on cost.
        for job in self.queue:
            if job.job_id == job_id:
                self.queue.remove(job)
                job.free()
                self.emit([P.cancelled_event(job_id)])
                return
        for slot in self.active:
            if slot.job.job_id == job_id:
                events: list = []
                self._finish(slot, "cancel", events, flush=False)
                self.emit(events)
                log.debug("job_cancelled", job_id=job_id, seq=slot.seq, n_cached=len(slot.cached))
                return

    def _embed(self, req_id: int, inputs: list[str], truncate: bool) -> None:
        try:
            if self._embedder is None:
                self._embedder = Embedder(self.model, n_ctx=self.n_ctx, n_threads=self.n_threads)
            vectors, counts = self._embedder.embed(list(inputs), bool(truncate))
        except ContextExceeded as exc:
            self.emit([[P.EV_ERROR, req_id, str(exc), "context_exceeded"]])
        except Exception as exc:
            log.exception("embed_failed")
            self.emit([[P.EV_ERROR, req_id, str(exc), "internal"]])
        else:
            self.emit([[P.EV_REPLY, req_id, [vectors, counts]]])

    def _release(self, slot: Slot) -> None:
        job = slot.job
        if job is not None:
            job.free()
        slot.job = None
        slot.last_used = time.monotonic_ns()
        self.active.remove(slot)

    def _make_room(self, slot: Slot, job: Job) -> bool:
        """Context shift: keep ``num_keep`` tokens, drop half of the rest, slide positions down."""
        if not (job.shift and self.can_shift):
            return False
        n_past = len(slot.cached)
        keep = max(0, min(job.num_keep, n_past - 1))
        if keep == 0 and slot.cached and slot.cached[0] == self.model.bos and self.model.add_bos:
            keep = 1
        discard = (n_past - keep) // 2
        if discard <= 0:
            return False
        mem, seq = self.mem, slot.seq
        if not L.llama_memory_seq_rm(mem, seq, keep, keep + discard):
            return False
        L.llama_memory_seq_add(mem, seq, keep + discard, -1, -discard)
        del slot.cached[keep : keep + discard]
        log.debug("context_shift", job_id=job.job_id, seq=seq, keep=keep, discard=discard)
        return True

    def step(self) -> None:
        """Build one batch, decode it, sample, emit. The per-token hot path."""
        batch = self.batch
        tok_arr, pos_arr, seq_arr, out_arr = batch.token, batch.pos, batch.seq, batch.logits
        events: list = []
        if self.vision is not None:
            self._decode_one_image(events)
        generating: list[Slot] = []
        for slot in self.active[:]:
            job = slot.job
            if job.pending:
                continue
            if len(slot.cached) >= job.limit and not self._make_room(slot, job):
                self._finish(slot, "length", events)
                continue
            generating.append(slot)
        if any(s.job.leader is not None for s in self.active):
            self.placement.resolve_followers(self.active)
        # Prompt chunks share what is left of n_batch, the job with the fewest prompt tokens left
        # first: a short request beside a long prefill gets its first token after one step, not
        # after the whole long prompt (the long one loses a few tokens of one step).
        chunk: dict[int, int] = {}  # slot.seq -> prompt tokens it puts in this batch
        budget = self.n_batch - len(generating)
        if budget > 0:
            for slot in sorted(self.active, key=_PENDING):
                job = slot.job
                if not job.pending or job.leader is not None:
                    continue
                room = budget
                if job.spans:
                    image = job.next_image(len(slot.cached))
                    if image is not None:
                        room = min(budget, image.start - len(slot.cached))
                        if room <= 0:  # an image comes first: _decode_one_image's job
                            continue
                chunk[slot.seq] = take = min(room, len(job.pending))
                budget -= take
                if budget <= 0:
                    break
        rows = 0
        if budget > 0 and generating and self.can_draft:
            rows = self.verifier.plan(generating, budget, len(generating) > 1 or bool(chunk), self.row_cost)
        # Written in sequence-id order. With one KV stream per slot, llama.cpp puts into one
        # micro-batch only sequences whose ids increase by one in batch order; any other order
        # (slots taken 2, 0, 3, 1 by prefix reuse) splits every step into several decodes.
        # Measured: 4 streams at 29-33 tokens/s each in shuffled order, 41 in order.
        n = 0
        for slot in sorted(generating + [s for s in self.active if s.seq in chunk], key=_SEQ):
            job = slot.job
            if job.pending:
                k = chunk[slot.seq]
                take, rest = job.pending[:k], job.pending[k:]
                n = batch.add_run(n, take, len(slot.cached), slot.seq, logits_last=not rest)
                slot.cached.extend(take)
                job.pending = rest
                job.i_batch = -1 if rest else n - 1
            else:
                cached = slot.cached
                seq = slot.seq
                tok_arr[n] = job.last
                pos_arr[n] = len(cached)
                seq_arr[n] = seq
                out_arr[n] = 1
                job.i_batch = n
                cached.append(job.last)
                n += 1
                for tok in job.draft:  # every draft position gets its logits row too
                    tok_arr[n] = tok
                    pos_arr[n] = len(cached)
                    seq_arr[n] = seq
                    out_arr[n] = 1
                    cached.append(tok)
                    n += 1
        if n == 0:
            if events:
                self.emit(events)
            return
        batch.struct.n_tokens = n
        t0 = time.perf_counter()
        rc = L.llama_decode(self.ctx, batch.struct)
        self.placement.copied.clear()  # llama.cpp applied the copies before this batch
        if not chunk and generating:
            self.row_cost.observe(len(generating), rows, time.perf_counter() - t0, len(generating) > 1)
        if rc != 0:
            self._decode_failed(rc, events)
            return
        self._sample_all(events)
        if events:
            self.emit(events)

    def _sample_all(self, events: list) -> None:
        now = 0
        for slot in self.active[:]:
            job = slot.job
            i = job.i_batch
            if i < 0:
                continue
            job.i_batch = -1
            if not job.t_first:
                now = now or time.monotonic_ns()
            if job.draft:
                self.verifier.verify(slot, job, i, events, now)
            else:
                self._sample(slot, i, events, now)

    def _sample(self, slot: Slot, i: int, events: list, now: int) -> None:
        """Sample ``slot``'s next token from output row ``i`` of the last decode, stream it."""
        job = slot.job
        ctx = self.ctx
        model = self.model
        if not job.t_first:
            job.t_first = now or time.monotonic_ns()
            if job.max_new == 0:
                self._finish(slot, "length", events)
                return
        tok = L.llama_sampler_sample(job.chain.ptr, ctx, i)
        if model.is_eog(tok):
            self._finish(slot, "stop", events)
            return
        job.generated.append(tok)
        if job.drafter is not None:
            job.drafter.append(tok)
        data = model.pieces.get(tok)
        if data is None:
            data = model.piece(tok)
        text, stopped = job.stream.push(data)
        if job.logprobs:
            job.held_logprobs.append(
                token_logprob_entry(ctx, i, model.n_vocab, tok, job.top_logprobs, model.piece)
            )
        if stopped:
            self._finish(slot, "stop", events, text=text, flush=False)
            return
        if len(job.generated) >= job.max_new:
            self._finish(slot, "length", events, text=text)
            return
        if text:
            if job.logprobs:
                events.append([P.EV_PIECE, job.job_id, text, job.held_logprobs])
                job.held_logprobs = []
            else:
                events.append([P.EV_PIECE, job.job_id, text, None])
        job.last = tok

    def _decode_one_image(self, events: list) -> None:
        """Encode and decode the next image of the oldest job that is waiting on one.

        One image per step: encoding a picture can take a while on a CPU, and the slots that are
        generating should get their next token between two pictures, not after all of them.
        """
        for slot in self.active:
            job = slot.job
            if not job.pending or not job.spans:
                continue
            head = len(slot.cached)
            image = job.next_image(head)
            if image is None or image.start != head:
                continue
            last = image.n_pos == len(job.pending)
            try:
                end = self.vision.eval_image(self.ctx, image, n_past=head, seq=slot.seq,
                                             n_batch=self.n_batch, logits_last=last)
            except MediaError as exc:
                log.error("image_decode_failed", job_id=job.job_id, seq=slot.seq, error=str(exc))
                L.llama_memory_seq_rm(self.mem, slot.seq, head, -1)
                events.append([P.EV_FAILED, job.job_id, str(exc), "decode_failed"])
                self._release(slot)
                return
            if end != head + image.n_pos:  # a projector that positions differently: keep the truth
                log.warning("image_positions", job_id=job.job_id, expected=head + image.n_pos, got=end)
            slot.cached.extend(job.pending[: image.n_pos])
            job.pending = job.pending[image.n_pos :]
            if last:  # the prompt ends with the image: its logits are the ones to sample from
                self._sample(slot, -1, events, 0)
            return

    def _finish(self, slot: Slot, reason: str, events: list, *, text: str = "", flush: bool = True) -> None:
        job = slot.job
        drafter = job.drafter
        now = time.monotonic_ns()
        if flush:
            text += job.stream.flush()
        if text or job.held_logprobs:
            events.append([P.EV_PIECE, job.job_id, text, job.held_logprobs if job.logprobs else None])
            job.held_logprobs = []
        t_first = job.t_first or now
        self.placement.count(job)
        events.append(
            [
                P.EV_DONE,
                job.job_id,
                {
                    "done_reason": reason,
                    "prompt_eval_count": len(job.prompt) - job.cached_count,
                    "prompt_eval_duration_ns": t_first - job.t_start,
                    "eval_count": len(job.generated),
                    "eval_duration_ns": now - t_first,
                    # placeholders of images are not tokens: a client cannot send them back
                    "context": (job.prompt if not job.spans else [t for t in job.prompt if t >= 0])
                    + job.generated,
                    "cached_count": job.cached_count,
                    "draft_count": drafter.drafted if drafter is not None else 0,
                    "draft_accepted": drafter.accepted if drafter is not None else 0,
                    "reuse": job.reuse,
                    "cache_bytes": self.placement.cache_bytes(),
                },
            ]
        )
        if drafter is not None and drafter.drafted:
            log.info("job_drafts", job_id=job.job_id, seq=slot.seq, eval_count=len(job.generated),
                     drafted=drafter.drafted, accepted=drafter.accepted,
                     runner_drafted=self.verifier.drafted, runner_accepted=self.verifier.accepted)
        self._release(slot)

    def _decode_failed(self, rc: int, events: list) -> None:
        """Fail the jobs that had tokens in the failed batch and forget their (now unknown) KV."""
        log.error("decode_failed", rc=rc)
        message = f"llama_decode failed ({rc})"
        for slot in self.active[:]:
            job = slot.job
            # every active job contributed (a generating token or a prefill chunk) unless its
            # prefill had to wait for budget; failing all active jobs is the safe side
            L.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            slot.cached.clear()
            events.append([P.EV_FAILED, job.job_id, message, "decode_failed"])
            self._release(slot)
        self.emit(events)

    def _fail_everything(self, message: str) -> None:
        events = []
        for slot in self.active[:]:
            events.append([P.EV_FAILED, slot.job.job_id, message, "internal"])
            self._release(slot)
        while self.queue:
            job = self.queue.popleft()
            job.free()
            events.append([P.EV_FAILED, job.job_id, message, "internal"])
        L.llama_memory_clear(self.mem, True)
        for slot in self.slots:
            slot.cached.clear()
        self.placement.forget_all()
        if events:
            try:
                self.emit(events)
            except Exception:
                log.exception("emit_failed")

    def close(self) -> None:
        for slot in self.active[:]:
            self._release(slot)
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
