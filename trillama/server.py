"""``trillama serve``: the store, the scheduler actor, the registry service and the HTTP server in
one Trio nursery.

Structured concurrency gives shutdown for free: SIGINT/SIGTERM stops hypercorn from accepting,
lets in-flight responses end (or cancels them after a grace period), then the scheduler stops every
runner process before the nursery closes; downloads still running are cancelled and keep their
partial files for the next pull. Nothing outlives ``serve()``.
"""

from __future__ import annotations

import signal

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from trillama.actors.prompt.inspector import GoTemplateInspector
from trillama.actors.scheduler import Scheduler
from trillama.api.app import create_app
from trillama.api.context import Services
from trillama.config import Settings
from trillama.http import install_read_timeouts
from trillama.logs import configure_logging, get_logger
from trillama.registry import Registry
from trillama.store import ModelStore

__all__ = ["serve", "prepare_store"]

log = get_logger("trillama.server")


def prepare_store(settings: Settings) -> ModelStore:
    """Open the store, clear what an interrupted write left, prune, add the bundled model.

    The store gets the real Go template parser to check TEMPLATEs and read capabilities with.
    """
    store = ModelStore(settings.models_dir, templates=GoTemplateInspector())
    store.recover()
    if settings.noprune:
        log.info("prune_skipped", reason="OLLAMA_NOPRUNE")
    else:
        store.prune()
    if settings.bundled_model:
        from trillama.bundled import ensure_bundled_model

        ensure_bundled_model(store)
    return store


async def serve(settings: Settings) -> None:
    log.info("config", **settings.as_log_fields())
    store = await trio.to_thread.run_sync(prepare_store, settings)
    shutdown = trio.Event()

    async def watch_signals(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                log.info("shutdown_requested", signal=signal.Signals(signum).name)
                shutdown.set()
                return

    config = HypercornConfig()
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = 3.0
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75.0
    install_read_timeouts(settings.header_timeout, settings.body_timeout)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_signals)
        scheduler = Scheduler(settings, store)
        await nursery.start(scheduler.run)
        registry = Registry(store, settings.keypair, noprune=settings.noprune)
        await nursery.start(registry.run)
        app = create_app(Services(settings=settings, store=store, scheduler=scheduler, registry=registry))
        log.info("listening", host=settings.host, port=settings.port)
        await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait)
        log.info("http_stopped")
        await scheduler.shutdown()
        nursery.cancel_scope.cancel()
    log.info("stopped")


def run(settings: Settings) -> None:
    configure_logging(debug=settings.debug, fmt=settings.log_format)
    trio.run(serve, settings)
