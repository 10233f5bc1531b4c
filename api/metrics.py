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

from trillama.api.gateway import GatewayCollector

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
        threads = GaugeMetricFamily("trillama_runner_threads", "Decode threads a model's runner uses now",
                                    labels=["model"])
        cache = GaugeMetricFamily("trillama_prompt_cache_bytes",
                                  "Saved prompt states a model's runner keeps, by tier (as of the last scrape)",
                                  labels=["model", "tier"])
        cache_entries = GaugeMetricFamily("trillama_prompt_cache_entries", "Saved prompt states, by tier",
                                          labels=["model", "tier"])
        actors = self.scheduler.actors() if self.scheduler is not None else []
        loaded.add_metric([], sum(1 for a in actors if a.state in ("loading", "ready")))
        for actor in actors:
            queued.add_metric([actor.name], actor.pending)
            running.add_metric([actor.name], actor.refcount - actor.pending)
            size.add_metric([actor.name, "cpu"], actor.placement.size - actor.placement.size_vram)
            size.add_metric([actor.name, "gpu"], actor.placement.size_vram)
            if actor.state == "ready" and actor.runner is not None:
                threads.add_metric([actor.name], actor.runner.threads)
                stats = actor.runner.cache_stats
                if stats.get("enabled"):
                    cache.add_metric([actor.name, "ram"], stats.get("bytes", 0))
                    cache_entries.add_metric([actor.name, "ram"], stats.get("entries", 0))
                    if "park_entries" in stats:
                        cache_entries.add_metric([actor.name, "park"], stats["park_entries"])
                    if "disk_bytes" in stats:
                        cache.add_metric([actor.name, "disk"], stats["disk_bytes"])
                        cache_entries.add_metric([actor.name, "disk"], stats.get("disk_entries", 0))
        yield from (loaded, queued, running, size, threads, cache, cache_entries)
        if self.scheduler is not None:
            yield from self._cpu(self.scheduler.cpu_state())

    @staticmethod
    def _cpu(cpu: Any) -> Iterable[GaugeMetricFamily]:
        budget = GaugeMetricFamily("trillama_decode_threads_budget",
                                   "Decode threads worth running now (cores less busy neighbours)")
        budget.add_metric([], cpu.budget)
        available = GaugeMetricFamily("trillama_cpu_available", "CPUs this process may use (affinity, quota)")
        available.add_metric([], cpu.cpus)
        yield from (budget, available)
        if cpu.foreign is not None:
            foreign = GaugeMetricFamily("trillama_cpu_foreign_cores",
                                        "Cores used by processes outside the server, last sample")
            foreign.add_metric([], cpu.foreign)
            yield foreign


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
        self.prompt_tokens = Counter("trillama_prompt_tokens",
                                     "Prompt tokens computed by the model, and reused from a slot or the prompt cache",
                                     ["model", "kind"], registry=self.registry)
        self.prompt_cache_hits = Counter("trillama_prompt_cache_hits",
                                         "Requests that reused a prompt prefix, by where it came from: slot (its own), "
                                         "copy (another slot), ram or disk (the prompt cache)",
                                         ["model", "tier"], registry=self.registry)
        self.registry.register(_SchedulerCollector(scheduler))
        self.gateway = GatewayCollector(scheduler)  # vLLM's names, for LLM-aware gateways
        self.registry.register(self.gateway)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_tokens(self, model: str, prompt: int, generated: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "generated").inc(generated)

    def observe_prompt(self, model: str, computed: int, reused: int, tier: str) -> None:
        self.prompt_tokens.labels(model, "computed").inc(computed)
        self.prompt_tokens.labels(model, "reused").inc(reused)
        if tier:
            self.prompt_cache_hits.labels(model, tier).inc()

    def observe_drafts(self, model: str, drafted: int, accepted: int) -> None:
        self.drafts.labels(model, "drafted").inc(drafted)
        self.drafts.labels(model, "accepted").inc(accepted)


@blueprint.route("/metrics", methods=["GET"])
async def metrics() -> Response:
    recorder = current_app.extensions["trillama.metrics"]
    await recorder.gateway.refresh()
    return Response(generate_latest(recorder.registry), content_type=CONTENT_TYPE_LATEST)
