"""The gauges LLM-aware gateways route on, in the names vLLM serves them under.

The Gateway API Inference Extension's endpoint picker scrapes each model server's ``/metrics`` for
the queue length, the number of requests running and the KV-cache utilisation (and, for LoRA
affinity, which adapters are loaded); its reference implementation reads vLLM's names. trillama
serves the same names beside its own, per model (label ``model_name``, as vLLM labels them):

* ``vllm:num_requests_waiting`` — leases admitted but without a slot (loading or queued);
* ``vllm:num_requests_running`` — leases holding a slot;
* ``vllm:gpu_cache_usage_perc`` and its newer name ``vllm:kv_cache_usage_perc`` — the fraction
  (0–1) of the model's KV cells that requests running now occupy. The cells come from llama.cpp
  itself (each runner reports the span of positions its sequences hold, ``OP_SLOTS``); cells an
  idle slot keeps for prefix reuse are free to take, so — like vLLM's cached free blocks — they
  do not count as used. They appear, with the busy ones, in ``trillama_kv_cache_cells``;
* ``vllm:lora_requests_info`` — one sample whose labels list the models with adapters that are
  loaded (``running_lora_adapters``) and those waiting for a load (``waiting_lora_adapters``), and
  ``max_lora`` (how many models may be loaded at once); its value is the time of the scrape.
  In trillama an adapter is a model of its own (``ADAPTER`` in a Modelfile), so the adapter's
  name is the model name a client asks for.

Runner cell counts need a round trip to each runner, which a Prometheus collector (synchronous)
cannot make: the ``/metrics`` route awaits :meth:`GatewayCollector.refresh` first, and the
collector renders what it found.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import attrs
import trio
from prometheus_client.core import GaugeMetricFamily

from trillama.logs import get_logger

__all__ = ["GatewayCollector", "KvUsage"]

log = get_logger("trillama.api.gateway")

#: How long a scrape waits for a runner's answer (it comes between two decode steps).
RUNNER_TIMEOUT = 2.0


@attrs.frozen
class KvUsage:
    """One runner's KV cells as llama.cpp counts them."""

    busy: int  # cells of sequences whose slot runs a request
    cached: int  # cells idle slots keep for prefix reuse
    capacity: int

    @classmethod
    def from_slots(cls, slots: Iterable[Any]) -> "KvUsage":
        busy = cached = capacity = 0
        for slot in slots:
            capacity += slot.n_ctx
            if slot.busy:
                busy += slot.n_cells
            else:
                cached += slot.n_cells
        return cls(busy, cached, capacity)


class GatewayCollector:
    """Renders the vLLM-named gauges from the scheduler's actors and the last runner answers."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._kv: dict[int, KvUsage] = {}  # by id(actor): two runners of one model sum up

    async def refresh(self) -> None:
        """Ask every ready runner for its cells (concurrently, bounded); keep the last answers."""
        actors = [a for a in self._actors() if a.state == "ready" and a.runner is not None
                  and not a.runner.died.is_set()]
        fresh: dict[int, KvUsage] = {}

        async def ask(actor: Any) -> None:
            with trio.move_on_after(RUNNER_TIMEOUT):
                try:
                    fresh[id(actor)] = KvUsage.from_slots(await actor.runner.slots())
                    return
                except Exception as exc:  # a runner dying under the question answers nothing
                    log.info("kv_usage_unavailable", model=actor.name, error=str(exc))
            if id(actor) in self._kv:
                fresh[id(actor)] = self._kv[id(actor)]

        async with trio.open_nursery() as nursery:
            for actor in actors:
                nursery.start_soon(ask, actor)
        self._kv = fresh

    def _actors(self) -> list[Any]:
        return self.scheduler.actors() if self.scheduler is not None else []

    def collect(self) -> Iterable[GaugeMetricFamily]:
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Requests waiting for a slot or a load",
                                    labels=["model_name"])
        running = GaugeMetricFamily("vllm:num_requests_running", "Requests holding a slot",
                                    labels=["model_name"])
        usage_old = GaugeMetricFamily("vllm:gpu_cache_usage_perc",
                                      "KV-cache usage of running requests, 1 = full", labels=["model_name"])
        usage = GaugeMetricFamily("vllm:kv_cache_usage_perc",
                                  "KV-cache usage of running requests, 1 = full", labels=["model_name"])
        cells = GaugeMetricFamily("trillama_kv_cache_cells", "KV cells llama.cpp holds, by slot state",
                                  labels=["model", "state"])
        capacity = GaugeMetricFamily("trillama_kv_cache_capacity_cells", "KV cells of the loaded runners",
                                     labels=["model"])
        per_model: dict[str, list[int]] = {}  # name → [waiting, running, busy, cached, capacity]
        running_adapters: list[str] = []
        waiting_adapters: list[str] = []
        for actor in self._actors():
            if actor.state not in ("pending", "loading", "ready"):
                continue
            row = per_model.setdefault(actor.name, [0, 0, 0, 0, 0])
            row[0] += actor.pending
            row[1] += actor.refcount - actor.pending
            kv = self._kv.get(id(actor))
            if kv is not None:
                row[2] += kv.busy
                row[3] += kv.cached
                row[4] += kv.capacity
            if getattr(actor.spec, "adapters", ()):
                target = running_adapters if actor.state == "ready" else waiting_adapters
                if actor.name not in target:
                    target.append(actor.name)
        for name, (n_wait, n_run, busy, cached, cap) in sorted(per_model.items()):
            waiting.add_metric([name], n_wait)
            running.add_metric([name], n_run)
            fraction = busy / cap if cap else 0.0
            usage_old.add_metric([name], fraction)
            usage.add_metric([name], fraction)
            cells.add_metric([name, "busy"], busy)
            cells.add_metric([name, "cached"], cached)
            capacity.add_metric([name], cap)
        yield from (waiting, running, usage_old, usage, cells, capacity)
        if running_adapters or waiting_adapters:
            info = GaugeMetricFamily("vllm:lora_requests_info", "Adapters loaded and waiting for a load",
                                     labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
            settings = getattr(self.scheduler, "settings", None)
            max_lora = settings.effective_max_loaded_models if settings is not None else 1
            info.add_metric([str(max_lora), ",".join(running_adapters), ",".join(waiting_adapters)],
                            time.time())
            yield info
