"""Three replicas behind a real load balancer, with their model from a real registry (loopback).

Debian's ``docker-registry`` (the Docker Distribution registry) and ``haproxy`` are installed with
apt-get when missing (the test skips, saying why, only when that cannot work). The bundled model
is pushed to the registry once with ``trillama push --insecure``; three replicas with empty stores
preload it from there; HAProxy balances over them with health checks on ``/ready`` and retries a
request refused with 503 (a draining replica) or a refused connection (a stopped one) on another
replica — the setup docs/deploy.md describes. Then, under a steady load of streaming chats:

(a) steady load: every request succeeds and every replica takes some;
(b) rolling restart, SIGTERM one replica at a time and start it again: zero failed requests;
(c) ``kill -9`` of one replica: only the requests in flight on it fail, HAProxy marks it down
    within its check interval and sends it nothing more, and it rejoins after a restart.

The figures are printed (``pytest -s``) and recorded in docs/deploy.md.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import httpx
import pytest

from conftest import REPO, ServerProcess, debian_packages, free_port

pytestmark = pytest.mark.slow

CHECK_INTER_MS = 500
CHECK_FALL = 1
WORKERS = 3
BODY = {"messages": [{"role": "user", "content": "Say hello."}], "stream": True,
        "options": {"num_predict": 8, "temperature": 0}}


# ------------------------------------------------------------------ packages and services
def _wait_http(url: str, timeout: float = 30.0, status: int = 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} in {timeout}s")


class Service:
    """A program run for the test, stopped at teardown, its output kept in a file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def start_registry(tmp: Path) -> tuple[Service, int]:
    port = free_port()
    config = tmp / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'registry-data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    service = Service([shutil.which("docker-registry"), "serve", str(config)], tmp / "registry.log")
    _wait_http(f"http://127.0.0.1:{port}/v2/")
    return service, port


def haproxy_config(front: int, stats: int, backends: list[int]) -> str:
    """docs/deploy.md's HAProxy configuration, with this test's ports, frontends and a header
    naming the replica that answered."""
    text = (REPO / "docs" / "deploy.md").read_text()
    block = text.split("<!-- haproxy:begin -->", 1)[1].split("<!-- haproxy:end -->", 1)[0]
    block = block.split("```\n", 1)[1].rsplit("```", 1)[0]
    for i, port in enumerate(backends):
        block = block.replace(f"127.0.0.1:PORT{i} ", f"127.0.0.1:{port} ")
    assert "PORT" not in block and f"inter {CHECK_INTER_MS} fall {CHECK_FALL} " in block
    block = block.replace("    balance roundrobin\n", "    balance roundrobin\n    http-response set-header X-Replica %s\n")
    return f"""global
    maxconn 256

{block}
frontend api
    bind 127.0.0.1:{front}
    default_backend trillama

frontend stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"""


def haproxy_states(stats: int) -> dict[str, str]:
    text = httpx.get(f"http://127.0.0.1:{stats}/stats;csv", timeout=2).text.lstrip("# ")
    return {row["svname"]: row["status"] for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "trillama" and row["svname"].startswith("r")}


# ------------------------------------------------------------------ load
@attrs.define
class Result:
    start: float
    end: float
    ok: bool
    replica: str | None
    status: int | None
    error: str | None


class Load:
    """``WORKERS`` threads sending streaming chats back to back through the balancer."""

    def __init__(self, url: str, model: str) -> None:
        self.url, self.model = url, model
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(WORKERS)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _work(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                self.results.append(self._one(client))

    def _one(self, client: httpx.Client) -> Result:
        start = time.monotonic()
        replica = status = None
        try:
            with client.stream("POST", "/api/chat", json={"model": self.model, **BODY}) as r:
                replica, status = r.headers.get("x-replica"), r.status_code
                lines = [json.loads(line) for line in r.iter_lines() if line]
            if status != 200:
                return Result(start, time.monotonic(), False, replica, status, str(lines)[:200])
            ok = bool(lines) and lines[-1].get("done") is True and not any("error" in x for x in lines)
            return Result(start, time.monotonic(), ok, replica, status, None if ok else str(lines[-1:]))
        except (httpx.HTTPError, ValueError) as exc:
            return Result(start, time.monotonic(), False, replica, status, f"{type(exc).__name__}: {exc}")

    def between(self, t0: float, t1: float) -> list[Result]:
        return [r for r in list(self.results) if t0 <= r.start < t1]


def summary(results: list[Result]) -> dict[str, object]:
    ok = [r for r in results if r.ok]
    seconds = sorted(r.end - r.start for r in ok) or [0.0]
    per_replica: dict[str, int] = {}
    for r in ok:
        per_replica[r.replica or "?"] = per_replica.get(r.replica or "?", 0) + 1
    return {"requests": len(results), "failed": len(results) - len(ok), "per_replica": per_replica,
            "p50_s": round(statistics.median(seconds), 3),
            "p95_s": round(seconds[int(0.95 * (len(seconds) - 1))], 3)}


# ------------------------------------------------------------------ the fleet
def wait_ready(server: ServerProcess, timeout: float = 180.0) -> None:
    _wait_http(server.base_url + "/ready", timeout=timeout)


def wait_state(stats: int, name: str, want: str, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if haproxy_states(stats).get(name, "").split(" ")[0] == want:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError(f"HAProxy never saw {name} {want}: {haproxy_states(stats)}")


def log_events(server: ServerProcess, *names: str) -> list[dict]:
    """The replica's JSON log events called one of ``names`` (the whole file, every restart)."""
    out = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if any(f'"{name}"' in line for name in names):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") in names:
                out.append(event)
    return out


def test_three_replicas_behind_haproxy(tmp_path: Path):
    debian_packages({"docker-registry": "docker-registry", "haproxy": "haproxy"})
    services: list[Service] = []
    replicas: list[ServerProcess] = []
    figures: dict[str, object] = {}
    try:
        registry, reg_port = start_registry(tmp_path)
        services.append(registry)

        # push the bundled model once, from a server that has it
        source = ServerProcess(tmp_path / "source" / "models", env={"TRILLAMA_BUNDLED_MODEL": "1"},
                               log_path=tmp_path / "source.log").start()
        model = f"127.0.0.1:{reg_port}/library/smollm2:135m"
        try:
            with source.client() as client:
                r = client.post("/api/copy", json={"source": "smollm2:135m", "destination": model})
                assert r.status_code == 200, r.text
            env = {**os.environ, "OLLAMA_HOST": f"127.0.0.1:{source.port}"}
            pushed = subprocess.run([sys.executable, "-m", "trillama", "push", "--insecure", model],
                                    env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
            assert pushed.returncode == 0, pushed.stdout + pushed.stderr
        finally:
            source.stop()
        tags = httpx.get(f"http://127.0.0.1:{reg_port}/v2/library/smollm2/tags/list").json()
        assert tags["tags"] == ["135m"]

        # three replicas with empty stores, preloading from the registry
        env = {"TRILLAMA_BUNDLED_MODEL": "0", "TRILLAMA_PRELOAD": model, "TRILLAMA_PRELOAD_INSECURE": "1",
               "OLLAMA_NUM_PARALLEL": "2", "TRILLAMA_NUM_THREADS": "1", "OLLAMA_CONTEXT_LENGTH": "512",
               "TRILLAMA_DRAIN_SECONDS": "20"}
        for i in range(3):
            (tmp_path / f"r{i}" / "models").mkdir(parents=True)
            replicas.append(ServerProcess(tmp_path / f"r{i}" / "models", env=env, log_path=tmp_path / f"r{i}.log"))
        started = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda s: (s.start(), wait_ready(s)), replicas))
        figures["cold_start_to_ready_s"] = round(time.monotonic() - started, 1)
        for server in replicas:
            assert log_events(server, "preload_pulling") and log_events(server, "preload_loaded")
            assert httpx.get(server.base_url + "/api/tags").json()["models"][0]["name"] == model

        front, stats = free_port(), free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(front, stats, [s.port for s in replicas]))
        check = subprocess.run([shutil.which("haproxy"), "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        services.append(Service([shutil.which("haproxy"), "-db", "-f", str(config)], tmp_path / "haproxy.log"))
        _wait_http(f"http://127.0.0.1:{stats}/stats")
        for i in range(3):
            wait_state(stats, f"r{i}", "UP")

        with Load(f"http://127.0.0.1:{front}", model) as load:
            # (a) steady load
            t0 = time.monotonic()
            time.sleep(10)
            t1 = time.monotonic()
            steady = load.between(t0, t1)
            figures["steady"] = summary(steady)
            assert steady and all(r.ok for r in steady), [r for r in steady if not r.ok][:5]
            assert set(figures["steady"]["per_replica"]) == {"r0", "r1", "r2"}

            # (b) rolling restart
            restarts = []
            for i, server in enumerate(replicas):
                down = time.monotonic()
                server.stop(signal.SIGTERM, timeout=60)
                server.start()
                wait_ready(server)
                up = wait_state(stats, f"r{i}", "UP")
                restarts.append(round(up - down, 1))
                time.sleep(1)
            t2 = time.monotonic()
            rolling = load.between(t1, t2)
            figures["rolling"] = summary(rolling)
            figures["rolling_restart_s"] = restarts
            figures["drains"] = [[{k: e[k] for k in ("event", "in_flight", "seconds") if k in e}
                                  for e in log_events(s, "drain_started", "drain_finished", "drain_timeout")]
                                 for s in replicas]
            # work refused by a draining replica (and retried elsewhere by HAProxy); probes excluded
            figures["refused_while_draining"] = sum(
                1 for s in replicas for e in log_events(s, "request")
                if e.get("status") == 503 and e.get("path") != "/ready")
            assert all(r.ok for r in rolling), [r for r in rolling if not r.ok][:5]
            # each drain waited for streams that were running when SIGTERM came, then finished
            assert all(any(e["event"] == "drain_finished" for e in d) for d in figures["drains"])
            assert sum(e.get("in_flight", 0) for d in figures["drains"] for e in d
                       if e["event"] == "drain_started") > 0

            # (c) kill -9 under load
            time.sleep(2)
            victim = replicas[1]
            killed = time.monotonic()
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(10)
            marked = wait_state(stats, "r1", "DOWN")
            figures["kill_to_marked_down_s"] = round(marked - killed, 2)
            assert marked - killed <= CHECK_INTER_MS * CHECK_FALL / 1000 + 2.0
            time.sleep(3)
            victim.stop()  # reaps; the runner died with its server (checked)
            victim.start()
            wait_ready(victim)
            rejoined = wait_state(stats, "r1", "UP")
            figures["restart_to_rejoined_s"] = round(rejoined - marked, 1)
            time.sleep(5)
            t3 = time.monotonic()
        during = load.between(t2, t3)
        failed = [r for r in during if not r.ok]
        figures["kill"] = summary(during)
        figures["kill_failed"] = [{"replica": r.replica, "error": (r.error or "")[:80],
                                   "started_before_kill_s": round(killed - r.start, 2)} for r in failed]
        print("\nFLEET FIGURES " + json.dumps(figures))
        # only what was in flight on the killed replica failed
        assert len(failed) <= WORKERS
        assert all(r.start < killed and r.end >= killed for r in failed), failed
        assert all(r.replica in ("r1", None) for r in failed), failed
        # nothing went to it after HAProxy marked it down, until it rejoined; then it served again
        assert not [r for r in during if r.replica == "r1" and marked < r.start < rejoined - 0.5]
        assert [r for r in during if r.replica == "r1" and r.ok and r.start > rejoined]
    finally:
        for server in replicas:
            if server.proc is not None and server.proc.poll() is None:
                server.stop()
        for service in reversed(services):
            service.stop()
