"""The scheduler actor: the table of loaded models, the memory ledger, loading and eviction.

Rules, in the order they are applied to a request:

1. A loaded model whose runner can serve the request's load options is used at once, with no
   trip through a global queue. A request that asks for a *smaller* ``num_ctx`` than the runner has
   is served by it (the limit is applied per request), so clients with different context sizes do
   not make the model thrash (ollama#6148).
2. Otherwise an actor is created and its load is queued. Loads happen one at a time (``_load_lock``),
   so two loads never race for the same free memory.
3. Before a load, room is made: while the new model does not fit the memory budget, or
   ``OLLAMA_MAX_LOADED_MODELS`` is reached, an idle model is evicted — expired ones first, then the
   least recently used. A model with requests in flight is never evicted: the load waits until one
   becomes idle.
4. An actor whose load options no longer match what is asked is *retired*: it takes no new
   requests and unloads once its in-flight requests finish, while the replacement loads.

The scheduler knows nothing of HTTP. It hands out :class:`~trillama.actors.model.Lease` objects.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping

import attrs
import trio

from trillama.actors.cpu import ForeignLoad, available_cpus, decode_budget, share_threads, thread_limit
from trillama.actors.memory import Device, Placement, discover_devices, estimate, place
from trillama.actors.model import LoadFailed, LoadOptions, Lease, ModelActor, ModelGone, ServerBusy
from trillama.config import Settings
from trillama.logs import get_logger

__all__ = ["Scheduler", "ServerBusy", "LoadFailed", "ModelGone", "LoadedModel"]

log = get_logger("trillama.actors.scheduler")

#: Loads that keep failing because the actor vanished under them (evicted, crashed) give up here.
_MAX_ATTEMPTS = 5


@attrs.frozen
class CpuState:
    """What the decode threads are fitted to (``/api/runners``, ``/metrics``)."""

    cores: int  # threads when the machine is quiet: physical cores within affinity and quota
    cpus: float  # CPUs this process may use (affinity, capped by the cgroup quota)
    budget: int  # threads worth running now
    foreign: float | None  # cores used outside this server's process tree, last sample
    adaptive: bool  # False when TRILLAMA_NUM_THREADS pins the count


#: seconds between two looks at the neighbours' CPU use
CPU_SAMPLE_SECONDS = 1.0


@attrs.frozen
class LoadedModel:
    """A row of ``/api/ps``."""

    name: str
    digest: str
    details: dict
    size: int
    size_vram: int
    expires_at: float | None  # wall-clock seconds; None = forever
    context_length: int
    num_parallel: int
    state: str
    pid: int | None


class Scheduler:
    def __init__(self, settings: Settings, store: Any) -> None:
        self.settings = settings
        self.store = store
        self._actors: list[ModelActor] = []
        self._load_lock = trio.Lock()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._cores = settings.effective_num_threads
        self._cpu = CpuState(cores=self._cores, cpus=available_cpus(), budget=self._cores, foreign=None,
                             adaptive=settings.num_threads == 0)
        #: actors whose thread count a request or Modelfile asked for: never lowered for neighbours
        self._pinned: set[ModelActor] = set()
        #: bytes each runner's prompt cache may hold: reserved in the memory ledger, lowered under
        #: memory pressure before any model is evicted (:meth:`_shrink_caches`)
        self._cache_limits: dict[ModelActor, int] = {}
        #: what a model with parking streams would cost without them (dropped under pressure)
        self._plain_estimates: dict[ModelActor, Any] = {}

    # ------------------------------------------------------------------ lifetime
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The scheduler's own task: its nursery owns every model actor."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self._cpu.adaptive:
                nursery.start_soon(self._watch_cpu)
            task_status.started()
            await trio.sleep_forever()

    async def _watch_cpu(self) -> None:
        """Fit the decode threads to the CPU that neighbours leave free (actors/cpu.py).

        Samples once a second whatever the runners do, so a request that arrives while a build
        runs beside the server starts with the right count; re-shares only when the budget moves.
        """
        meter = ForeignLoad()
        cpus = max(1, int(self._cpu.cpus))
        while True:
            await trio.sleep(CPU_SAMPLE_SECONDS)
            runners = [a.runner.pid for a in self._actors if a.runner is not None and a.runner.pid]
            foreign = await trio.to_thread.run_sync(meter.sample, runners)
            if foreign is None:
                continue
            budget = decode_budget(self._cores, foreign, self._cpu.budget, cpus=cpus)
            changed = budget != self._cpu.budget
            self._cpu = attrs.evolve(self._cpu, budget=budget, foreign=round(foreign, 3))
            if changed:
                log.info("decode_budget", threads=budget, foreign_cores=round(foreign, 2), cores=self._cores)
                self._share_threads(None)

    def cpu_state(self) -> CpuState:
        return self._cpu

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop every model: cancel what is running, stop every runner process, wait for them."""
        self._closing = True
        actors = list(self._actors)
        for actor in actors:
            actor.request_stop("shutdown")
        with trio.move_on_after(grace):
            for actor in actors:
                await actor.wait_stopped()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ requests
    def load_options(self, record: Any, options: Mapping[str, Any] | None) -> LoadOptions:
        """The runner-shaping options for ``record`` with request ``options`` on top."""
        params: dict[str, Any] = dict(record.parameters or {})
        params.update({k: v for k, v in (options or {}).items() if v is not None})
        info = record.gguf_info() if callable(getattr(record, "gguf_info", None)) else None
        trained = int(getattr(info, "context_length", 0) or 0)
        num_ctx = int(params.get("num_ctx") or 0)
        if num_ctx <= 0:
            num_ctx = self.settings.default_num_ctx
        if trained > 0:
            num_ctx = min(num_ctx, trained)
        num_ctx = max(num_ctx, 4)
        num_parallel = min(int(params.get("num_parallel") or self.settings.num_parallel), 1024)
        if "completion" not in (getattr(record, "capabilities", None) or ["completion"]):
            num_parallel = 1  # embedding-only models decode one sequence at a time
        # Ollama lets the runtime decide when num_thread or num_batch is zero or negative; C ints
        # cap the rest (a num_thread of -5 or 2**40 must not reach llama.cpp as such).
        num_thread = int(params.get("num_thread") or 0)
        if num_thread > (limit := thread_limit()):
            log.warning("num_thread_clamped", model=str(getattr(record.name, "display", record.name)), requested=num_thread, limit=limit,
                        reason="more threads than the cores this process may use (CPU affinity, cgroup quota)")
            num_thread = limit
        num_batch = int(params.get("num_batch") or 0)
        num_gpu = int(params.get("num_gpu", -1) if params.get("num_gpu") is not None else -1)
        return LoadOptions(
            num_ctx=num_ctx,
            num_parallel=max(1, num_parallel),
            num_batch=min(num_batch, num_ctx) if num_batch > 0 else 512,
            num_gpu=min(num_gpu, 1 << 16) if num_gpu >= 0 else -1,
            num_thread=num_thread if num_thread > 0 else self.settings.effective_num_threads,
            use_mmap=bool(params.get("use_mmap", True)),
            kv_cache_type=self.settings.kv_cache_type,
            flash_attention=self.settings.flash_attention,
        )

    def _warn_context_capped(self, record: Any, options: Mapping[str, Any] | None, wanted: LoadOptions) -> None:
        """A ``num_ctx`` (request, Modelfile or ``OLLAMA_CONTEXT_LENGTH``) beyond the model's trained
        context is served with the trained context: said in the log, never a silent change (the
        effective value is what ``/api/ps`` shows as ``context_length``)."""
        params = {**(record.parameters or {}), **{k: v for k, v in (options or {}).items() if v is not None}}
        asked = int(params.get("num_ctx") or 0) or self.settings.context_length  # 0: nobody asked
        if asked > wanted.num_ctx:
            source = ("options.num_ctx" if (options or {}).get("num_ctx") else "PARAMETER num_ctx"
                      if (record.parameters or {}).get("num_ctx") else "OLLAMA_CONTEXT_LENGTH")
            log.warning("num_ctx_beyond_trained_context", model=record.name.display, asked=asked, source=source,
                        effective=wanted.num_ctx,
                        reason="the model was trained with a shorter context; the trained context is used")

    @staticmethod
    def _asks_threads(record: Any, options: Mapping[str, Any] | None) -> bool:
        """Did the request or the Modelfile name a thread count (which then stays as asked)?"""
        return bool((options or {}).get("num_thread") or (record.parameters or {}).get("num_thread"))

    async def acquire(
        self,
        record: Any,
        options: Mapping[str, Any] | None = None,
        keep_alive: float | None = None,
        tenant: Any = None,
    ) -> Lease:
        """A lease on a loaded model that can serve ``record`` with ``options``.

        ``tenant`` is an opaque id of who asks (an API key's id, never the key); the model's queue
        is fair between tenants (``ModelActor.admit``).
        Waits for the load if needed. Raises ``ServerBusy`` when that model's queue is full,
        ``LoadFailed`` when it cannot be loaded. Cancel-safe: a caller cancelled while waiting
        leaves the queue immediately.
        """
        if self._closing:
            raise ModelGone("server is shutting down")
        wanted = self.load_options(record, options)
        key = self._key(record)
        for _ in range(_MAX_ATTEMPTS):
            actor = self._find(key, wanted)
            if actor is None:
                self._retire_mismatched(record.digest, wanted)
                actor = self._new_actor(record, key, wanted, keep_alive)
                self._warn_context_capped(record, options, wanted)
                if self._asks_threads(record, options):
                    self._pinned.add(actor)
            try:
                lease = actor.admit(keep_alive, tenant)
            except ModelGone:
                continue
            try:
                await actor.wait_ready()
                lease.check()
            except ModelGone:
                lease.release()
                continue
            except BaseException:
                lease.release()
                raise
            return lease
        raise LoadFailed(f"model {record.name.display if hasattr(record.name, 'display') else record.name} "
                         "could not be kept loaded")

    async def unload(self, record: Any, wait: float = 10.0) -> bool:
        """``keep_alive: 0``: unload the model's runners as soon as they are idle.

        Returns whether anything was loaded. Waits (bounded) for idle runners to be gone, so a
        client that asks ``/api/ps`` right after sees the model gone.
        """
        key = self._key(record)
        actors = [a for a in self._actors if a.key == key]
        for actor in actors:
            actor.expire_now()
            if actor.is_idle:
                actor.request_stop("unloaded")
        with trio.move_on_after(wait):
            for actor in actors:
                if actor.is_idle:
                    await actor.wait_stopped()
        return bool(actors)

    def loaded(self) -> list[LoadedModel]:
        """``/api/ps`` rows, sorted as Ollama sorts them: latest expiry first."""
        rows = []
        for actor in self._actors:
            if actor.state not in ("loading", "ready"):
                continue
            if actor.refcount > 0 or actor.keep_alive == math.inf:
                expires = None if actor.keep_alive == math.inf else time.time() + actor.keep_alive
            else:
                expires = actor.expires_wall
            rows.append(
                LoadedModel(
                    name=actor.name,
                    digest=actor.digest,
                    details=actor.details,
                    size=actor.placement.size,
                    size_vram=actor.placement.size_vram,
                    expires_at=expires,
                    context_length=actor.num_ctx,
                    num_parallel=actor.options.num_parallel,
                    state=actor.state,
                    pid=actor.runner.pid if actor.runner is not None else None,
                )
            )
        rows.sort(key=lambda r: math.inf if r.expires_at is None else r.expires_at, reverse=True)
        return rows

    def actors(self) -> list[ModelActor]:
        """The model actors loaded, loading or queued for a load (a snapshot)."""
        return list(self._actors)

    async def runner_states(self) -> list[dict[str, Any]]:
        """Each model's runner process and slot states (trillama's ``/api/runners``)."""
        out = []
        for actor in list(self._actors):
            slots, threads = [], None
            if actor.state == "ready" and actor.runner is not None and not actor.runner.died.is_set():
                try:
                    states, threads = await actor.runner.status()
                    slots = [attrs.asdict(s) for s in states]
                except Exception as exc:  # a runner dying under the question is an answer too
                    log.info("slots_unavailable", model=actor.name, error=str(exc))
            out.append({
                "name": actor.name, "state": actor.state, "pid": actor.runner.pid if actor.runner else None,
                "num_ctx": actor.num_ctx, "num_parallel": actor.options.num_parallel,
                "refcount": actor.refcount, "queued": actor.pending, "slots": slots,
                "threads": threads,
                "prompt_cache": {**(actor.runner.cache_stats if actor.runner is not None else {}),
                                 "reserved": self._cache_limits.get(actor, 0)},
            })
        return out

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _key(record: Any) -> tuple:
        return (
            str(record.model_path),
            tuple(str(p) for p in (getattr(record, "adapter_paths", ()) or ())),
            tuple(str(p) for p in (getattr(record, "projector_paths", ()) or ())),
        )

    def _find(self, key: tuple, wanted: LoadOptions) -> ModelActor | None:
        for actor in self._actors:
            if actor.key == key and actor.accepting and actor.options.serves(wanted):
                return actor
        return None

    def _retire_mismatched(self, digest: str, wanted: LoadOptions) -> None:
        """The same model asked with other load options: retire its runner (Ollama's reload).

        Matching is by model (manifest digest), not by weights file: two models built on the same
        GGUF with different parameters (say ``num_parallel``) may both stay loaded rather than
        evict each other on every request.
        """
        for actor in self._actors:
            if actor.digest == digest and actor.accepting:
                log.info("model_reload", model=actor.name, loaded=attrs.asdict(actor.options),
                         wanted=attrs.asdict(wanted))
                actor.stop_reason = "reload"
                if actor.is_idle:
                    actor.request_stop("reload")

    def _on_idle(self, actor: ModelActor) -> None:
        if actor.stop_reason == "reload" or actor.keep_alive == 0:
            actor.request_stop(actor.stop_reason or "keep_alive 0")
        self._notify()

    def _share_threads(self, _changed: ModelActor | None) -> None:
        """A runner started or stopped having work, or the neighbours changed: split the threads again."""
        live = [a for a in self._actors
                if a.state == "ready" and a.runner is not None and not a.runner.died.is_set()]
        self._pinned.intersection_update(live)
        shares = share_threads({a: a.options.num_thread for a in live}, {a for a in live if a.running},
                               self._cpu.budget, pinned=self._pinned)
        for actor, threads in shares.items():
            if actor.runner.threads != threads:
                log.info("runner_threads", model=actor.name, threads=threads, was=actor.runner.threads,
                         busy=sum(1 for a in live if a.running))
                actor.runner.set_threads(threads)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _new_actor(self, record: Any, key: tuple, wanted: LoadOptions, keep_alive: float | None) -> ModelActor:
        from trillama.actors.runner.client import RunnerSpec

        assert self._nursery is not None, "scheduler is not running"
        info = record.gguf_info()
        extra = sum(Path(p).stat().st_size for p in (*record.adapter_paths, *record.projector_paths))

        def estimate_for(streams: int):
            return estimate(
                info,
                file_bytes=Path(record.model_path).stat().st_size,
                extra_bytes=extra,
                num_ctx=wanted.num_ctx,
                num_parallel=streams,
                num_batch=wanted.num_batch,
                n_vocab=int(getattr(info, "vocab_size", 0) or 32000),
                kv_cache_type=wanted.kv_cache_type,
                flash_attention=bool(wanted.flash_attention),
            )

        est = plain_est = estimate_for(wanted.num_parallel)
        # Models with sliding-window layers cannot restore saved states exactly: their prompt
        # cache is spare KV streams instead (as many as the budget pays for, at most 2 per slot).
        budget = self.prompt_cache_budget() if self.settings.prompt_cache != 0 else 0
        swa = int(info.arch_key("attention.sliding_window") or 0) if hasattr(info, "arch_key") else 0
        n_park = 0
        if budget and swa > 0:
            per_stream = max(1, est.kv_cache // wanted.num_parallel)
            n_park = max(0, min(budget // per_stream, 2 * wanted.num_parallel, 256 - wanted.num_parallel))
        if n_park:
            est = estimate_for(wanted.num_parallel + n_park)
        spec = RunnerSpec(
            model_path=Path(record.model_path),
            n_ctx=wanted.num_ctx,
            n_parallel=wanted.num_parallel,
            n_threads=wanted.num_thread,
            n_batch=wanted.num_batch,
            n_gpu_layers=0,
            flash_attn=wanted.flash_attention,
            kv_cache_type=wanted.kv_cache_type,
            use_mmap=wanted.use_mmap,
            adapters=tuple(Path(p) for p in record.adapter_paths),
            # Ollama takes one projector per model; a second one in a manifest is ignored there too
            projector=Path(record.projector_paths[0]) if record.projector_paths else None,
            share_prefixes=self.settings.prompt_cache != 0,
            prompt_cache_bytes=0 if swa > 0 else budget,
            n_park=n_park,
            prompt_cache_dir=(self.settings.models_dir / "cache" / "prompts"
                              if self.settings.prompt_cache_disk > 0 else None),
            prompt_cache_disk_bytes=self.settings.prompt_cache_disk,
        )
        actor = ModelActor(
            key=key,
            name=record.name.display,
            digest=record.digest,
            details=dict(record.details),
            model_path=str(record.model_path),
            options=wanted,
            spec=spec,
            estimate=est,
            placement=Placement(n_gpu_layers=0, gpu_index=None, size=est.total, size_vram=0),
            max_queue=self.settings.max_queue,
            keep_alive=self.settings.keep_alive if keep_alive is None else keep_alive,
            on_idle=self._on_idle,
            on_busy=self._share_threads,
        )
        self._actors.append(actor)
        self._cache_limits[actor] = spec.prompt_cache_bytes
        if n_park:
            self._plain_estimates[actor] = plain_est
        self._nursery.start_soon(self._lifecycle, actor)
        log.info("model_queued_for_load", model=actor.name, num_ctx=wanted.num_ctx,
                 num_parallel=wanted.num_parallel, estimate=est.total)
        return actor

    async def _lifecycle(self, actor: ModelActor) -> None:
        """Load ``actor``'s runner (one load at a time), serve until it stops, then clean up.

        The load lock is held from making room until the runner reports ready; the runner's
        context then spans the actor's whole life, so its process is reaped however that ends.
        ``OLLAMA_LOAD_TIMEOUT`` is a deadline on a cancel scope around the runner's context that
        is lifted once the model is loaded.
        """
        from trillama.actors.runner.client import Runner, RunnerError

        lock_held = False
        try:
            await self._load_lock.acquire()
            lock_held = True
            if actor.stop_reason is not None:
                return
            try:
                await self._make_room(actor)
            except LoadFailed as exc:
                actor.fail(str(exc))
                return
            if actor.stop_reason is not None:
                return
            actor.mark_loading()
            started = time.perf_counter()
            timeout = self.settings.load_timeout
            with trio.CancelScope() as load_scope:
                if timeout and timeout != math.inf:
                    load_scope.deadline = trio.current_time() + timeout
                try:
                    async with Runner.open(actor.spec) as runner:
                        load_scope.deadline = math.inf
                        self._load_lock.release()
                        lock_held = False
                        log.info("model_loaded", model=actor.name, pid=runner.pid,
                                 seconds=round(time.perf_counter() - started, 3),
                                 size=actor.placement.size, size_vram=actor.placement.size_vram,
                                 n_gpu_layers=actor.placement.n_gpu_layers)
                        await actor.serve(runner)
                except* (RunnerError, OSError) as group:
                    # The runner's nursery wraps what it raises in an exception group.
                    message = str(_first_leaf(group))
                    log.warning("model_load_failed", model=actor.name, error=message)
                    actor.fail(message)
            if load_scope.cancelled_caught and actor.state == "loading":
                actor.fail("timed out waiting for the model runner to start")
        finally:
            if lock_held:
                self._load_lock.release()
            if actor in self._actors:
                self._actors.remove(actor)
            self._cache_limits.pop(actor, None)
            self._plain_estimates.pop(actor, None)
            actor.mark_stopped()
            log.info("model_unloaded", model=actor.name, reason=actor.stop_reason or actor.state)
            self._notify()

    def _budget_fits(self, actor: ModelActor, others: list[ModelActor],
                     ram: Device, gpus: list[Device]) -> bool:
        reserved_vram: dict[int, int] = {}
        for other in others:
            if other.placement.gpu_index is not None:
                reserved_vram[other.placement.gpu_index] = (
                    reserved_vram.get(other.placement.gpu_index, 0) + other.placement.size_vram)
        placement = place(actor.estimate, gpus, gpu_overhead=self.settings.gpu_overhead,
                          num_gpu=actor.options.num_gpu, reserved_vram=reserved_vram)
        if gpus and others and actor.options.num_gpu < 0 and placement.n_gpu_layers < actor.estimate.layers + 1:
            # With other models loaded, a new one must fit on the GPU entirely, or they make room.
            return False
        host_need = placement.size - placement.size_vram + self._cache_limits.get(actor, 0)
        host_used = sum(o.placement.size - o.placement.size_vram + self._cache_limits.get(o, 0) for o in others)
        limit = self.settings.memory_limit
        if limit and host_used + host_need > limit:
            return False
        if host_need > ram.free + (0 if others else 0):
            # Free RAM already reflects loaded models; what they will still allocate is in their estimate.
            return False
        actor.placement = placement
        actor.spec = attrs.evolve(actor.spec, n_gpu_layers=placement.n_gpu_layers)
        return True

    async def _make_room(self, actor: ModelActor) -> None:
        limit = self.settings.memory_limit
        while True:
            others = [a for a in self._actors if a is not actor and a.state in ("loading", "ready")]
            ram, gpus = await trio.to_thread.run_sync(discover_devices)
            over_count = len(others) >= self.settings.effective_max_loaded_models
            if not over_count and self._budget_fits(actor, others, ram, gpus):
                return
            if not over_count and await self._shrink_caches(actor, others, ram):
                continue
            if not others:
                need = actor.estimate.total
                available = min(limit, ram.free) if limit else ram.free
                raise LoadFailed(
                    f"model requires more system memory ({_human(need)}) than is available "
                    f"({_human(available)})"
                )
            victim = self._pick_victim(others)
            if victim is not None:
                log.info("model_evicted", model=victim.name, for_model=actor.name,
                         reason="max loaded models" if over_count else "memory")
                victim.request_stop("evicted")
                await victim.wait_stopped()
                continue
            # Everything loaded is busy: wait until something becomes idle or goes away.
            changed = self._changed
            await changed.wait()

    def prompt_cache_budget(self) -> int:
        """``TRILLAMA_PROMPT_CACHE`` for each runner; by default an eighth of RAM, at most 8 GiB."""
        from trillama.actors.runner.prompt_cache import default_limit

        if self.settings.prompt_cache >= 0:
            return self.settings.prompt_cache
        import psutil

        return default_limit(psutil.virtual_memory().total)

    async def _shrink_caches(self, actor: ModelActor, others: list[ModelActor], ram: Device) -> bool:
        """Make room for ``actor`` by lowering prompt-cache reservations instead of evicting.

        Saved prompt states are the cheapest memory to give back: losing one costs a prefill,
        evicting a model costs a reload and every state it had. The new model's own reservation
        goes first, then the other runners' (largest first), each down to zero if need be; a
        runner told a lower bound drops its least recently used states at once. A model loading with
        parking streams (see :meth:`_new_actor`) loads without them first. Returns whether
        anything was lowered (the caller checks the fit again).
        """
        plain = self._plain_estimates.pop(actor, None)
        if plain is not None:  # the new model's parking streams go first
            log.info("prompt_cache_parking_dropped", model=actor.name, streams=actor.spec.n_park)
            actor.estimate = plain
            actor.spec = attrs.evolve(actor.spec, n_park=0)
            return True
        wanted = self._cache_limits.get(actor, 0)
        reserved = [(o, self._cache_limits.get(o, 0)) for o in others if self._cache_limits.get(o, 0) > 0]
        if wanted <= 0 and not reserved:
            return False
        host_used = sum(o.placement.size - o.placement.size_vram + self._cache_limits.get(o, 0) for o in others)
        need = actor.estimate.total + wanted
        room = ram.free
        limit = self.settings.memory_limit
        over = max(host_used + need - limit if limit else 0, need - room)
        if over <= 0:
            return False
        cut = min(wanted, over)
        self._cache_limits[actor] = wanted - cut
        actor.spec = attrs.evolve(actor.spec, prompt_cache_bytes=wanted - cut)
        over -= cut
        for other, have in sorted(reserved, key=lambda pair: -pair[1]):
            if over <= 0:
                break
            cut = min(have, over)
            self._cache_limits[other] = have - cut
            over -= cut
            log.info("prompt_cache_shrunk", model=other.name, limit=have - cut, for_model=actor.name)
            if other.runner is not None and not other.runner.died.is_set():
                try:
                    await other.runner.set_cache_limit(have - cut)
                except Exception as exc:  # a runner dying under the question frees its memory anyway
                    log.info("prompt_cache_shrink_failed", model=other.name, error=str(exc))
        return True

    @staticmethod
    def _pick_victim(candidates: list[ModelActor]) -> ModelActor | None:
        now = trio.current_time()
        idle = [a for a in candidates if a.is_idle and a.state == "ready"]
        if not idle:
            return None
        idle.sort(key=lambda a: (a.expires_at > now, a.last_used))
        return idle[0]


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)
