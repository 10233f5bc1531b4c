"""Issue 12 against the real server: every bad input a clear 4xx, bounded memory, honest connections.

Each test reproduces one defect the probe found (numbered as in the issue) and checks the fix
through HTTP to a real ``trillama serve`` with the real ``smollm2:135m``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import httpx
import pytest

from trillama.store.create import SERVER_PATHS_REFUSED

SMOL = "smollm2:135m"
ONE = {"num_predict": 1, "temperature": 0}


def post_raw(server, path: str, body: bytes, timeout: float = 60) -> httpx.Response:
    return httpx.post(server.base_url + path, content=body, timeout=timeout,
                      headers={"Content-Type": "application/json"})


def assert_json_error(r: httpx.Response, status: int, contains: str = "") -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    body = r.json()
    error = body["error"]
    message = error if isinstance(error, str) else error["message"]
    assert contains in message, body
    return body


# --------------------------------------------------------------------- 1: huge prompts, body cap
def runner_rss(server) -> int:
    return sum(p.memory_info().rss for p in server.children())


def test_huge_bodies_get_413_and_huge_prompts_a_fast_400_with_bounded_runner_memory(start_server, shared_server):
    # Default cap (64 MiB): a 200 MB body is refused from its Content-Length, before it is read.
    server = shared_server
    prompt = "a " * (100 * 1024 * 1024)  # 200 MiB of text
    body = json.dumps({"model": SMOL, "messages": [{"role": "user", "content": prompt}],
                       "stream": False}).encode()
    started = time.monotonic()
    r = post_raw(server, "/api/chat", body)
    assert_json_error(r, 413, "TRILLAMA_MAX_BODY_SIZE")
    assert time.monotonic() - started < 10
    assert_json_error(post_raw(server, "/v1/chat/completions", body), 413)
    assert server.proc.poll() is None

    # Cap lifted: the prompt reaches the model and is refused by length, fast, without the runner
    # growing with the text (it used to grow ~95x the prompt until the OOM killer came).
    big = start_server({"TRILLAMA_MAX_BODY_SIZE": "300MiB"})
    with big.client() as http:
        assert http.post("/api/generate", json={"model": SMOL, "prompt": "hi", "options": ONE,
                                                "stream": False}).status_code == 200
    before = runner_rss(big)
    assert before > 0
    started = time.monotonic()
    r = post_raw(big, "/api/chat", body, timeout=120)
    elapsed = time.monotonic() - started
    assert_json_error(r, 400, "the prompt is longer than the context length")
    assert elapsed < 30, elapsed  # the JSON parse of 200 MB dominates; no tokenizing of it
    assert runner_rss(big) < before + 100 * 2**20, (before, runner_rss(big))
    # Ollama's chat truncation still applies: a huge *old* message is dropped, the chat answers.
    messages = [{"role": "user", "content": "b " * (4 * 1024 * 1024)}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "Say hi."}]
    with big.client() as http:
        r = http.post("/api/chat", json={"model": SMOL, "messages": messages, "options": ONE, "stream": False})
        assert r.status_code == 200, r.text[:300]
        assert r.json()["prompt_eval_count"] < 200
        # generate: the same fast 400 for a prompt the context cannot hold
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "c " * (8 * 1024 * 1024), "stream": False})
        assert_json_error(r, 400, "the prompt is longer than the context length")
    assert runner_rss(big) < before + 100 * 2**20


# --------------------------------------------------------------------- 2-6, 9: bad values, 400s
@pytest.fixture
def server(shared_server):
    """The bad-value and connection tests share the session's server; the two that break the
    store on disk start their own (``start_server``)."""
    return shared_server


@pytest.fixture
def http(server):
    with server.client() as client:
        yield client


def test_bad_keep_alive_values_are_400_and_ps_always_answers(http):
    for value, text in [("", 'time: invalid duration ""'), ("   ", 'time: invalid duration "   "'),
                        ("99999999999h", 'time: invalid duration "99999999999h"'),
                        (1e12, "longer than the longest duration"), (1e300, "longer than the longest duration")]:
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "hi", "keep_alive": value})
        assert_json_error(r, 400, text)
    # The longest duration Go has is accepted, and /api/ps can still show it.
    r = http.post("/api/generate", json={"model": SMOL, "keep_alive": "2562047h"})
    assert r.status_code == 200, r.text
    ps = http.get("/api/ps")
    assert ps.status_code == 200 and ps.json()["models"][0]["expires_at"].startswith("2319-")  # +292 years
    r = http.post("/api/generate", json={"model": SMOL, "keep_alive": -1})
    assert r.status_code == 200 and http.get("/api/ps").json()["models"][0]["expires_at"].startswith("9999-")


def test_deep_nesting_and_non_json_numbers_are_400(http, server):
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_json_error(post_raw(server, "/api/chat", deep), 400, "nested deeper")
    nested = json.dumps({"model": SMOL, "prompt": "x", "format": json.loads("[" * 200 + "]" * 200)}).encode()
    assert_json_error(post_raw(server, "/api/generate", nested), 400, "nested deeper than 128")
    assert_json_error(post_raw(server, "/api/generate", b'{"model":"x","options":{"temperature":NaN}}'), 400)
    assert_json_error(post_raw(server, "/api/generate", b'{"model":"x","options":{"top_p":1e999}}'), 400,
                      "cannot unmarshal number 1e999")
    assert_json_error(post_raw(server, "/v1/chat/completions", deep), 400)


def test_out_of_range_options_are_400_or_clamped(http):
    for options, name in [({"num_predict": 2**70}, "num_predict"), ({"seed": 2**64}, "seed"),
                          ({"top_k": 1e30}, "top_k")]:
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "hi", "options": options, "stream": False})
        assert_json_error(r, 400, f'option "{name}" is out of range')
    # Where Ollama lets the runtime decide (num_thread <= 0), so does trillama.
    for options in ({"num_thread": -5, **ONE}, {"num_batch": -1, **ONE}, {"seed": 2**40, **ONE},
                    {"num_ctx": -3, **ONE}):
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "hi", "options": options, "stream": False})
        assert r.status_code == 200, (options, r.text)


def test_openai_numbers_past_64_bits_reach_the_runner_clamped(http):
    # Found by tests/test_fuzz_api.py: these were 500 "model runner ended the request without a result".
    from trillama.actors.sampling import job_from_options

    job = job_from_options({"num_predict": int(1e300), "seed": 2**70, "top_k": 2**40, "repeat_last_n": -(2**40)},
                           prompt="x")
    assert job.num_predict == 2**31 - 1 and job.seed == (2**70) & 0xFFFFFFFF
    assert job.top_k == 2**31 - 1 and job.repeat_last_n == -(2**31)
    r = http.post("/v1/chat/completions", json={"model": SMOL, "messages": [{"role": "user", "content": "hi"}],
                                                "seed": 2**70, "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_lone_surrogates_read_as_replacement_characters(server):
    body = b'{"model":"%s","messages":[{"role":"user","content":"\\ud800x"}],"stream":false,' \
           b'"_debug_render_only":true}' % SMOL.encode()
    r = post_raw(server, "/api/chat", body)
    assert r.status_code == 200, r.text
    assert "\ufffdx" in r.json()["_debug_info"]["rendered_template"]
    r = post_raw(server, "/api/generate", b'{"model":"%s","prompt":"\\udc00hi","stream":false,'
                                          b'"options":{"num_predict":1}}' % SMOL.encode())
    assert r.status_code == 200, r.text
    # Invalid UTF-8 bytes inside a string: U+FFFD too, as Go decodes them.
    r = post_raw(server, "/api/chat", b'{"model":"%s","messages":[{"role":"user","content":"\xff\xfe ok"}],'
                                      b'"stream":false,"_debug_render_only":true}' % SMOL.encode())
    assert r.status_code == 200 and "\ufffd\ufffd ok" in r.json()["_debug_info"]["rendered_template"]


def test_wrong_types_inside_messages_and_tools_name_the_field(http):
    cases = [
        ({"role": "user", "content": 5}, "ChatRequest.messages.content of type string"),
        ({"role": 1, "content": "x"}, "ChatRequest.messages.role of type string"),
        ({"role": "user", "content": "x", "images": "abc"}, "ChatRequest.messages.images of type []string"),
        ({"role": "assistant", "content": "", "tool_calls": [{"function": 3}]},
         "ChatRequest.messages.tool_calls.function of type struct"),
        ({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": [1]}}]},
         "ChatRequest.messages.tool_calls.function.arguments of type map"),
    ]
    for message, text in cases:
        r = http.post("/api/chat", json={"model": SMOL, "messages": [message], "stream": False})
        body = assert_json_error(r, 400, text)
        assert body["error"].startswith("json: cannot unmarshal")


# --------------------------------------------------------------------- 7, 8: connections
def raw_exchange(port: int, data: bytes, wait: float) -> tuple[bytes, bool, float]:
    """Send ``data``; read until the server closes (True) or ``wait`` seconds pass (False)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(wait)
    sock.sendall(data)
    started = time.monotonic()
    received = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received, True, time.monotonic() - started
            received += chunk
    except socket.timeout:
        return received, False, time.monotonic() - started
    finally:
        sock.close()


def test_connection_close_and_http10_close_the_socket(server):
    for request in (b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                    b"GET /api/version HTTP/1.0\r\nHost: localhost\r\n\r\n",
                    b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"):
        received, closed, elapsed = raw_exchange(server.port, request, wait=10)
        assert received.startswith(b"HTTP/1.1 "), received
        assert closed and elapsed < 5, (request, elapsed)


def test_slow_headers_and_stalled_bodies_time_out_but_long_streams_do_not(start_server):
    server = start_server({"TRILLAMA_HEADER_TIMEOUT": "2s", "TRILLAMA_BODY_TIMEOUT": "2s"})
    _, closed, elapsed = raw_exchange(server.port, b"GET /api/version HTTP/1.1\r\nHost: loc", wait=15)
    assert closed and 1.5 < elapsed < 10, elapsed
    stalled = b"POST /api/show HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"model\":"
    _, closed, elapsed = raw_exchange(server.port, stalled, wait=15)
    assert closed and 1.5 < elapsed < 10, elapsed
    # A response that takes longer than both timeouts while the client sends nothing is fine.
    with server.client() as http:
        started = time.monotonic()
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "Count to one hundred.", "stream": True,
                                             "options": {"num_predict": 400, "temperature": 0}})
        assert r.status_code == 200
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert lines[-1]["done"] is True, lines[-1]
        # and an idle keep-alive connection outlives the header timeout
        time.sleep(2.5)
        assert http.get("/api/version").status_code == 200
    assert time.monotonic() - started > 0  # the stream itself is the check above


# --------------------------------------------------------------------- 10: a missing blob
def manifest_of(models_dir: Path, name: str) -> dict:
    path = models_dir / "manifests/registry.ollama.ai/library" / name.replace(":", "/")
    return json.loads(path.read_text())


def blob_file(models_dir: Path, digest: str) -> Path:
    return models_dir / "blobs" / digest.replace(":", "-")


def test_a_missing_blob_keeps_the_model_listed_and_names_the_blob(start_server, models_dir):
    server = start_server()
    with server.client() as http:
        r = http.post("/api/create", json={"model": "lonely", "from": SMOL, "system": "a system of its own",
                                           "stream": False})
        assert r.status_code == 200, r.text
        system = next(layer["digest"] for layer in manifest_of(models_dir, "lonely:latest")["layers"]
                      if layer["mediaType"].endswith(".system"))
        blob_file(models_dir, system).unlink()
        # the weights of the bundled model too (the private store hard-links them: the seed is safe)
        weights = next(layer["digest"] for layer in manifest_of(models_dir, "smollm2:135m")["layers"]
                       if layer["mediaType"].endswith(".model"))
        blob_file(models_dir, weights).unlink()
        names = [m["name"] for m in http.get("/api/tags").json()["models"]]
        assert "lonely:latest" in names and "smollm2:135m" in names
        # a 404 naming the blob (issue 24; it was a 500)
        assert_json_error(http.post("/api/show", json={"model": "lonely"}), 404, system)
        assert_json_error(http.post("/api/generate", json={"model": "lonely", "prompt": "hi"}), 404, system)
        assert_json_error(http.post("/api/chat", json={"model": SMOL, "messages": []}), 404, weights)
        body = assert_json_error(http.post("/v1/chat/completions", json={
            "model": SMOL, "messages": [{"role": "user", "content": "hi"}]}), 404, weights)
        assert body["error"]["type"] == "not_found_error"
        assert http.get("/api/ps").status_code == 200


# --------------------------------------------------------------------- 11: server-side paths
def test_classic_create_refuses_server_paths_uniformly(start_server, shared_server, tmp_path, smollm2_gguf):
    server = shared_server
    with server.client() as http:
        answers = set()
        for body in ({"model": "x", "modelfile": "FROM /etc/passwd\n"},
                     {"model": "x", "modelfile": "FROM /no/such/file.gguf\n"},
                     {"model": "x", "modelfile": f"FROM {SMOL}\nADAPTER /etc/hostname\n"},
                     {"model": "x", "modelfile": "FROM ../../../../etc/passwd\n"},
                     {"model": "x", "path": "/etc/hostname"},
                     {"model": "x", "path": "/no/such/Modelfile"}):
            r = http.post("/api/create", json={**body, "stream": False})
            answers.add((r.status_code, r.text))
        assert answers == {(400, json.dumps({"error": SERVER_PATHS_REFUSED}, separators=(",", ":")))}, answers
        # what `ollama show --modelfile` prints (a blob path inside the store) still works
        shown = http.post("/api/show", json={"model": SMOL}).json()["modelfile"]
        blob_line = next(line for line in shown.splitlines() if line.startswith("FROM /"))
        r = http.post("/api/create", json={"model": "again", "modelfile": blob_line + "\n", "stream": False})
        assert r.status_code == 200, r.text

    allowed = tmp_path / "imports"
    allowed.mkdir()
    try:  # a real file inside the directory: a symlink out of it would be refused, rightly
        os.link(smollm2_gguf, allowed / "weights.gguf")
    except OSError:
        shutil.copy(smollm2_gguf, allowed / "weights.gguf")
    (allowed / "escape.gguf").symlink_to(smollm2_gguf)
    opted = start_server({"TRILLAMA_CREATE_PATHS": str(allowed)})
    with opted.client() as http:
        r = http.post("/api/create", json={"model": "imported", "modelfile": f"FROM {allowed}/weights.gguf\n",
                                           "stream": False})
        assert r.status_code == 200, r.text
        for outside in ("/etc/passwd", f"{allowed}/escape.gguf", f"{allowed}/../x.gguf"):
            r = http.post("/api/create", json={"model": "x", "modelfile": f"FROM {outside}\n", "stream": False})
            assert_json_error(r, 400, "server-side paths are not allowed")


# --------------------------------------------------------------------- 12: unexpected exceptions
def test_unexpected_exceptions_answer_json_with_the_request_id_and_log_a_traceback(start_server, models_dir):
    server = start_server()
    with server.client() as http:
        assert http.post("/api/create", json={"model": "odd", "from": SMOL, "system": "odd one",
                                              "stream": False}).status_code == 200
        config = manifest_of(models_dir, "odd:latest")["config"]["digest"]
        path = blob_file(models_dir, config)
        path.unlink()
        path.mkdir()  # reading the config blob now fails in a way no handler expects
        native = http.post("/api/show", json={"model": "odd"})
        body = assert_json_error(native, 500, "internal server error")
        request_id = native.headers["x-request-id"]
        assert request_id in body["error"]
        openai_style = http.post("/v1/chat/completions", json={"model": "odd", "messages": [{"role": "user",
                                                                                             "content": "hi"}]})
        body = assert_json_error(openai_style, 500, openai_style.headers["x-request-id"])
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert http.get("/api/tags").status_code == 200
    events = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    failures = [e for e in events if e.get("event") == "unhandled_error" and e.get("request_id") == request_id]
    assert failures and "IsADirectoryError" in failures[0]["exception"], failures


def test_error_shapes_are_registered_by_path_prefix():
    from trillama.api import errors

    assert errors.error_body("/api/chat", 400, "x") == {"error": "x"}
    assert errors.error_body("/v1/chat/completions", 404, "x")["error"]["type"] == "not_found_error"
    errors.register_error_shape("/v1/zz-test", lambda status, message: {"type": "error", "error": {
        "type": "api_error", "message": message}})
    try:
        assert errors.error_body("/v1/zz-test/x", 500, "boom") == {
            "type": "error", "error": {"type": "api_error", "message": "boom"}}
        assert "param" in errors.error_body("/v1/other", 500, "boom")["error"]
    finally:
        errors._SHAPES.pop("/v1/zz-test")


# --------------------------------------------------------------------- logs
ACCESS_FIELDS = {"request_id", "method", "route", "status", "client", "user_agent", "model", "prompt_tokens",
                 "generated_tokens", "first_token_ms", "total_ms", "done_reason", "queued", "queue_ms"}


def test_every_stderr_line_is_json_with_one_access_event_per_request(start_server):
    server = start_server({"TRILLAMA_LOG_FORMAT": "json", "OLLAMA_DEBUG": "1"})
    with server.client() as http:
        # greedy: a sampled answer to "Hi" may end after one token, and the counts below are exact
        r = http.post("/api/generate", json={"model": SMOL, "prompt": "Hi",
                                             "options": {"num_predict": 3, "temperature": 0},
                                             "stream": True}, headers={"User-Agent": "hardening-test/1"})
        assert r.status_code == 200
        generate_id = r.headers["x-request-id"]
        bad = http.post("/api/generate", json={"model": SMOL, "keep_alive": ""})
        assert bad.status_code == 400
        bad_id = bad.headers["x-request-id"]
        http.post("/api/generate", json={"model": SMOL, "keep_alive": 0})  # unload: the runner logs its exit
    server.stop()
    lines = [line for line in server.log_path.read_text().splitlines() if line.strip()]
    events = []
    for line in lines:
        events.append(json.loads(line))  # every line, runner lines included, must be JSON
    assert any(e.get("event") == "runner_ready" for e in events)
    access = [e for e in events if e.get("event") == "access"]
    mine = [e for e in access if e["request_id"] == generate_id]
    assert len(mine) == 1, mine
    entry = mine[0]
    assert ACCESS_FIELDS <= set(entry), ACCESS_FIELDS - set(entry)
    assert (entry["method"], entry["route"], entry["status"], entry["model"]) == ("POST", "/api/generate", 200, SMOL)
    assert entry["user_agent"] == "hardening-test/1" and entry["client"] == "127.0.0.1"
    assert entry["generated_tokens"] == 3 and entry["prompt_tokens"] > 0 and entry["done_reason"] == "length"
    assert 0 < entry["first_token_ms"] <= entry["total_ms"]
    assert entry["queued"] is False
    failed = [e for e in access if e["request_id"] == bad_id]
    assert len(failed) == 1 and failed[0]["status"] == 400 and "invalid duration" in failed[0]["error"]
