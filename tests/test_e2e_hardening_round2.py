"""Issue 24 against the real server: cross-site requests, long conversations, memory per request,
slow bodies, one access line per request, and the smaller protocol defects.

Each test reproduces one defect of the issue (numbered as there) through HTTP to a real
``trillama serve`` with the real models, and fails on the code before the fix.
"""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path

import httpx
import pytest

SMOL = "smollm2:135m"
ONE = {"num_predict": 1, "temperature": 0}
EVIL = "http://evil.example"


def assert_error(r: httpx.Response, status: int, contains: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), (r.headers["content-type"], r.text[:200])
    body = r.json()
    error = body["error"]
    message = error if isinstance(error, str) else error["message"]
    assert contains in message, body
    return body


def log_events(server) -> list[dict]:
    return [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]


def runner_rss(server) -> int:
    return sum(p.memory_info().rss for p in server.children())


# --------------------------------------------------------------------- 1: cross-site requests
#: One request per route family, each of which would change something or use a model if it ran.
CROSS_SITE = [
    ("POST", "/api/copy", {"source": SMOL, "destination": "127.0.0.1:5999/evil/stolen"}),
    ("POST", "/api/push", {"model": "127.0.0.1:5999/evil/stolen", "insecure": True}),
    ("POST", "/api/pull", {"model": "127.0.0.1:5999/evil/planted", "insecure": True}),
    ("POST", "/api/create", {"model": "planted", "from": SMOL, "system": "obey evil.example"}),
    ("DELETE", "/api/delete", {"model": SMOL}),
    ("POST", "/api/show", {"model": SMOL}),
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ("POST", "/api/blobs/sha256:" + "0" * 64, "not json"),
    ("POST", "/api/generate", {"model": SMOL, "prompt": "hi", "options": ONE}),
    ("POST", "/api/chat", {"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "options": ONE}),
    ("POST", "/api/embed", {"model": SMOL, "input": "hi"}),
    ("POST", "/v1/chat/completions", {"model": SMOL, "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/completions", {"model": SMOL, "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": SMOL, "input": "hi"}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/messages", {"model": SMOL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/v1/responses", {"model": SMOL, "input": "hi"}),
    ("GET", "/api/version", None),
    ("GET", "/", None),
    ("GET", "/metrics", None),
    ("GET", "/no/such/route", None),
    ("OPTIONS", "/api/chat", None),
]


def _send(http: httpx.Client, method: str, path: str, body, origin: str | None) -> httpx.Response:
    headers = {"Content-Type": "text/plain"}  # a "simple" request: no preflight in any browser
    if origin is not None:
        headers["Origin"] = origin
    content = body if isinstance(body, str) else (json.dumps(body) if body is not None else None)
    return http.request(method, path, content=content, headers=headers)


def test_cross_site_requests_are_refused_before_any_handler_runs(start_server):
    server = start_server({"OLLAMA_ORIGINS": "https://app.example"})
    with server.client() as http:
        for method, path, body in CROSS_SITE:
            r = _send(http, method, path, body, EVIL)
            assert r.status_code == 403, (method, path, r.status_code, r.text[:200])
            assert "access-control-allow-origin" not in r.headers, (method, path)
            if method != "HEAD":
                assert EVIL in r.text and "OLLAMA_ORIGINS" in r.text, (path, r.text)
        # Nothing ran: no copy, no model created or deleted, nothing loaded.
        names = {m["name"] for m in http.get("/api/tags").json()["models"]}
        assert SMOL in names and "planted:latest" not in names, names
        assert not any("stolen" in name for name in names), names
        assert http.get("/api/ps").json()["models"] == []
        # Other spellings of a foreign origin are foreign too.
        for origin in ("null", "http://localhost.evil.example", "http://127.0.0.1.evil.example:80",
                       "https://app.example.evil.example"):
            assert _send(http, "GET", "/api/tags", None, origin).status_code == 403, origin

        # Requests without an Origin (curl, SDKs) and from allowed origins keep working.
        assert _send(http, "POST", "/api/show", {"model": SMOL}, None).status_code == 200
        for origin in ("http://localhost:3000", "https://127.0.0.1", "app://obsidian.md", "https://app.example",
                       "chrome-extension://abcdefghijklmnop", "vscode-webview://1234"):
            r = _send(http, "POST", "/api/show", {"model": SMOL}, origin)
            assert r.status_code == 200, (origin, r.text[:200])
            assert r.headers["access-control-allow-origin"] == origin
        # A page the server itself serves (the Origin is the Host it was asked by) is not cross-site.
        r = http.get("/api/version", headers={"Origin": f"http://localhost:{server.port}",
                                              "Host": f"localhost:{server.port}"})
        assert r.status_code == 200
        # Preflights: allowed origins get the CORS headers, others 403.
        r = http.options("/api/chat", headers={"Origin": "http://localhost:8080",
                                               "Access-Control-Request-Method": "POST"})
        assert r.status_code == 204 and "POST" in r.headers["access-control-allow-methods"]
    events = [e for e in log_events(server) if e.get("event") == "access" and e.get("status") == 403]
    assert len(events) >= len(CROSS_SITE)


# --------------------------------------------------------------------- 2: long conversations
def conversation(n: int) -> list[dict]:
    """``n`` short turns, alternating, ending with the user's (as an agent session grows)."""
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"note {i}: the value is {i * 7}"}
                for i in range(n)]
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": "What was the last value?"})
    return messages


def test_ten_thousand_messages_are_truncated_and_counted_on_every_route(server):
    """10,001 messages used to take hours here (each dropped message re-rendered and re-tokenized
    the whole rest); the generous client timeout only catches that, it measures nothing."""
    messages = conversation(10_001)
    last = messages[-1]["content"]
    with server.client(timeout=300) as http:
        r = http.post("/api/chat", json={"model": SMOL, "messages": messages, "stream": False,
                                         "_debug_render_only": True})
        assert r.status_code == 200, r.text[:300]
        rendered = r.json()["_debug_info"]["rendered_template"]
        assert last in rendered and "note 0:" not in rendered and "note 9990:" in rendered
        r = http.post("/api/chat", json={"model": SMOL, "messages": messages, "stream": False, "options": ONE})
        assert r.status_code == 200, r.text[:300]
        chat = r.json()
        assert 3000 < chat["prompt_eval_count"] <= 4096, chat  # truncated to fit, and filling the context
        r = http.post("/v1/messages/count_tokens", json={"model": SMOL, "messages": messages})
        assert r.status_code == 200, r.text[:300]
        counted = r.json()["input_tokens"]
        # the whole conversation, past the context, as Anthropic counts it (issue 21)
        assert counted > 20 * 10_001, counted
        # The agents' routes never cut a conversation silently (issue 21): the 400 names both
        # numbers, and the count in it is the one count_tokens gave.
        r = http.post("/v1/messages", json={"model": SMOL, "messages": messages, "max_tokens": 1,
                                            "temperature": 0})
        assert r.status_code == 400, r.text[:300]
        assert r.json()["error"]["message"] == f"prompt is too long: {counted} tokens > 4096 maximum", r.text[:300]
        r = http.post("/v1/responses", json={"model": SMOL, "input": messages, "max_output_tokens": 16,
                                             "store": False})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
        r = http.post("/v1/chat/completions", json={"model": SMOL, "messages": messages, "max_tokens": 1})
        assert r.status_code == 200, r.text[:300]  # Ollama's /v1 drops old messages, as natively
        assert 3000 < r.json()["usage"]["prompt_tokens"] <= 4096


# --------------------------------------------------------------------- 3, 4: /api/embed
def test_embed_over_the_context_without_truncation_is_400(server):
    with server.client() as http:
        long = "word " * 600
        for truncate in (False,):
            r = http.post("/api/embed", json={"model": SMOL, "input": [long, "short"], "truncate": truncate,
                                              "options": {"num_ctx": 256}})
            assert_error(r, 400, "the input length exceeds the context length")
        # a huge input is the same 400, not a 500, and the model keeps serving
        r = http.post("/api/embed", json={"model": SMOL, "input": "x " * 2_000_000, "truncate": False,
                                          "options": {"num_ctx": 256}})
        assert_error(r, 400, "the input length exceeds the context length")
        r = http.post("/api/embed", json={"model": SMOL, "input": long, "options": {"num_ctx": 256}})
        assert r.status_code == 200 and r.json()["prompt_eval_count"] == 256, r.text[:300]
        r = http.post("/v1/embeddings", json={"model": SMOL, "input": "hi"})
        assert r.status_code == 200


def test_a_huge_embed_input_does_not_grow_the_runner(start_server):
    server = start_server({"TRILLAMA_MAX_BODY_SIZE": "100MiB"})
    with server.client(timeout=300) as http:
        # a normal input longer than one decode chunk: what any embedding costs is counted before
        small_context = {"num_ctx": 1024}  # a quicker test; the memory is the same story at 4096
        r = http.post("/api/embed", json={"model": SMOL, "input": "warm up " * 200, "options": small_context})
        assert r.status_code == 200
        before = runner_rss(server)
        assert before > 0
        for text in ("a " * (30 * 10**6), "b" * (60 * 10**6)):  # 60 MB each: words, and one long "word"
            r = http.post("/api/embed", json={"model": SMOL, "input": text, "truncate": True,
                                              "options": small_context})
            assert r.status_code == 200, r.text[:300]
            assert r.json()["prompt_eval_count"] == 1024
        after = runner_rss(server)
        assert after < before + 100 * 2**20, (before >> 20, after >> 20)


# --------------------------------------------------------------------- 5: num_thread
def test_num_thread_is_bounded_by_the_cores_the_process_may_use(server):
    from trillama.actors.cpu import available_cpus

    limit = max(1, math.ceil(available_cpus() - 1e-9))  # what the server may run, whatever was asked
    with server.client() as http:
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "hi", "stream": False,
                                             "options": {**ONE, "num_thread": 10000}})
        assert r.status_code == 200, r.text[:300]
        (runner,) = server.children()
        assert runner.num_threads() < 4 * limit + 16, runner.num_threads()  # not 1,024 decode threads
        # the clamped value is what the runner runs with: asking for it (or for more) reloads nothing
        for threads in (limit, 10001, 2**40):
            r = http.post("/api/generate", json={"model": SMOL, "prompt": "hi", "stream": False,
                                                 "options": {**ONE, "num_thread": threads}})
            assert r.status_code == 200, r.text[:300]
            assert [p.pid for p in server.children()] == [runner.pid], threads
    clamped = [e for e in log_events(server) if e.get("event") == "num_thread_clamped"]
    assert clamped and clamped[0]["requested"] == 10000 and clamped[0]["limit"] == limit, clamped
    assert "cores" in clamped[0]["reason"]


# --------------------------------------------------------------------- 6: slow bodies
def test_a_body_trickling_one_byte_at_a_time_is_cut_off(start_server):
    server = start_server({"TRILLAMA_BODY_TIMEOUT": "2s", "TRILLAMA_BODY_MIN_RATE": "100"})
    body = json.dumps({"model": SMOL, "prompt": "x" * 200}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(0.5)
    sock.sendall(b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body))
    started = time.monotonic()
    closed = False
    try:
        for byte in body:  # one byte every 0.3 s: never a stall of TRILLAMA_BODY_TIMEOUT
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            try:
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except OSError:
                closed = True
                break
            if time.monotonic() - started > 30:
                break
    finally:
        sock.close()
    elapsed = time.monotonic() - started
    assert closed, f"still reading a 3 bytes/s body after {elapsed:.0f} s"
    # 2 s of grace, then 100 bytes/s: a few bytes in, the deadline has long passed
    assert elapsed < 20, elapsed
    events = [e for e in log_events(server) if e.get("event") == "read_timeout"]
    assert events and events[-1]["waiting_for"] == "body_rate", events
    with server.client() as http:  # a normal body on a new connection is fine
        assert http.post("/api/show", json={"model": SMOL}).status_code == 200


# --------------------------------------------------------------------- 7: one access line per request
def access_events(server) -> list[dict]:
    return [e for e in log_events(server) if e.get("event") == "access"]


#: A generation that goes on for thousands of tokens: a raw count that the model continues
#: (an instruction such as "Count to five thousand." may end after a few numbers).
COUNTING = {"model": SMOL, "prompt": ", ".join(str(n) for n in range(1, 41)) + ",", "raw": True, "stream": False,
            "options": {"num_predict": 4000, "temperature": 0}}


def test_every_request_logs_exactly_one_access_event(server):
    with server.client() as http:
        assert http.post("/api/generate", json={"model": SMOL, "prompt": "hi", "options": ONE,
                                                "stream": False}).status_code == 200  # load
        # A client that gives up on a non-streaming request.
        with pytest.raises(httpx.ReadTimeout):
            http.post("/api/generate", json=COUNTING,
                      headers={"User-Agent": "gives-up/1"}, timeout=2)
        # A client that leaves a stream after a few chunks.
        with http.stream("POST", "/api/generate", json={**COUNTING, "stream": True},
                headers={"User-Agent": "leaves-stream/1"}) as r:
            lines = r.iter_lines()
            chunks = [json.loads(next(lines)) for _ in range(5)]
            assert all(not c["done"] for c in chunks)
        # An ordinary mix: answered, refused, unknown.
        assert http.get("/api/tags", headers={"User-Agent": "plain/1"}).status_code == 200
        assert http.get("/v1/nothing", headers={"User-Agent": "plain/1"}).status_code == 404
        assert http.post("/api/show", json={"model": "nope"}, headers={"User-Agent": "plain/1"}).status_code == 404

    def mine(agent: str) -> list[dict]:
        return [e for e in access_events(server) if e.get("user_agent") == agent]

    from conftest import wait_for

    abandoned = wait_for(lambda: mine("gives-up/1"), timeout=30)
    assert len(abandoned) == 1, abandoned
    entry = abandoned[0]
    assert entry["status"] == 499 and entry["error"] == "client disconnected", entry
    assert entry["model"] == SMOL and entry["prompt_tokens"] > 0 and entry["generated_tokens"] > 0, entry
    assert entry["done_reason"] == "cancel"
    left = wait_for(lambda: mine("leaves-stream/1"), timeout=30)
    assert len(left) == 1, left
    entry = left[0]
    assert entry["status"] == 200 and entry["error"] == "client disconnected", entry
    assert entry["prompt_tokens"] > 0 and entry["generated_tokens"] >= 5 and entry["done_reason"] == "cancel", entry
    time.sleep(1)  # nothing logs a second line later
    assert len(mine("gives-up/1")) == 1 and len(mine("leaves-stream/1")) == 1
    assert [e["status"] for e in mine("plain/1")] == [200, 404, 404]
    ids = [e["request_id"] for e in access_events(server)]
    assert len(ids) == len(set(ids)), "a request logged twice"


# --------------------------------------------------------------------- 8: the smaller defects
def test_unknown_v1_paths_and_methods_answer_in_the_protocols_error_shape(server):
    with server.client() as http:
        r = http.get("/v1/nothing")
        body = assert_error(r, 404, "/v1/nothing")
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "not_found_error"
        r = http.get("/v1/chat/completions")
        body = assert_error(r, 405, "GET")
        assert set(body["error"]) == {"message", "type", "param", "code"}
        r = http.get("/v1/messages")
        body = assert_error(r, 405, "GET")
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
        r = http.put("/v1/messages/count_tokens")
        assert_error(r, 405)
        # native paths keep Ollama's (gin's) plain text
        r = http.get("/api/nothing")
        assert r.status_code == 404 and r.text == "404 page not found"
        r = http.get("/api/chat")
        assert r.status_code == 405 and r.text == "405 method not allowed"


HUGE = [2**63, 1e30, 2**70]


def test_huge_token_limits_are_refused_by_one_rule_on_every_route(server):
    chat = [{"role": "user", "content": "hi"}]
    with server.client() as http:
        for value in HUGE:
            assert_error(http.post("/api/generate", json={"model": SMOL, "prompt": "hi",
                                                          "options": {"num_predict": value}}),
                         400, "does not fit in a 64-bit integer")
            assert_error(http.post("/api/chat", json={"model": SMOL, "messages": chat,
                                                      "options": {"num_predict": value}}),
                         400, "does not fit in a 64-bit integer")
            body = assert_error(http.post("/v1/messages", json={"model": SMOL, "messages": chat,
                                                                "max_tokens": value}),
                                400, "max_tokens")
            assert "64-bit" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
            body = assert_error(http.post("/v1/responses", json={"model": SMOL, "input": "hi",
                                                                 "max_output_tokens": value}),
                                400, "max_output_tokens")
            assert "64-bit" in body["error"]["message"]
            for field in ("max_tokens", "max_completion_tokens"):
                body = assert_error(http.post("/v1/chat/completions", json={"model": SMOL, "messages": chat,
                                                                           field: value}),
                                    400, field)
                assert "64-bit" in body["error"]["message"]
            body = assert_error(http.post("/v1/completions", json={"model": SMOL, "prompt": "hi",
                                                                   "max_tokens": value}), 400, "max_tokens")
            assert "64-bit" in body["error"]["message"]
        # the largest 64-bit limit is no error anywhere: it means "until the context is full"
        biggest = 2**63 - 1
        r = http.post("/v1/messages", json={"model": SMOL, "messages": chat, "max_tokens": biggest,
                                            "stop_sequences": ["\n", "."], "temperature": 0})
        assert r.status_code == 200, r.text[:300]
        r = http.post("/v1/chat/completions", json={"model": SMOL, "messages": chat, "max_tokens": biggest,
                                                    "stop": ["\n", "."], "temperature": 0})
        assert r.status_code == 200, r.text[:300]


def manifest_of(models_dir: Path, name: str) -> dict:
    path = models_dir / "manifests/registry.ollama.ai/library" / name.replace(":", "/")
    return json.loads(path.read_text())


def test_a_model_with_a_missing_blob_is_a_4xx_naming_it_and_flagged_in_tags(server, models_dir):
    with server.client() as http:
        r = http.post("/api/create", json={"model": "lonely", "from": SMOL, "system": "a system of its own",
                                           "stream": False})
        assert r.status_code == 200, r.text
        system = next(layer["digest"] for layer in manifest_of(models_dir, "lonely:latest")["layers"]
                      if layer["mediaType"].endswith(".system"))
        (models_dir / "blobs" / system.replace(":", "-")).unlink()
        weights = next(layer["digest"] for layer in manifest_of(models_dir, SMOL)["layers"]
                       if layer["mediaType"].endswith(".model"))
        (models_dir / "blobs" / weights.replace(":", "-")).unlink()  # hard-linked: the seed is safe

        tags = {m["name"]: m for m in http.get("/api/tags").json()["models"]}
        assert set(tags["lonely:latest"]["missing_blobs"]) == {system, weights}, tags["lonely:latest"]  # shares SMOL's
        assert tags[SMOL]["missing_blobs"] == [weights]
        assert "missing_blobs" not in tags["gemma3:270m"]
        for path, body in (("/api/show", {"model": "lonely"}), ("/api/generate", {"model": "lonely", "prompt": "hi"}),
                           ("/api/chat", {"model": SMOL, "messages": []}),
                           ("/api/embed", {"model": SMOL, "input": "hi"})):
            assert_error(http.post(path, json=body), 404, system if "lonely" in json.dumps(body) else weights)
        body = assert_error(http.post("/v1/chat/completions", json={
            "model": SMOL, "messages": [{"role": "user", "content": "hi"}]}), 404, weights)
        assert body["error"]["type"] == "not_found_error"
        body = assert_error(http.post("/v1/messages", json={
            "model": SMOL, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}), 404, weights)
        assert body["type"] == "error"
        # deleting the broken model still works, and the healthy one still answers
        assert http.request("DELETE", "/api/delete", json={"model": "lonely"}).status_code == 200
        r = http.post("/api/generate", json={"model": "gemma3:270m", "prompt": "hi", "stream": False,
                                             "options": ONE})
        assert r.status_code == 200, r.text[:300]


def test_count_tokens_checks_the_types_of_the_fields_it_does_not_use(server):
    base = {"model": SMOL, "messages": [{"role": "user", "content": "hi"}]}
    with server.client() as http:
        assert http.post("/v1/messages/count_tokens", json=base).status_code == 200
        # the same fields with the right types are accepted (SDK callers reuse their request)
        ok = {**base, "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 3, "stream": False,
              "stop_sequences": ["x"], "metadata": {"user_id": "u"}}
        assert http.post("/v1/messages/count_tokens", json=ok).status_code == 200
        for field, value in (("max_tokens", "x"), ("temperature", "hot"), ("top_p", [1]), ("top_k", "a"),
                             ("stream", "yes"), ("stop_sequences", 7), ("metadata", 5)):
            body = assert_error(http.post("/v1/messages/count_tokens", json={**base, field: value}), 400, field)
            assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
