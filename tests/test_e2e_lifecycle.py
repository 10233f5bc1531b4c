"""Readiness, preload, drain and the gateway gauges against a real server with the real model.

A stream that must outlive a signal asks the model to list numbers (it does not stop early) and
runs on one thread, so it lasts seconds on this machine.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import httpx
import pytest

from conftest import ServerProcess, free_port, wait_for

pytestmark = pytest.mark.slow

MODEL = "smollm2:135m"
COUNT = "List the numbers from 1 to 300, separated by commas."
SLOW = {"TRILLAMA_NUM_THREADS": "1", "OLLAMA_CONTEXT_LENGTH": "512", "OLLAMA_NUM_PARALLEL": "2"}




def ready(server: ServerProcess) -> tuple[int, dict]:
    r = httpx.get(server.base_url + "/ready", timeout=5)
    return r.status_code, r.json()


def log_events(server: ServerProcess, event: str) -> list[dict]:
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if f'"{event}"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return [e for e in out if e.get("event") == event]


class Stream:
    """A streaming generation in a thread: its lines, whether it finished, and its error if any."""

    def __init__(self, server: ServerProcess, num_predict: int = 150) -> None:
        self.lines: list[dict] = []
        self.error: BaseException | None = None
        self.first = threading.Event()
        body = {"model": MODEL, "prompt": COUNT, "stream": True,
                "options": {"num_predict": num_predict, "temperature": 0}}
        self.thread = threading.Thread(target=self._run, args=(server.base_url, body), daemon=True)
        self.thread.start()

    def _run(self, base: str, body: dict) -> None:
        try:
            with httpx.stream("POST", base + "/api/generate", json=body, timeout=120) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line:
                        self.lines.append(json.loads(line))
                        self.first.set()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            self.error = exc
        finally:
            self.first.set()

    @property
    def done(self) -> bool:
        return bool(self.lines) and self.lines[-1].get("done") is True


def test_preload_turns_ready_and_keeps_the_model(start_server):
    server = start_server({"TRILLAMA_PRELOAD": MODEL, **SLOW})
    assert httpx.get(server.base_url + "/health").json() == {"status": "ok"}
    wait_for(lambda: ready(server)[0] == 200)
    status, body = ready(server)
    assert body == {"status": "ready", "models": {MODEL: {"state": "loaded"}}}
    (row,) = httpx.get(server.base_url + "/api/ps").json()["models"]
    assert row["name"] == MODEL
    assert row["expires_at"].startswith("9999")  # keep_alive forever
    assert log_events(server, "preload_loading") and log_events(server, "preload_loaded")


def test_preload_keep_alive_per_model(start_server):
    server = start_server({"TRILLAMA_PRELOAD": f"{MODEL}=1s", **SLOW})
    wait_for(lambda: ready(server)[0] == 200)
    # it loaded, then expired after its own keep-alive; readiness stays 200 (a request reloads it)
    wait_for(lambda: httpx.get(server.base_url + "/api/ps").json()["models"] == [], timeout=30)
    assert ready(server)[0] == 200


def test_preload_failure_is_logged_and_shown(start_server):
    missing = f"127.0.0.1:{free_port()}/library/nothing:1"
    server = start_server({"TRILLAMA_PRELOAD": f"{MODEL},{missing}", "TRILLAMA_PRELOAD_INSECURE": "1", **SLOW})
    body = wait_for(lambda: (lambda s, b: b if b["models"][missing]["state"] == "failed" else None)(*ready(server)))
    status, body = ready(server)
    assert status == 503 and body["status"] == "failed" and body["reason"] == f"preload failed: {missing}"
    assert body["models"][missing]["error"]
    wait_for(lambda: ready(server)[1]["models"][MODEL]["state"] == "loaded")
    assert ready(server)[0] == 503  # one model failing keeps the replica out of rotation
    (failure, *_) = log_events(server, "preload_failed")
    assert failure["model"] == missing and failure["retry_in"] == 1.0
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_sigterm_drains_streams_then_stops(start_server):
    server = start_server({"TRILLAMA_PRELOAD": MODEL, "TRILLAMA_DRAIN_SECONDS": "60", **SLOW})
    wait_for(lambda: ready(server)[0] == 200)
    stream = Stream(server)
    assert stream.first.wait(60) and not stream.error
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    status, body = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(ready(server)), timeout=5)
    assert body["status"] == "draining" and body["in_flight"] == 1
    chat = [{"role": "user", "content": "hi"}]
    for path, body in (("/api/chat", {"model": MODEL, "messages": chat}),
                       ("/api/generate", {"model": MODEL, "prompt": "hi"}),
                       ("/v1/chat/completions", {"model": MODEL, "messages": chat})):
        r = httpx.post(server.base_url + path, json=body, timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1", (path, r.text)
        error = r.json()["error"]
        assert "shutting down" in (error["message"] if path.startswith("/v1/") else error)
    assert stream.done is False  # the stream is still running after all that
    stream.thread.join(90)
    assert stream.error is None and stream.done, stream.lines[-1:]
    assert stream.lines[-1]["eval_count"] == 150 and stream.lines[-1]["done_reason"] == "length"
    server.proc.wait(30)
    assert server.proc.returncode == 0
    assert time.monotonic() - sent < 60
    (drain,) = log_events(server, "drain_started")
    assert drain["in_flight"] == 1
    assert log_events(server, "drain_finished")
    server.stop()  # checks that no runner outlived the server


def test_second_signal_stops_at_once(start_server):
    server = start_server({"TRILLAMA_PRELOAD": MODEL, "TRILLAMA_DRAIN_SECONDS": "120", **SLOW})
    wait_for(lambda: ready(server)[0] == 200)
    stream = Stream(server, num_predict=480)
    assert stream.first.wait(60) and not stream.error
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: ready(server)[0] == 503, timeout=5)
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    server.proc.wait(30)
    assert time.monotonic() - sent < 15  # far less than the 120 s drain
    stream.thread.join(30)
    assert not stream.done
    assert log_events(server, "shutdown_forced")
    server.stop()


def _gauges(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_gateway_gauges_from_real_kv_cells(start_server):
    server = start_server({"TRILLAMA_PRELOAD": MODEL, **SLOW})
    wait_for(lambda: ready(server)[0] == 200)
    label = f'{{model_name="{MODEL}"}}'
    idle = _gauges(server)
    assert idle["vllm:num_requests_running" + label] == 0
    assert idle["vllm:num_requests_waiting" + label] == 0
    assert idle["vllm:kv_cache_usage_perc" + label] == 0
    capacity = idle[f'trillama_kv_cache_capacity_cells{{model="{MODEL}"}}']
    assert capacity == 2 * 512  # two slots of 512 cells (OLLAMA_CONTEXT_LENGTH, OLLAMA_NUM_PARALLEL)

    stream = Stream(server)
    assert stream.first.wait(60) and not stream.error
    seen = []
    while not stream.done and stream.error is None and len(seen) < 5:
        got = _gauges(server)
        if got["vllm:num_requests_running" + label] == 1:
            seen.append(got)
        time.sleep(0.2)
    assert seen, "never saw the stream running"
    for got in seen:
        busy = got[f'trillama_kv_cache_cells{{model="{MODEL}",state="busy"}}']
        assert got["vllm:kv_cache_usage_perc" + label] == pytest.approx(busy / capacity)
        assert got["vllm:gpu_cache_usage_perc" + label] == got["vllm:kv_cache_usage_perc" + label]
        assert busy > 20  # the prompt at least
    usages = [g["vllm:kv_cache_usage_perc" + label] for g in seen]
    assert usages == sorted(usages) and usages[-1] > usages[0]  # grows as tokens are generated
    stream.thread.join(90)
    assert stream.done
    final = stream.lines[-1]
    after = _gauges(server)
    assert after["vllm:num_requests_running" + label] == 0
    assert after["vllm:kv_cache_usage_perc" + label] == 0  # an idle slot's cells are free to take
    cached = after[f'trillama_kv_cache_cells{{model="{MODEL}",state="cached"}}']
    # llama.cpp holds the prompt and every generated token but the last (never decoded)
    assert cached == final["prompt_eval_count"] + final["eval_count"] - 1
    # and agrees with the runner's own bookkeeping
    (runner,) = httpx.get(server.base_url + "/api/runners").json()["runners"]
    assert sum(s["n_cells"] for s in runner["slots"]) == sum(s["n_cached"] for s in runner["slots"]) == cached


def test_metrics_without_preload_still_ready(start_server):
    server = start_server(SLOW)
    assert ready(server) == (200, {"status": "ready", "models": {}})
    assert re.search(r"^# TYPE vllm:num_requests_waiting gauge$", httpx.get(server.base_url + "/metrics").text, re.M)


def test_lora_info_names_a_loaded_adapter_model(start_server, tmp_path):
    from conftest import upload_blob
    from test_runner_process import write_lora

    server = start_server(SLOW)
    lora = write_lora(tmp_path / "tuned.gguf", 0.0)
    with server.client() as client:
        digest = upload_blob(client, lora)
        r = client.post("/api/create", json={"model": "smol-tuned", "from": MODEL,
                                             "adapters": {"tuned.gguf": digest}, "stream": False})
        assert r.status_code == 200, r.text
        assert not [k for k in _gauges(server) if k.startswith("vllm:lora_requests_info")]
        r = client.post("/api/generate", json={"model": "smol-tuned", "prompt": "Hi", "stream": False,
                                               "options": {"num_predict": 2}})
        assert r.status_code == 200, r.text
    before = time.time()
    (info,) = [(k, v) for k, v in _gauges(server).items() if k.startswith("vllm:lora_requests_info")]
    assert 'running_lora_adapters="smol-tuned:latest"' in info[0] and 'waiting_lora_adapters=""' in info[0]
    assert 'max_lora="3"' in info[0]  # OLLAMA_MAX_LOADED_MODELS' default
    assert before - 5 < info[1] < time.time() + 5
