"""The scheduler and model actors, end to end: real server, real runner processes, real models.

Nothing here asserts on timing. Where a test needs the server to reach a state (a slot freed, a
model unloaded) it polls the server's own report of that state with a generous deadline.
"""

from __future__ import annotations

import json
import os
import signal

import httpx
import psutil
import trio

from conftest import upload_and_create, wait_for

SMOL = "smollm2:135m"
GEMMA = "gemma3:270m"




def runners(client: httpx.Client) -> list[dict]:
    r = client.get("/api/runners")
    assert r.status_code == 200
    return r.json()["runners"]


def runner_pid(client: httpx.Client, name: str) -> int | None:
    for row in runners(client):
        if row["name"] == name and row["state"] == "ready":
            return row["pid"]
    return None


def model_blob(client: httpx.Client, name: str) -> str:
    """The GGUF blob path, as ``/api/show``'s modelfile names it in its FROM line."""
    modelfile = client.post("/api/show", json={"model": name}).json()["modelfile"]
    return modelfile.split("\nFROM ", 1)[1].split("\n", 1)[0].strip()


def ndjson(response: httpx.Response) -> list[dict]:
    return [json.loads(line) for line in response.iter_lines() if line.strip()]


def test_generate_streams_and_reports_metrics(server):
    with server.client() as client:
        with client.stream("POST", "/api/generate", json={
            "model": SMOL, "prompt": "Count to five.", "options": {"temperature": 0, "num_predict": 12},
        }) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/x-ndjson")
            chunks = ndjson(r)
    assert all(not c["done"] for c in chunks[:-1])
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["eval_count"] == 12
    for field in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                  "eval_duration", "context", "created_at"):
        assert field in final, field
    assert "".join(c["response"] for c in chunks)


def test_ps_load_and_unload(server):
    with server.client() as client:
        assert client.get("/api/ps").json() == {"models": []}
        r = client.post("/api/generate", json={"model": SMOL})
        assert r.json()["done_reason"] == "load"
        models = client.get("/api/ps").json()["models"]
        assert [m["name"] for m in models] == [SMOL]
        row = models[0]
        for field in ("name", "model", "size", "size_vram", "digest", "details", "expires_at", "context_length"):
            assert field in row, field
        # honest size: at least the weights plus a KV cache, nothing on a GPU on this machine
        assert row["size"] > os.path.getsize(model_blob(client, SMOL))
        assert row["size_vram"] == 0
        pid = runner_pid(client, SMOL)
        assert pid and psutil.pid_exists(pid)
        r = client.post("/api/generate", json={"model": SMOL, "keep_alive": 0})
        assert r.json()["done_reason"] == "unload"
        assert client.get("/api/ps").json() == {"models": []}
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


def test_keep_alive_expiry(server):
    with server.client() as client:
        client.post("/api/generate", json={"model": SMOL, "keep_alive": "1s"})
        assert client.get("/api/ps").json()["models"]
        wait_for(lambda: client.get("/api/ps").json()["models"] == [], timeout=30)


def test_smaller_num_ctx_reuses_runner_larger_reloads(server):
    with server.client() as client:
        body = {"model": SMOL, "prompt": "Hi", "options": {"num_predict": 2, "num_ctx": 2048}}
        assert client.post("/api/generate", json={**body, "stream": False}).status_code == 200
        pid = runner_pid(client, SMOL)
        body["options"]["num_ctx"] = 1024
        assert client.post("/api/generate", json={**body, "stream": False}).status_code == 200
        assert runner_pid(client, SMOL) == pid
        body["options"]["num_ctx"] = 4096
        assert client.post("/api/generate", json={**body, "stream": False}).status_code == 200
        new_pid = wait_for(lambda: runner_pid(client, SMOL))
        assert new_pid != pid
        assert client.get("/api/ps").json()["models"][0]["context_length"] == 4096


def test_client_disconnect_frees_slot(start_server):
    server = start_server({"OLLAMA_NUM_PARALLEL": "2"})
    with server.client() as client:
        with client.stream("POST", "/api/generate", json={
            "model": SMOL, "prompt": "Write a long story about a dragon.", "options": {"num_predict": 2000},
        }) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
            busy = [s for row in runners(client) for s in row["slots"] if s["busy"]]
            assert len(busy) == 1
        # the response is closed: the runner must free the slot at its next decode step
        wait_for(lambda: all(not s["busy"] for row in runners(client) for s in row["slots"]))
        assert runners(client)[0]["refcount"] == 0


def test_runner_killed_mid_stream(start_server):
    server = start_server({"OLLAMA_NUM_PARALLEL": "1"})
    with server.client() as client:
        client.post("/api/generate", json={"model": GEMMA})  # load the other model
        gemma_pid = runner_pid(client, GEMMA)
        results: dict[str, list[dict]] = {}

        async def gemma_stream() -> None:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as ac:
                async with ac.stream("POST", "/api/generate", json={
                    "model": GEMMA, "prompt": "Tell me about the sea.",
                    "options": {"num_predict": 60, "temperature": 0}}) as r:
                    results["gemma"] = [json.loads(x) async for x in r.aiter_lines() if x.strip()]

        async def smol_stream_then_kill() -> None:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as ac:
                async with ac.stream("POST", "/api/generate", json={
                    "model": SMOL, "prompt": "Tell me a long story.", "options": {"num_predict": 3000}}) as r:
                    chunks = []
                    async for line in r.aiter_lines():
                        if not line.strip():
                            continue
                        chunks.append(json.loads(line))
                        if len(chunks) == 3:
                            pid = runner_pid(client, SMOL)
                            os.kill(pid, signal.SIGKILL)
                    results["smol"] = chunks

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(gemma_stream)
                nursery.start_soon(smol_stream_then_kill)

        trio.run(main)
        assert "error" in results["smol"][-1], results["smol"][-1]
        assert "unexpectedly stopped" in results["smol"][-1]["error"]
        assert results["gemma"][-1]["done"] is True and results["gemma"][-1]["eval_count"] == 60
        assert runner_pid(client, GEMMA) == gemma_pid
        # the next request to the killed model reloads it
        r = client.post("/api/generate", json={"model": SMOL, "prompt": "Hi", "stream": False,
                                               "options": {"num_predict": 3}})
        assert r.status_code == 200 and r.json()["done"] is True


def test_corrupt_gguf_fails_cleanly(start_server, models_dir):
    server = start_server()
    with server.client() as client:
        # a copy of the model whose weights blob is then damaged on disk
        blob = model_blob(client, SMOL)
        assert os.path.exists(blob)
        data = open(blob, "rb").read()
        broken = models_dir / "broken.gguf"
        broken.write_bytes(data[: len(data) // 3])
        # the store rejects non-GGUF files, but a truncated GGUF still has a valid header
        upload_and_create(client, "broken:latest", broken)
        r = client.post("/api/generate", json={"model": "broken", "prompt": "Hi", "stream": False})
        assert r.status_code == 500
        assert r.json()["error"]
        assert client.get("/").status_code == 200
        r = client.post("/api/generate", json={"model": SMOL, "prompt": "Hi", "stream": False,
                                               "options": {"num_predict": 2}})
        assert r.status_code == 200


def test_two_models_under_a_budget_that_fits_one(start_server):
    server = start_server({"TRILLAMA_MEMORY_LIMIT": "1300MiB", "OLLAMA_NUM_PARALLEL": "1"})
    outcomes: list[tuple[str, int, dict]] = []

    async def one(ac: httpx.AsyncClient, model: str, i: int) -> None:
        r = await ac.post("/api/generate", json={"model": model, "prompt": f"Say {i}.", "stream": False,
                                                 "options": {"num_predict": 5}})
        outcomes.append((model, r.status_code, r.json()))

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300) as ac:
            for round_ in range(3):
                async with trio.open_nursery() as nursery:
                    for model in (SMOL, GEMMA):
                        nursery.start_soon(one, ac, model, round_)

    trio.run(main)
    assert len(outcomes) == 6
    assert all(status == 200 and body["done"] for _, status, body in outcomes), outcomes
    assert {m for m, _, _ in outcomes} == {SMOL, GEMMA}
    log = server.log_text()
    assert log.count('"model_evicted"') >= 2
    with server.client() as client:
        assert len(client.get("/api/ps").json()["models"]) == 1


def test_overload_gets_503_and_accepted_requests_complete(start_server):
    slots, queue = 2, 2
    server = start_server({"OLLAMA_NUM_PARALLEL": str(slots), "OLLAMA_MAX_QUEUE": str(queue)})
    with server.client() as client:
        client.post("/api/generate", json={"model": SMOL})
    statuses: list[int] = []
    bodies: list = []

    async def one(ac: httpx.AsyncClient) -> None:
        r = await ac.post("/api/generate", json={"model": SMOL, "prompt": "Write a poem.", "stream": False,
                                                 "options": {"num_predict": 30}})
        statuses.append(r.status_code)
        bodies.append((r.status_code, r.headers.get("retry-after"), r.json()))

    async def main() -> None:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=300, limits=limits) as ac:
            async with trio.open_nursery() as nursery:
                for _ in range(10 * (slots + queue)):
                    nursery.start_soon(one, ac)

    trio.run(main)
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) >= 10 * (slots + queue) - 2 * (slots + queue)
    assert statuses.count(200) >= slots + queue
    for status, retry_after, body in bodies:
        if status == 503:
            assert body == {"error": "server busy, please try again.  maximum pending requests exceeded"}
            assert retry_after
        else:
            assert body["done"] is True and body["eval_count"] == 30
    with server.client() as client:
        assert client.get("/").status_code == 200


def test_sigterm_mid_stream_stops_everything(start_server):
    server = start_server()
    with server.client() as client:
        with client.stream("POST", "/api/generate", json={"model": SMOL, "prompt": "Tell a long story.",
                                                           "options": {"num_predict": 3000}}) as r:
            lines = r.iter_lines()
            next(lines)
            pid = runner_pid(client, SMOL)
            assert pid
            assert server.stop(signal.SIGTERM) == 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_kill_9_server_leaves_no_runner(start_server):
    server = start_server()
    with server.client() as client:
        client.post("/api/generate", json={"model": SMOL})
        pid = runner_pid(client, SMOL)
    server.proc.kill()
    server.proc.wait()
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             timeout=30)


def test_per_model_num_parallel(server):
    with server.client() as client:
        r = client.post("/api/create", json={"model": "smol-wide", "from": SMOL, "parameters": {"num_parallel": 3},
                                             "stream": False})
        assert r.status_code == 200, r.text
        client.post("/api/generate", json={"model": "smol-wide"})
        client.post("/api/generate", json={"model": SMOL})
        rows = {row["name"]: row for row in runners(client)}
        assert rows["smol-wide:latest"]["num_parallel"] == 3 and len(rows["smol-wide:latest"]["slots"]) == 3
        assert rows[SMOL]["num_parallel"] == 1 and len(rows[SMOL]["slots"]) == 1


def test_client_leaving_the_queue_frees_its_place(start_server):
    server = start_server({"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "1"})
    with server.client() as client:
        client.post("/api/generate", json={"model": SMOL})

        def queued() -> int:
            return sum(row["queued"] for row in runners(client))

        async def main() -> None:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as ac:
                async with ac.stream("POST", "/api/generate", json={
                        "model": SMOL, "prompt": "Tell a long story.", "options": {"num_predict": 3000}}) as long:
                    lines = long.aiter_lines()
                    await lines.__anext__()  # the only slot is now busy

                    async def waiter() -> None:
                        await ac.post("/api/generate", json={"model": SMOL, "prompt": "Hi", "stream": False})

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(waiter)
                        await trio.to_thread.run_sync(wait_for, lambda: queued() == 1)
                        # the queue is full: one more is refused at once
                        r = await ac.post("/api/generate", json={"model": SMOL, "prompt": "Hi", "stream": False})
                        assert r.status_code == 503
                        nursery.cancel_scope.cancel()  # the queued client goes away
                    await trio.to_thread.run_sync(wait_for, lambda: queued() == 0)
                # with the long stream closed too, a new request is served
                r = await ac.post("/api/generate", json={"model": SMOL, "prompt": "Hi", "stream": False,
                                                        "options": {"num_predict": 3}})
                assert r.status_code == 200 and r.json()["done"]

        trio.run(main)


def test_metrics_endpoint(server):
    with server.client() as client:
        # greedy, and a prompt that goes on: a sampled answer to "Hi" may end before 5 tokens
        r = client.post("/api/generate", json={"model": SMOL, "prompt": "Count from one to twenty:",
                                               "stream": True, "options": {"num_predict": 5, "temperature": 0}})
        assert r.status_code == 200
        text = client.get("/metrics").text
    assert 'trillama_http_requests_total{method="POST",route="/api/generate",status="200"} 1.0' in text
    assert f'trillama_tokens_total{{kind="generated",model="{SMOL}"}} 5.0' in text
    assert "trillama_models_loaded 1.0" in text
    assert f'trillama_requests_queued{{model="{SMOL}"}} 0.0' in text


def test_busy_models_share_the_cores(start_server):
    """Two models decoding at once split TRILLAMA_NUM_THREADS; alone, a model gets them all back."""
    server = start_server({"TRILLAMA_NUM_THREADS": "2"})

    def job(model: str, n: int) -> dict:
        # raw counting: SmolLM2 keeps going until num_predict, it never says it is done
        return {"model": model, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True,
                "options": {"num_predict": n, "temperature": 0}}

    def rows(client: httpx.Client) -> dict[str, dict]:
        return {row["name"]: row for row in runners(client) if row["state"] == "ready"}

    def threads(client: httpx.Client) -> dict[str, int]:
        return {name: row["threads"] for name, row in rows(client).items()}

    with server.client() as client:
        for model in (SMOL, GEMMA):  # load both
            assert client.post("/api/generate", json={"model": model}).status_code == 200
        assert threads(client) == {SMOL: 2, GEMMA: 2}
        with client.stream("POST", "/api/generate", json=job(SMOL, 5000)) as long:
            long_lines = long.iter_lines()
            assert json.loads(next(long_lines))["done"] is False
            assert threads(client) == {SMOL: 2, GEMMA: 2}  # working alone: all the cores
            with client.stream("POST", "/api/generate", json=job(GEMMA, 40)) as short:
                short_lines = short.iter_lines()
                assert json.loads(next(short_lines))["done"] is False
                assert threads(client) == {SMOL: 1, GEMMA: 1}  # both decoding: one core each
                assert any(json.loads(line)["done"] for line in short_lines if line.strip())

            def alone_again() -> bool:
                smol = rows(client)[SMOL]
                return smol["refcount"] == 1 and smol["threads"] == 2

            assert wait_for(alone_again)  # smollm2 still generating, on both cores again
        wait_for(lambda: all(not row["refcount"] for row in runners(client)))
        assert threads(client) == {SMOL: 2, GEMMA: 2}
