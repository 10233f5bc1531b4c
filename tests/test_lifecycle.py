"""Readiness, drain, preload settings and the gateway gauges, without a model (fast units).

The app tests use Quart's test client against the real app; the end-to-end behaviour (a real
SIGTERM, real runners, a real load balancer) is in test_e2e_lifecycle.py and test_e2e_fleet.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest

from trillama.api.app import create_app
from trillama.api.context import Services
from trillama.api.gateway import GatewayCollector, KvUsage
from trillama.api.health import DRAINING_MESSAGE
from trillama.actors.runner.messages import SlotState
from trillama.config import ConfigError, PreloadSpec, Settings, parse_preload
from trillama.lifecycle import Lifecycle, is_work_request
from trillama.store import ModelStore


# ------------------------------------------------------------------ settings
def test_preload_parses_names_and_keep_alive():
    specs = parse_preload(" smollm2:135m , 127.0.0.1:5000/library/smollm2:135m=30m,other=-1,x=90 ")
    assert specs == (
        PreloadSpec("smollm2:135m", math.inf),
        PreloadSpec("127.0.0.1:5000/library/smollm2:135m", 1800.0),
        PreloadSpec("other", math.inf),
        PreloadSpec("x", 90.0),
    )


@pytest.mark.parametrize("value", ["=30m", "smollm2:135m=soon", "bad name!"])
def test_preload_refuses_what_it_cannot_use(value):
    with pytest.raises(ConfigError, match="TRILLAMA_PRELOAD"):
        Settings.from_env({"TRILLAMA_PRELOAD": value})


def test_drain_and_insecure_settings():
    settings = Settings.from_env({"TRILLAMA_DRAIN_SECONDS": "2m", "TRILLAMA_PRELOAD_INSECURE": "true",
                                  "TRILLAMA_PRELOAD": "a,b=0"})
    assert settings.drain_seconds == 120.0 and settings.preload_insecure is True
    assert [p.name for p in settings.preload] == ["a", "b"] and settings.preload[1].keep_alive == 0
    assert Settings().drain_seconds == 30.0 and Settings().preload == ()
    with pytest.raises(ConfigError, match="TRILLAMA_DRAIN_SECONDS"):
        Settings.from_env({"TRILLAMA_DRAIN_SECONDS": "-1"})
    assert settings.as_log_fields()["preload"] == ["a", "b=0.0"]


def test_work_requests():
    assert is_work_request("POST", "/api/chat") and is_work_request("POST", "/api/pull")
    assert is_work_request("POST", "/v1/chat/completions") and is_work_request("POST", "/v1/anything-new")
    assert not is_work_request("GET", "/api/tags") and not is_work_request("POST", "/api/show")
    assert not is_work_request("GET", "/v1/models")


# ------------------------------------------------------------------ lifecycle
def test_readiness_follows_the_preload():
    life = Lifecycle(["a", "b"])
    status, body = life.readiness()
    assert status == 503 and body["status"] == "loading" and "a" in body["reason"]
    life.set_model("a", "pulling")
    life.set_model("a", "loading")
    life.set_model("a", "loaded")
    life.set_model("b", "loading")
    life.set_model("b", "failed", "connection refused")
    status, body = life.readiness()
    assert status == 503 and body["status"] == "failed" and body["reason"] == "preload failed: b"
    assert body["models"]["b"] == {"state": "failed", "error": "connection refused"}
    assert body["models"]["a"] == {"state": "loaded"}
    life.set_model("b", "loading")  # the retry
    life.set_model("b", "loaded")
    status, body = life.readiness()
    assert (status, body["status"]) == (200, "ready") and body["models"]["b"]["attempts"] == 2
    life.begin_drain()
    status, body = life.readiness()
    assert (status, body["status"]) == (503, "draining")


async def test_drain_waits_for_requests_in_flight_and_no_longer():
    life = Lifecycle()
    life.request_started()
    life.request_started()

    async def finish_later():
        await trio.sleep(0.2)
        life.request_finished()
        await trio.sleep(0.2)
        life.request_finished()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish_later)
        start = trio.current_time()
        assert await life.drain(10.0) is True
        assert 0.35 < trio.current_time() - start < 5
    assert life.draining and not life.ready

    stuck = Lifecycle()
    stuck.request_started()
    start = trio.current_time()
    assert await stuck.drain(0.3) is False
    assert 0.25 < trio.current_time() - start < 5


# ------------------------------------------------------------------ the routes
@pytest.fixture
def app_and_life(tmp_path: Path):
    life = Lifecycle(["smollm2:135m"])
    store = ModelStore(tmp_path / "models")
    app = create_app(Services(settings=Settings(models_dir=tmp_path / "models"), store=store, lifecycle=life))
    return app, life


async def test_health_ready_and_the_drain_gate(app_and_life):
    app, life = app_and_life
    client = app.test_client()
    response = await client.get("/health")
    assert response.status_code == 200 and json.loads(await response.get_data()) == {"status": "ok"}
    response = await client.get("/ready")
    body = json.loads(await response.get_data())
    assert response.status_code == 503 and body["models"] == {"smollm2:135m": {"state": "waiting"}}
    life.set_model("smollm2:135m", "loading")
    life.set_model("smollm2:135m", "loaded")
    assert (await client.get("/ready")).status_code == 200
    assert (await client.get("/")).status_code == 200  # Ollama's root is untouched

    life.begin_drain()
    response = await client.get("/ready")
    assert response.status_code == 503 and json.loads(await response.get_data())["status"] == "draining"
    assert (await client.get("/health")).status_code == 200  # still alive while draining

    response = await client.post("/api/chat", json={"model": "smollm2:135m", "messages": []})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert json.loads(await response.get_data()) == {"error": DRAINING_MESSAGE}
    response = await client.post("/v1/chat/completions", json={"model": "smollm2:135m", "messages": []})
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert json.loads(await response.get_data())["error"]["message"] == DRAINING_MESSAGE
    # reads still answer while draining
    assert (await client.get("/api/tags")).status_code == 200


# ------------------------------------------------------------------ gateway gauges
def _actor(name, state="ready", pending=0, refcount=0, adapters=(), slots=()):
    runner = SimpleNamespace(died=trio.Event())

    async def get_slots():
        return list(slots)

    runner.slots = get_slots
    return SimpleNamespace(name=name, state=state, pending=pending, refcount=refcount,
                           spec=SimpleNamespace(adapters=adapters), runner=runner)


def _scrape(collector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_kv_usage_counts_busy_and_cached_cells():
    slots = [SlotState(0, True, "job-1", 40, n_cells=40, n_ctx=256),
             SlotState(1, False, None, 10, n_cells=10, n_ctx=256)]
    assert KvUsage.from_slots(slots) == KvUsage(busy=40, cached=10, capacity=512)


async def test_gateway_gauges_in_vllm_names():
    busy = [SlotState(0, True, "j", 64, n_cells=64, n_ctx=256), SlotState(1, False, None, 32, n_cells=32, n_ctx=256)]
    actors = [
        _actor("smollm2:135m", pending=3, refcount=5, slots=busy),
        _actor("tuned:latest", adapters=("/a.gguf",), refcount=1, slots=[SlotState(0, True, "k", 128, 128, 256)]),
        _actor("waiting-adapter:latest", state="loading", pending=1, refcount=1, adapters=("/b.gguf",)),
        _actor("gone:latest", state="stopped"),
    ]
    scheduler = SimpleNamespace(actors=lambda: actors, settings=Settings(max_loaded_models=4))
    collector = GatewayCollector(scheduler)
    await collector.refresh()
    got = _scrape(collector)
    assert got['vllm:num_requests_waiting{model_name="smollm2:135m"}'] == 3
    assert got['vllm:num_requests_running{model_name="smollm2:135m"}'] == 2
    assert got['vllm:kv_cache_usage_perc{model_name="smollm2:135m"}'] == pytest.approx(64 / 512)
    assert got['vllm:gpu_cache_usage_perc{model_name="smollm2:135m"}'] == pytest.approx(64 / 512)
    assert got['trillama_kv_cache_cells{model="smollm2:135m",state="cached"}'] == 32
    assert got['vllm:kv_cache_usage_perc{model_name="tuned:latest"}'] == pytest.approx(0.5)
    assert got['vllm:num_requests_waiting{model_name="waiting-adapter:latest"}'] == 1
    assert not any("gone:latest" in key for key in got)
    (info,) = [k for k in got if k.startswith("vllm:lora_requests_info")]
    assert 'max_lora="4"' in info and 'running_lora_adapters="tuned:latest"' in info
    assert 'waiting_lora_adapters="waiting-adapter:latest"' in info
    assert got[info] > 1.7e9  # a timestamp: the picker keeps the newest sample


async def test_no_lora_info_without_adapters():
    scheduler = SimpleNamespace(actors=lambda: [_actor("m:latest")], settings=Settings())
    collector = GatewayCollector(scheduler)
    await collector.refresh()
    got = _scrape(collector)
    assert not any(k.startswith("vllm:lora_requests_info") for k in got)
    assert got['vllm:kv_cache_usage_perc{model_name="m:latest"}'] == 0


# ------------------------------------------------------------------ preload, with fakes
class _FakeStore:
    def __init__(self) -> None:
        self.models: dict[str, object] = {}

    def resolve(self, name: str):
        from trillama.store import ModelNotFound

        if name not in self.models:
            raise ModelNotFound(name)
        return self.models[name]


class _FakeRegistry:
    """Fails the first pull (the registry is not up yet), then delivers."""

    def __init__(self, store: _FakeStore) -> None:
        self.store, self.pulls = store, []

    async def pull(self, name, *, insecure: bool = False):
        from trillama.registry import Progress, RegistryError

        self.pulls.append((name.display, insecure))
        yield Progress("pulling manifest")
        if len(self.pulls) == 1:
            raise RegistryError("connection refused")
        yield Progress("pulling 0123456789ab", "sha256:0123", 100, 50)
        yield Progress("success")
        self.store.models[name.display] = SimpleNamespace(name=name.display)


class _FakeScheduler:
    def __init__(self) -> None:
        self.loads = []

    async def acquire(self, record, options, keep_alive):
        self.loads.append((record.name, keep_alive))
        return SimpleNamespace(release=lambda: None)


async def test_preload_pulls_when_missing_retries_and_loads(monkeypatch):
    from structlog.testing import capture_logs

    from trillama import preload

    monkeypatch.setattr(preload, "FIRST_RETRY", 0.05)
    store = _FakeStore()
    store.models["local:latest"] = SimpleNamespace(name="local:latest")
    registry, scheduler = _FakeRegistry(store), _FakeScheduler()
    remote = "127.0.0.1:5000/library/smollm2:135m"
    life = Lifecycle(["local:latest", remote])
    specs = (PreloadSpec("local:latest", 60.0), PreloadSpec(remote))
    with capture_logs() as logs:
        with trio.fail_after(10):
            await preload.preload_models(specs, store=store, registry=registry, scheduler=scheduler,
                                         lifecycle=life, insecure=True)
    assert life.ready and life.models[remote].attempts == 2
    assert registry.pulls == [(remote, True), (remote, True)]  # the local model is not pulled
    assert sorted(scheduler.loads) == sorted([("local:latest", 60.0), (remote, math.inf)])
    events = [e["event"] for e in logs if e.get("model") == remote]
    assert events[:2] == ["preload_pulling", "preload_progress"] and "preload_failed" in events
    assert events[-2:] == ["preload_loading", "preload_loaded"]
    failed = next(e for e in logs if e["event"] == "preload_failed")
    assert "connection refused" in failed["error"]
    progress = [e for e in logs if e["event"] == "preload_progress"]
    assert any(e["status"] == "pulling 0123456789ab" and e["total"] == 100 and e["completed"] == 50
               for e in progress)
