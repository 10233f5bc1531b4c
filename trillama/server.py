"""``trillama serve``: the store, the scheduler actor, the registry service and the HTTP server in
one Trio nursery.

Structured concurrency gives shutdown for free: SIGINT/SIGTERM first drains (readiness 503, new
work refused with 503 and ``Retry-After``, requests in flight run for up to
``TRILLAMA_DRAIN_SECONDS``; see ``trillama/lifecycle.py``), then stops hypercorn from accepting,
lets what is left end (or cancels it after a short grace), then the scheduler stops every runner
process before the nursery closes; a second signal cancels everything at once. Downloads still
running are cancelled and keep their partial files for the next pull. Nothing outlives ``serve()``.
"""

from __future__ import annotations

import signal
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from trillama.actors.prompt.inspector import GoTemplateInspector
from trillama.actors.scheduler import Scheduler
from trillama.api.app import create_app
from trillama.api.context import Services
from trillama.config import ConfigError, Settings
from trillama.http import chunk_shortcut, install_tcp_server
from trillama.lifecycle import Lifecycle
from trillama.logs import configure_logging, get_logger
from trillama.preload import preload_models
from trillama.registry import Registry
from trillama.store import ModelStore

__all__ = ["serve", "prepare_store"]

log = get_logger("trillama.server")


def check_access(settings: Settings) -> None:
    """Before anything starts: the keys load, the TLS files load, and the server is not left open.

    A key file or certificate that cannot be used stops the start with a message naming it (a
    typo must not leave a server open or half-configured). Listening beyond loopback without
    keys is logged as a warning, or refused with ``TRILLAMA_REQUIRE_KEYS=1``.
    """
    import ssl

    from trillama.api.hosts import is_loopback_bind
    from trillama.keys import KeyFileError, KeySource

    try:
        keys = KeySource.from_settings(settings)
    except KeyFileError as exc:
        raise ConfigError(f"TRILLAMA_API_KEYS_FILE: {exc}") from None
    if settings.tls_cert is not None and settings.tls_key is not None:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TRILLAMA_TLS_CERT/TRILLAMA_TLS_KEY ({settings.tls_cert}, {settings.tls_key}): "
                              f"cannot load the certificate and key: {exc}") from None
    if settings.api_key and len(settings.api_key) < 16:
        log.warning("weak_api_key", message="TRILLAMA_API_KEY is shorter than 16 characters; "
                    "`trillama keys add` makes keys that cannot be guessed")
    if keys is None and not is_loopback_bind(settings.host):
        where = f"{settings.host}:{settings.port}"
        if settings.require_keys:
            raise ConfigError(f"refusing to listen on {where} without API keys (TRILLAMA_REQUIRE_KEYS=1): "
                              "set TRILLAMA_API_KEYS_FILE or TRILLAMA_API_KEY (docs/security.md)")
        log.warning("exposed_without_keys", listen=where,
                    message=f"listening on {where}, beyond loopback, without API keys: anyone who can reach "
                            "it can run, pull, create and delete models. Set TRILLAMA_API_KEYS_FILE or "
                            "TRILLAMA_API_KEY (docs/security.md); TRILLAMA_REQUIRE_KEYS=1 refuses to start so")


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
    lifecycle = Lifecycle(spec.name for spec in settings.preload)

    async def watch_signals(nursery: trio.Nursery, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """First SIGTERM/SIGINT: drain, then stop. A second one: stop at once."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not lifecycle.draining:
                    log.info("shutdown_requested", signal=name, drain_seconds=settings.drain_seconds)
                    lifecycle.begin_drain()  # readiness turns 503 before anything else runs
                    nursery.start_soon(drain_then_stop)
                else:
                    log.warning("shutdown_forced", signal=name, in_flight=lifecycle.in_flight)
                    nursery.cancel_scope.cancel()
                    return

    async def drain_then_stop() -> None:
        await lifecycle.drain(settings.drain_seconds)
        shutdown.set()

    config = HypercornConfig()
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = 3.0
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 75.0
    if settings.tls_cert is not None and settings.tls_key is not None:
        # hypercorn serves TLS and offers HTTP/2 by ALPN (h2, then http/1.1) to clients that ask.
        config.certfile, config.keyfile = str(settings.tls_cert), str(settings.tls_key)
    install_tcp_server(settings.header_timeout, settings.body_timeout, settings.body_min_rate)

    async with trio.open_nursery() as nursery:
        await nursery.start(watch_signals, nursery)
        scheduler = Scheduler(settings, store)
        await nursery.start(scheduler.run)
        registry = Registry(store, settings.keypair, noprune=settings.noprune)
        await nursery.start(registry.run)
        app = create_app(Services(settings=settings, store=store, scheduler=scheduler, registry=registry,
                                  lifecycle=lifecycle))
        if settings.preload:
            nursery.start_soon(partial(preload_models, settings.preload, store=store, registry=registry,
                                       scheduler=scheduler, lifecycle=lifecycle,
                                       insecure=settings.preload_insecure))
        log.info("listening", host=settings.host, port=settings.port,
                 scheme="https" if config.ssl_enabled else "http")
        await hypercorn_serve(chunk_shortcut(app), config, shutdown_trigger=shutdown.wait)
        log.info("http_stopped")
        await scheduler.shutdown()
        nursery.cancel_scope.cancel()
    log.info("stopped")


def run(settings: Settings) -> None:
    """Configure logging, check access control (``ConfigError`` stops here), then serve."""
    configure_logging(debug=settings.debug, fmt=settings.log_format)
    check_access(settings)
    trio.run(serve, settings)
