"""Readiness and drain: what a load balancer asks a replica, and what SIGTERM does.

A replica behind a balancer has three states that matter to it:

* **starting**: it serves HTTP (``/health`` is 200) but the models named in ``TRILLAMA_PRELOAD``
  are not loaded yet, so ``/ready`` is 503 and traffic should go elsewhere;
* **ready**: every preloaded model is loaded (or none was asked for): ``/ready`` is 200;
* **draining**: SIGTERM arrived. ``/ready`` turns 503 at once, new work (inference, pulls, pushes,
  creates) is refused with 503 and ``Retry-After`` so the balancer retries it on another replica,
  and the requests already in flight — streams included — run to their end for up to
  ``TRILLAMA_DRAIN_SECONDS``. Then the HTTP server and the runners stop.

:class:`Lifecycle` holds those facts and counts requests in flight; it knows nothing of HTTP
beyond what a path is (``api/health.py`` turns it into routes). The same code runs for a lone
server: with no preload it is ready as soon as it listens, and a drain with nothing in flight
ends at once, so Ctrl-C stays prompt.
"""

from __future__ import annotations

import time
from typing import Iterable

import attrs
import trio

from trillama.logs import get_logger

__all__ = ["Lifecycle", "ModelReadiness", "is_work_request", "PROBE_PATHS"]

log = get_logger("trillama.lifecycle")

#: Paths a balancer or a scraper polls: never refused while draining, never counted as in flight.
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})

#: POST routes that start work a replica must stay up for; refused while draining.
_WORK_PATHS = frozenset({
    "/api/generate", "/api/chat", "/api/embed", "/api/embeddings",
    "/api/pull", "/api/push", "/api/create",
})


def is_work_request(method: str, path: str) -> bool:
    """Would this request start work (a generation, an embedding, a transfer)?

    Every ``POST`` under ``/v1/`` counts, so OpenAI-style routes added later are covered without
    touching this list.
    """
    return method == "POST" and (path in _WORK_PATHS or path.startswith("/v1/"))


@attrs.define
class ModelReadiness:
    """How far one preloaded model has got: waiting → pulling → loading → loaded, or failed."""

    name: str
    state: str = "waiting"
    error: str | None = None
    attempts: int = 0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"state": self.state}
        if self.error is not None:
            out["error"] = self.error
        if self.attempts > 1:
            out["attempts"] = self.attempts
        return out


class Lifecycle:
    """The replica's readiness, drain state and count of requests in flight."""

    def __init__(self, preload: Iterable[str] = ()) -> None:
        self.models: dict[str, ModelReadiness] = {name: ModelReadiness(name) for name in preload}
        self.draining = False
        self.drain_started: float | None = None
        self.in_flight = 0
        self._changed = trio.Event()

    # ------------------------------------------------------------------ readiness
    @property
    def ready(self) -> bool:
        return not self.draining and all(m.state == "loaded" for m in self.models.values())

    def readiness(self) -> tuple[int, dict[str, object]]:
        """The status and the small JSON body of ``GET /ready``."""
        models = {name: m.to_json() for name, m in self.models.items()}
        if self.draining:
            return 503, {"status": "draining", "in_flight": self.in_flight, "models": models}
        failed = [name for name, m in self.models.items() if m.state == "failed"]
        if failed:
            reason = "preload failed: " + ", ".join(failed)
            return 503, {"status": "failed", "reason": reason, "models": models}
        waiting = [name for name, m in self.models.items() if m.state != "loaded"]
        if waiting:
            return 503, {"status": "loading", "reason": "preloading " + ", ".join(waiting),
                         "models": models}
        return 200, {"status": "ready", "models": models}

    def set_model(self, name: str, state: str, error: str | None = None) -> None:
        was_ready = self.ready
        model = self.models.setdefault(name, ModelReadiness(name))
        if state == "pulling" or (state == "loading" and model.state in ("waiting", "failed")):
            model.attempts += 1
        model.state, model.error = state, error
        if self.ready and not was_ready:
            log.info("ready", models=list(self.models))
        self._notify()

    async def wait_ready(self) -> None:
        while not self.ready:
            await self._wait_change()

    # ------------------------------------------------------------------ requests in flight
    def request_started(self) -> None:
        self.in_flight += 1

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._notify()

    # ------------------------------------------------------------------ drain
    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            self.drain_started = time.monotonic()
            self._notify()

    async def drain(self, seconds: float) -> bool:
        """Turn unready, then wait until nothing is in flight or ``seconds`` pass.

        Returns whether everything in flight finished in time.
        """
        self.begin_drain()
        log.info("drain_started", in_flight=self.in_flight, drain_seconds=seconds)
        started = trio.current_time()
        with trio.move_on_after(seconds):
            while self.in_flight > 0:
                await self._wait_change()
            log.info("drain_finished", seconds=round(trio.current_time() - started, 3))
            return True
        log.warning("drain_timeout", in_flight=self.in_flight, drain_seconds=seconds)
        return False

    # ------------------------------------------------------------------ internals
    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_change(self) -> None:
        await self._changed.wait()
