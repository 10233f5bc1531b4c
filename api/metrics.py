"""``GET /metrics``: Prometheus metrics, which Ollama does not offer.

Request counts and latencies are recorded as requests finish; what the scheduler knows (models
loaded, requests waiting and running per model) is read when the scrape happens, so the numbers
are never stale and nothing polls in the background. Each app gets its own registry, so two
servers in one process (tests) never share counters.
"""

from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from quart import Blueprint, Response, current_app

__all__ = ["Metrics", "blueprint"]

blueprint = Blueprint("metrics", __name__)


class _SchedulerCollector:
    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterable[GaugeMetricFamily]:
        loaded = GaugeMetricFamily("trillama_models_loaded", "Models loaded or loading")
        queued = GaugeMetricFamily("trillama_requests_queued", "Requests waiting for a slot or a load",
                                   labels=["model"])
        running = GaugeMetricFamily("trillama_requests_running", "Requests holding a slot", labels=["model"])
        size = GaugeMetricFamily("trillama_model_memory_bytes", "Estimated memory of a loaded model",
                                 labels=["model", "device"])
        actors = self.scheduler.actors() if self.scheduler is not None else []
        loaded.add_metric([], sum(1 for a in actors if a.state in ("loading", "ready")))
        for actor in actors:
            queued.add_metric([actor.name], actor.pending)
            running.add_metric([actor.name], actor.refcount - actor.pending)
            size.add_metric([actor.name, "cpu"], actor.placement.size - actor.placement.size_vram)
            size.add_metric([actor.name, "gpu"], actor.placement.size_vram)
        yield from (loaded, queued, running, size)


class Metrics:
    """The app's registry and the instruments route handlers record into."""

    def __init__(self, scheduler: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("trillama_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("trillama_http_request_seconds", "Time to the response headers",
                                 ["route"], registry=self.registry)
        self.tokens = Counter("trillama_tokens", "Tokens processed", ["model", "kind"], registry=self.registry)
        self.drafts = Counter("trillama_draft_tokens",
                              "Prompt-lookup draft tokens verified (kind=drafted) and confirmed (kind=accepted)",
                              ["model", "kind"], registry=self.registry)
        self.registry.register(_SchedulerCollector(scheduler))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_tokens(self, model: str, prompt: int, generated: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "generated").inc(generated)

    def observe_drafts(self, model: str, drafted: int, accepted: int) -> None:
        self.drafts.labels(model, "drafted").inc(drafted)
        self.drafts.labels(model, "accepted").inc(accepted)


@blueprint.route("/metrics", methods=["GET"])
async def metrics() -> Response:
    registry = current_app.extensions["trillama.metrics"].registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
