"""The model actor: one Trio task family per loaded model, owning that model's runner process.

Requests reach the actor through a *rendezvous* hand-off (like a memory channel of buffer 0, with
the waiting senders kept per tenant: ``actors/fair.py``): a request is handed
over only when the dispatcher has a free slot to give it, so the senders blocked on the channel
*are* the queue. That makes the bound exact and cheap to keep:

* ``pending`` counts leases that have not yet got a slot (waiting for the load, or for a slot);
  at ``max_queue`` the next one is refused at once with :class:`ServerBusy` — whether the model is
  still loading or already serving (Ollama only bounds the former, ollama#7758);
* a client that goes away while queued simply stops waiting on ``send``: Trio removes it from the
  channel at once, and the lease's ``finally`` gives its queue place back;
* the queue is fair between *tenants* (an opaque id the caller passes with the lease request: the
  API key's id): free slots go round robin between them (``actors/fair.py``), and a full queue
  makes room for a tenant holding fewer places by refusing the newest place of the one holding
  the most, so one key flooding the queue cannot keep another out. Without tenants (no keys)
  it is first come, first served.

Each admitted request gets its own channel of events (tokens, then one final event), which the
runner client fills directly: a token goes from the runner's pipe to the task that writes it to
the client without passing through a task of the actor's (each hop would cost a task switch per
token). The actor's job task only holds the slot until the job is over. When the HTTP side
leaves, the lease cancels the job, and the runner frees the slot at its next decode step.
"""

from __future__ import annotations

import itertools
import math
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Hashable

import attrs
import trio

from trillama.actors.fair import FairQueue
from trillama.actors.memory import MemoryEstimate, Placement
from trillama.actors.runner.messages import TEXT_BYTES_PER_TOKEN, RunnerRequestError
from trillama.logs import get_logger

if TYPE_CHECKING:
    from trillama.actors.runner.client import JobHandle, Runner, RunnerSpec

__all__ = [
    "LoadOptions",
    "ModelActor",
    "ModelGone",
    "ServerBusy",
    "LoadFailed",
    "Lease",
]

log = get_logger("trillama.actors.model")

_job_ids = itertools.count(1)

#: How long a request that left early waits for the runner's counts of its cancelled job.
CANCEL_ANSWER_SECONDS = 2.0


class ServerBusy(Exception):
    """The model's queue is full; the client should retry later (HTTP 503)."""


class ModelGone(Exception):
    """The actor stopped (evicted, expired, crashed) before it could take the request; retry."""


class LoadFailed(Exception):
    """The runner could not load the model (corrupt file, out of memory…)."""


@attrs.frozen
class LoadOptions:
    """Options that shape the loaded runner. Any difference means a different runner…

    …except ``num_ctx``: a request that asks for *less* context than a loaded runner has is served
    by that runner, with the smaller limit applied per request (Ollama reloads here, ollama#6148).
    """

    num_ctx: int
    num_parallel: int
    num_batch: int = 512
    num_gpu: int = -1
    num_thread: int = 0
    use_mmap: bool = True
    kv_cache_type: str = "f16"
    flash_attention: bool | None = None

    def serves(self, wanted: "LoadOptions") -> bool:
        """Can a runner loaded with ``self`` serve a request that wants ``wanted``?"""
        same_shape = attrs.evolve(wanted, num_ctx=self.num_ctx) == self
        if wanted.num_gpu < 0:
            same_shape = attrs.evolve(wanted, num_ctx=self.num_ctx, num_gpu=self.num_gpu) == self
        return same_shape and wanted.num_ctx <= self.num_ctx


@attrs.define(eq=False)
class _Job:
    kind: str  # "generate" | "embed"
    payload: Any
    events: trio.MemorySendChannel
    lease: "Lease"
    job_id: str = attrs.field(factory=lambda: f"job-{next(_job_ids)}")
    #: the runner's handle once the job is running (generations only)
    handle: "JobHandle | None" = None


@attrs.define(eq=False)
class ModelActor:
    """One loaded (or loading) model. Created by the scheduler, which owns its lifetime."""

    key: tuple
    name: str
    digest: str
    details: dict
    model_path: str
    options: LoadOptions
    spec: "RunnerSpec"
    estimate: MemoryEstimate
    placement: Placement
    max_queue: int
    keep_alive: float  # seconds; math.inf = forever; 0 = unload when idle
    on_idle: Callable[["ModelActor"], None] = lambda actor: None
    #: called when the runner starts having work (``running`` 0 → 1) and when it runs out (→ 0)
    on_busy: Callable[["ModelActor"], None] = lambda actor: None

    state: str = "pending"  # pending → loading → ready → stopping → stopped | failed
    refcount: int = 0
    pending: int = 0
    running: int = 0  # jobs handed a slot by the dispatcher and not finished
    last_used: float = attrs.field(factory=time.monotonic)
    load_error: str | None = None
    runner: "Runner | None" = None
    stop_reason: str | None = None
    expires_at: float = math.inf  # trio clock
    expires_wall: float | None = None  # time.time() of the same moment, for /api/ps

    #: the blocked senders, served round robin by tenant (``actors/fair.py``)
    _queue: FairQueue = attrs.field(factory=FairQueue)
    #: per tenant, the leases admitted and not yet handed a slot, oldest first
    _pending_by_tenant: dict = attrs.field(factory=dict)
    _ready: trio.Event = attrs.field(factory=trio.Event)
    _stopped: trio.Event = attrs.field(factory=trio.Event)
    _activity: trio.Event = attrs.field(factory=trio.Event)
    _stop_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)

    # ----------------------------------------------------------------- facts for /api/ps and scheduler
    @property
    def num_ctx(self) -> int:
        return self.options.num_ctx

    @property
    def is_idle(self) -> bool:
        return self.refcount == 0

    @property
    def accepting(self) -> bool:
        return self.state in ("pending", "loading", "ready") and self.stop_reason is None

    # ----------------------------------------------------------------- lifetime (run by the scheduler)
    async def serve(self, runner: "Runner") -> None:
        """Dispatch requests to ``runner`` until stopped, expired, or the runner dies."""
        self.runner = runner
        self.state = "ready"
        self._ready.set()
        slots = trio.Semaphore(self.options.num_parallel)
        try:
            with self._stop_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_runner, nursery.cancel_scope)
                    nursery.start_soon(self._watch_expiry, nursery.cancel_scope)
                    while True:
                        await slots.acquire()
                        try:
                            job = await self._queue.get()
                        except BaseException:
                            slots.release()
                            raise
                        # Counted here, not when the job task starts: a request arriving
                        # in between must see the slot taken.
                        self.running += 1
                        if self.running == 1:
                            self.on_busy(self)
                        nursery.start_soon(self._run_job, job, slots)
        finally:
            self.state = "stopping"
            self._queue.close()

    async def _watch_runner(self, scope: trio.CancelScope) -> None:
        assert self.runner is not None
        await self.runner.died.wait()
        self.stop_reason = self.stop_reason or "runner died"
        log.warning("runner_died", model=self.name, pid=self.runner.pid)
        # Jobs in flight already got their Failed event from the runner client; let them finish.
        await trio.sleep(0)
        scope.cancel()

    async def _watch_expiry(self, scope: trio.CancelScope) -> None:
        """Unload after ``keep_alive`` of idleness; any new request resets the clock."""
        while True:
            self._activity = event = trio.Event()
            if self.refcount == 0 and self.expires_at != math.inf:
                with trio.move_on_at(self.expires_at):
                    await event.wait()
                    continue
                if self.refcount == 0:
                    self.stop_reason = self.stop_reason or "expired"
                    log.info("model_expired", model=self.name)
                    scope.cancel()
                    return
            else:
                await event.wait()

    async def _run_job(self, job: _Job, slots: trio.Semaphore) -> None:
        assert self.runner is not None
        try:
            if job.kind == "generate":
                # The runner delivers the tokens straight into the request's channel; this task
                # only holds the slot until the job is over (or cancels it if the actor stops).
                try:
                    handle = self.runner.submit_job(job.job_id, job.payload, job.events)
                except BaseException:
                    job.events.close()  # the request must not wait for events that never come
                    raise
                job.handle = handle
                try:
                    await handle.finished.wait()
                finally:
                    handle.cancel()
                return
            async with job.events:
                if job.kind == "embed":
                    inputs, truncate = job.payload
                    try:
                        result = await self.runner.embed(inputs, truncate)
                    except RunnerRequestError as exc:
                        result = exc  # the request's own error (an input over the context…), for it to raise
                    await job.events.send(result)
                else:  # pragma: no cover - programming error
                    raise ValueError(job.kind)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("client_gone", model=self.name, job=job.job_id)
        except Exception as exc:  # the runner client raises for protocol-level failures
            log.warning("job_failed", model=self.name, job=job.job_id, error=str(exc))
        finally:
            slots.release()
            self.running -= 1
            if self.running == 0:
                self.on_busy(self)

    def mark_loading(self) -> None:
        self.state = "loading"

    def fail(self, message: str) -> None:
        """The load failed: wake every waiter with the error."""
        self.state = "failed"
        self.load_error = message
        self._ready.set()
        self._queue.close()
        self._stopped.set()

    def mark_stopped(self) -> None:
        if self.state != "failed":
            self.state = "stopped"
        self._ready.set()
        self._queue.close()
        self._stopped.set()

    def request_stop(self, reason: str) -> None:
        """Stop taking requests and unload. The scheduler only asks this of idle actors."""
        self.stop_reason = self.stop_reason or reason
        self._stop_scope.cancel()
        if self.state in ("pending",):
            self.mark_stopped()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ----------------------------------------------------------------- the request side
    def admit(self, keep_alive: float | None, tenant: Hashable = None) -> "Lease":
        """Take a place in the queue or refuse at once (``ServerBusy``); raise ``ModelGone`` if stopping.

        ``tenant`` is an opaque id of who asks (the API key's id; ``None`` without keys): places
        are handed slots round robin between tenants, and a full queue makes room for a tenant
        that holds fewer places than the one holding most, by refusing that one's newest place
        (:meth:`_make_room_for`). One tenant flooding the queue thus cannot keep another out.
        """
        if not self.accepting:
            raise ModelGone(self.name)
        # Pending leases include those about to take a free slot: a burst that arrives before the
        # dispatcher hands out slots must still get ``num_parallel`` running plus ``max_queue``
        # waiting, no fewer. Started leases hold their slots.
        free_slots = max(0, self.options.num_parallel - (self.refcount - self.pending))
        if self.pending >= self.max_queue + free_slots and not self._make_room_for(tenant):
            raise ServerBusy(self.name)
        self.pending += 1
        self.refcount += 1
        if keep_alive is not None:
            self.keep_alive = keep_alive
        self.expires_at = math.inf
        self.expires_wall = None
        self.last_used = time.monotonic()
        self._activity.set()
        lease = Lease(self, tenant=tenant)
        self._pending_by_tenant.setdefault(tenant, []).append(lease)
        return lease

    def _make_room_for(self, tenant: Hashable) -> bool:
        """The queue is full: refuse the newest place of the tenant holding the most, if that
        tenant holds at least two more than ``tenant`` (so the shares end no more than even).

        The refused lease's request fails with ``ServerBusy`` where it waits: in the queue at
        once, otherwise when it next asks the actor for anything (``Lease.check``).
        """
        mine = len(self._pending_by_tenant.get(tenant, ()))
        hog, most = None, mine + 1
        for other, leases in self._pending_by_tenant.items():
            if other != tenant and len(leases) > most:
                hog, most = other, len(leases)
        if hog is None:
            return False
        victim = self._pending_by_tenant[hog][-1]
        self._unpend(victim)
        victim.refused = True
        self.pending -= 1
        self._queue.reject(hog, victim, ServerBusy(self.name))
        log.info("queue_place_refused", model=self.name, tenant=hog, for_tenant=tenant, held=most)
        return True

    def _unpend(self, lease: "Lease") -> None:
        leases = self._pending_by_tenant.get(lease.tenant)
        if leases is not None and lease in leases:
            leases.remove(lease)
            if not leases:
                del self._pending_by_tenant[lease.tenant]

    def _release(self, lease: "Lease") -> None:
        if not lease.started and not lease.refused:
            self.pending -= 1
            self._unpend(lease)
        self.refcount -= 1
        self.last_used = time.monotonic()
        if self.refcount == 0:
            self._arm_expiry()
            self.on_idle(self)
        self._activity.set()

    def _arm_expiry(self) -> None:
        if self.keep_alive == math.inf:
            self.expires_at = math.inf
            self.expires_wall = None
        else:
            self.expires_at = trio.current_time() + self.keep_alive
            self.expires_wall = time.time() + self.keep_alive

    def expire_now(self) -> None:
        """``keep_alive: 0`` with an empty prompt: unload as soon as idle."""
        self.keep_alive = 0.0
        if self.refcount == 0:
            self._arm_expiry()
            self._activity.set()

    async def wait_ready(self) -> None:
        await self._ready.wait()
        if self.state == "failed":
            raise LoadFailed(self.load_error or "model failed to load")
        if self.state != "ready":
            raise ModelGone(self.name)

    async def _submit(self, lease: "Lease", kind: str, payload: Any) -> tuple[_Job, trio.MemoryReceiveChannel]:
        lease.check()
        send, receive = trio.open_memory_channel(math.inf)
        job = _Job(kind=kind, payload=payload, events=send, lease=lease)
        # Whether a slot is free for this request, recorded on the lease for the access log: the
        # jobs holding slots and the senders already blocked in the queue come first. (Asking
        # whether the dispatcher waits to receive raced with it: it yields once between taking a
        # slot and waiting.)
        ahead = self.running + len(self._queue)
        if self.state != "ready" or ahead >= self.options.num_parallel:
            lease.queued = True
        waited = time.monotonic()
        try:
            await self._queue.put(lease.tenant, job, ticket=lease)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            send.close()
            receive.close()
            if self.state == "failed":
                raise LoadFailed(self.load_error or "model failed to load") from None
            raise ModelGone(self.name) from None
        except BaseException:
            send.close()
            receive.close()
            raise
        finally:
            lease.queued_s += time.monotonic() - waited
        if not lease.started:
            lease.started = True
            self.pending -= 1
            self._unpend(lease)
        return job, receive


@attrs.define(eq=False)
class Lease:
    """A request's hold on a model: keeps it loaded, owns one place in its queue until it runs."""

    actor: ModelActor
    #: who asked, as the scheduler was told (an API key's id); fairness is between tenants
    tenant: Hashable = None
    started: bool = False
    released: bool = False
    #: its queue place was given to another tenant's request (a full queue, ``ModelActor.admit``)
    refused: bool = False
    #: whether the request had to wait for a free slot, and for how long in all (seconds)
    queued: bool = False
    queued_s: float = 0.0
    #: a generation left before its end: the runner's counts for it (``done_reason "cancel"``)
    cancelled: Any = None
    _running: "_Job | None" = None

    def num_ctx_for(self, requested: Any) -> int:
        """The context a request may use: what it asked for, at most what the runner holds.

        This is how a runner loaded with a larger context serves a smaller request without a reload.
        """
        loaded = self.actor.num_ctx
        wanted = int(requested or 0)
        return min(wanted, loaded) if wanted > 0 else loaded

    def check(self) -> None:
        """Raise ``ServerBusy`` if this lease's queue place was given to another tenant."""
        if self.refused:
            raise ServerBusy(self.actor.name)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.actor._release(self)

    @asynccontextmanager
    async def generate(self, job: Any) -> AsyncIterator[trio.MemoryReceiveChannel]:
        """Run one generation; yields the channel of its events. Closing it cancels the job."""
        if self._too_long(getattr(job, "prompt", "") or "", self.num_ctx_for(getattr(job, "num_ctx", None))):
            # Proven too long by its length: answered here, without copying it to the runner.
            from trillama.actors.runner.messages import PROMPT_TOO_LONG, Failed

            send, receive = trio.open_memory_channel(1)
            send.send_nowait(Failed(PROMPT_TOO_LONG, "context_exceeded"))
            send.close()
            running = None
        else:
            running, receive = await self.actor._submit(self, "generate", job)
        self._running = running
        try:
            async with receive:
                yield receive
        finally:
            # Leaving early (client gone, error): stop the job in the runner at once rather
            # than at its next token.
            await self.stop_generation()
            self._running = None

    async def stop_generation(self) -> None:
        """Cancel this lease's generation if it is still running, and keep its counts.

        What it cost goes to the request's log line: the runner answers the cancel at its next
        step. The wait is bounded, and shielded (the request is usually being cancelled).
        """
        running = self._running
        if running is None or running.handle is None:
            return
        handle = running.handle
        early = not handle.finished.is_set()
        handle.cancel()
        if early:
            with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_ANSWER_SECONDS):
                await handle.cancel_answered.wait()
            self.cancelled = handle.cancelled_counts

    def _too_long(self, text: str, max_tokens: int) -> bool:
        from trillama.actors.runner.messages import TEXT_BYTES_PER_TOKEN

        return len(text) > max(1, max_tokens) * TEXT_BYTES_PER_TOKEN



    async def embed(self, inputs: list[str], truncate: bool) -> Any:
        """Raw vectors and token counts; :class:`RunnerRequestError` for an input the runner
        refuses (kind ``context_exceeded``: over the context without ``truncate``)."""
        bound = max(1, self.actor.num_ctx) * TEXT_BYTES_PER_TOKEN
        if any(len(text) > bound for text in inputs):
            # Proven longer than the context by length alone: refused, or cut to what can still
            # hold a context's worth of tokens, before crossing to the runner.
            if not truncate:
                raise RunnerRequestError("the input length exceeds the context length", "context_exceeded")
            inputs = [text[:bound] for text in inputs]
        _, receive = await self.actor._submit(self, "embed", (inputs, truncate))
        async with receive:
            async for result in receive:
                if isinstance(result, RunnerRequestError):
                    raise result
                return result
        raise ModelGone(self.actor.name)

    async def tokenize(self, text: str, max_tokens: int | None = None, add_special: bool = True) -> list[int] | None:
        """The tokens of ``text``; with ``max_tokens``, ``None`` for a text longer than that.

        Chat truncation only asks "does this fit?": bounded, a huge message is never tokenized
        (nor, when its length alone proves it too long, even sent to the runner).
        """
        assert self.actor.runner is not None
        if max_tokens is None:
            return await self.actor.runner.tokenize(text, add_special=add_special)
        if self._too_long(text, max_tokens):
            return None
        return await self.actor.runner.tokenize_bounded(text, max_tokens, add_special=add_special)

    async def detokenize(self, tokens: list[int]) -> str:
        assert self.actor.runner is not None
        return await self.actor.runner.detokenize(tokens)

    async def slots(self) -> Awaitable[Any]:
        assert self.actor.runner is not None
        return await self.actor.runner.slots()
