"""``TRILLAMA_PRELOAD``: pull the named models when the store lacks them, then load them.

A replica started from an empty volume (a new Kubernetes pod) must fetch its models without a
person running ``pull``, and must not take traffic before they are loaded. Each model is pulled
through the same :class:`~trillama.registry.Registry` service ``/api/pull`` uses (so a pull from
a client at the same time shares the download) and loaded through the scheduler exactly as an
empty-prompt ``/api/generate`` would, with the model's ``keep_alive`` (forever unless given).

A failure is logged and shown by the readiness endpoint, and the model is tried again with a
growing pause: the usual cause in a fleet is a registry that is not up yet, which a retry cures
without restarting the pod.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import trio

from trillama.actors.model import LoadFailed, ModelGone, ServerBusy
from trillama.config import PreloadSpec
from trillama.lifecycle import Lifecycle
from trillama.logs import get_logger
from trillama.registry import RegistryError
from trillama.store import InvalidName, ModelName, ModelNotFound, StoreError

__all__ = ["preload_models"]

log = get_logger("trillama.preload")

#: Pauses between attempts at a model that failed: 1 s, 2 s, 4 s… at most a minute.
FIRST_RETRY = 1.0
MAX_RETRY = 60.0
#: A pull's progress is logged at each new layer and at most this often within one.
PROGRESS_EVERY = 2.0


async def preload_models(specs: Iterable[PreloadSpec], *, store: Any, registry: Any, scheduler: Any,
                         lifecycle: Lifecycle, insecure: bool = False) -> None:
    """Bring every model in ``specs`` to loaded, concurrently; returns when all are loaded."""
    async with trio.open_nursery() as nursery:
        for spec in specs:
            nursery.start_soon(_preload_one, spec, store, registry, scheduler, lifecycle, insecure)


async def _preload_one(spec: PreloadSpec, store: Any, registry: Any, scheduler: Any,
                       lifecycle: Lifecycle, insecure: bool) -> None:
    delay = FIRST_RETRY
    while True:
        started = time.monotonic()
        try:
            record = await _record_or_pull(spec.name, store, registry, lifecycle, insecure)
            lifecycle.set_model(spec.name, "loading")
            log.info("preload_loading", model=spec.name)
            lease = await scheduler.acquire(record, None, spec.keep_alive)
            lease.release()
        except (RegistryError, StoreError, InvalidName, LoadFailed, ModelGone, ServerBusy, OSError) as exc:
            message = str(exc) or type(exc).__name__
            lifecycle.set_model(spec.name, "failed", message)
            log.error("preload_failed", model=spec.name, error=message, retry_in=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY)
            continue
        lifecycle.set_model(spec.name, "loaded")
        log.info("preload_loaded", model=spec.name, seconds=round(time.monotonic() - started, 3),
                 keep_alive=spec.keep_alive)
        return


async def _record_or_pull(name: str, store: Any, registry: Any, lifecycle: Lifecycle, insecure: bool) -> Any:
    """The stored model called ``name``, pulled from its registry first when missing."""
    try:
        return await trio.to_thread.run_sync(store.resolve, name)
    except ModelNotFound:
        pass
    if registry is None:
        raise RegistryError(f"model {name!r} is not in the store and there is no registry service")
    lifecycle.set_model(name, "pulling")
    log.info("preload_pulling", model=name, insecure=insecure)
    last_status, last_logged = "", 0.0
    progress = registry.pull(ModelName.parse(name), insecure=insecure)
    try:
        async for line in progress:
            now = time.monotonic()
            if line.status != last_status or now - last_logged >= PROGRESS_EVERY or line.status == "success":
                log.info("preload_progress", model=name, status=line.status, total=line.total or None,
                         completed=line.completed or None)
                last_status, last_logged = line.status, now
    finally:
        await progress.aclose()
    return await trio.to_thread.run_sync(store.resolve, name)
