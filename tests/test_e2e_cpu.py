"""Decode threads fitted to the CPU, end to end: a real server beside a real busy neighbour.

The server samples the CPU use of processes outside its tree about once a second and gives up a
decode thread for each core a neighbour keeps busy (actors/cpu.py). Nothing here times anything:
the test reads the server's own report (``/api/runners``, ``/metrics``) of what it decided.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from trillama.actors.cpu import default_threads

#: These tests look for busy neighbours, so nothing else of the suite may run beside them.
pytestmark = pytest.mark.alone

SMOL = "smollm2:135m"


def _cpu(client) -> dict:
    r = client.get("/api/runners")
    assert r.status_code == 200
    return r.json()["cpu"]


def _wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = predicate()
        if ok:
            return last
        time.sleep(0.25)
    raise AssertionError(f"condition not reached; last seen {last}")


def _generate(client, n: int = 16) -> dict:
    r = client.post("/api/generate", json={"model": SMOL, "prompt": "1, 2, 3,", "raw": True, "stream": False,
                                           "options": {"num_predict": n, "temperature": 0}})
    assert r.status_code == 200, r.text
    return r.json()


def _threads(client) -> int:
    rows = [row for row in client.get("/api/runners").json()["runners"] if row["name"] == SMOL]
    assert rows and rows[0]["threads"] is not None, rows
    return rows[0]["threads"]


@pytest.mark.slow
@pytest.mark.skipif(default_threads() < 2, reason="needs two cores to have a thread to give up")
def test_a_busy_neighbour_costs_a_thread_and_the_thread_comes_back(start_server):
    server = start_server()
    cores = default_threads()
    with server.client() as client:
        assert _cpu(client)["adaptive"] is True and _cpu(client)["cores"] == cores
        _generate(client)
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            cpu = _wait(lambda: ((c := _cpu(client))["budget"] < cores, c))
            assert cpu["foreign"] >= 0.5
            _generate(client)
            assert _threads(client) == cpu["budget"]
            metrics = client.get("/metrics").text
            assert f'trillama_runner_threads{{model="{SMOL}"}} {float(cpu["budget"])}' in metrics
            assert "trillama_decode_threads_budget" in metrics and "trillama_cpu_foreign_cores" in metrics
        finally:
            hog.kill()
            hog.wait()
        # quiet again: the thread is taken back (other work on a shared machine may delay it)
        _wait(lambda: ((c := _cpu(client))["budget"] == cores, c), timeout=60)
        _generate(client)
        assert _threads(client) == cores


@pytest.mark.slow
def test_a_pinned_thread_count_is_never_adapted(start_server):
    server = start_server({"TRILLAMA_NUM_THREADS": "2"})
    with server.client() as client:
        cpu = _cpu(client)
        assert cpu["adaptive"] is False and cpu["budget"] == 2
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(2.5)  # more than two samples' worth: a watcher would have acted by now
            _generate(client)
            assert _cpu(client)["budget"] == 2
            assert _threads(client) == 2
        finally:
            hog.kill()
            hog.wait()


@pytest.mark.slow
def test_a_request_that_names_its_threads_keeps_them_beside_a_neighbour(start_server):
    server = start_server()
    if default_threads() < 2:
        pytest.skip("needs two cores")
    with server.client() as client:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            _wait(lambda: ((c := _cpu(client))["budget"] < default_threads(), c))
            r = client.post("/api/generate", json={"model": SMOL, "prompt": "1, 2,", "raw": True,
                                                   "stream": False,
                                                   "options": {"num_predict": 8, "num_thread": 2}})
            assert r.status_code == 200, r.text
            assert _threads(client) == 2
        finally:
            hog.kill()
            hog.wait()
