"""API keys end to end, against one real server with a key file (issue 23).

The ollama, openai and anthropic Python clients and curl each ask every route family with no key,
a wrong key, a key lacking the route's scope and a good key, and must see 401, 401, 403 and
success in that protocol's own error shape. Then: fairness between keys in a model's queue, the
per-key limits (429 with Retry-After), the key file edited while serving (a new key works at once,
a revoked one is refused at once, a broken file keeps the old keys), bad headers, the brake on
failed authentication, what the log and /metrics show, and refusals at start.

One server serves the module (the seeded store, ``OLLAMA_NUM_PARALLEL=1``); generations ask for
one or a few tokens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic
import attrs
import httpx
import ollama
import openai
import pytest
import trio

from conftest import REPO, ServerProcess, wait_for
from trillama.keys import KeyLimits, add_key

SMOL = "smollm2:135m"
GEMMA = "gemma3:270m"
ENV_KEY = "trk_env-key-for-the-auth-tests-0123456789"


@attrs.frozen
class Keyed:
    server: ServerProcess
    key_file: Path
    secrets: dict[str, str]

    def key(self, name: str | None) -> str | None:
        return None if name is None else self.secrets.get(name, name)

    def headers(self, name: str | None) -> dict[str, str]:
        key = self.key(name)
        return {"Authorization": f"Bearer {key}"} if key else {}


#: id → (scopes, model allow-list, limits) of the keys in the module's key file
KEYS = {
    "inf": (["inference"], [], KeyLimits()),
    "mgr": (["manage"], [], KeyLimits()),
    "adm": (["admin"], [], KeyLimits()),
    "smol-only": (["inference"], [SMOL], KeyLimits()),
    "conc": (["inference"], [], KeyLimits(max_concurrent=1)),
    "rpm": (["inference"], [], KeyLimits(requests_per_minute=2)),
    "tpm": (["inference"], [], KeyLimits(tokens_per_minute=5)),
    "fair-a": (["inference"], [], KeyLimits()),
    "fair-b": (["inference"], [], KeyLimits()),
}
WRONG = "trk_this-is-not-a-key-of-this-server-000000000"


@pytest.fixture(scope="module")
def keyed(seeded_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    root = tmp_path_factory.mktemp("auth")
    models = root / "models"
    shutil.copytree(seeded_models_dir, models, copy_function=os.link)
    key_file = root / "keys.toml"
    secrets = {name: add_key(key_file, name, scopes, models_, limits)
               for name, (scopes, models_, limits) in KEYS.items()}
    secrets["env"] = ENV_KEY
    server = ServerProcess(models, env={
        "TRILLAMA_BUNDLED_MODEL": "0", "TRILLAMA_API_KEYS_FILE": str(key_file), "TRILLAMA_API_KEY": ENV_KEY,
        "OLLAMA_NUM_PARALLEL": "1",
        # the matrix presents many wrong keys from 127.0.0.1; the brake has its own test and server
        "TRILLAMA_AUTH_FAILURES_PER_MINUTE": "0",
    }).start()
    try:
        yield Keyed(server, key_file, secrets)
    finally:
        server.stop()


# ----------------------------------------------------------------------------- shapes
def _protocol(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "openai" if path.startswith("/v1/") else "ollama"


def assert_shape(path: str, status: int, body: Any) -> None:
    """The refusal is in the route's protocol's error shape, with the code its SDK reads."""
    protocol = _protocol(path)
    if protocol == "ollama":
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    elif protocol == "openai":
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, body
        assert error["code"] == {401: "invalid_api_key", 403: "insufficient_permissions",
                                 429: "rate_limit_exceeded"}[status], body
    else:
        assert body["type"] == "error", body
        assert body["error"]["type"] == {401: "authentication_error", 403: "permission_error",
                                         429: "rate_limit_error"}[status], body


# ----------------------------------------------------------------------------- curl
def curl(base_url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
         *extra: str) -> tuple[int, dict[str, str], Any]:
    """One curl request: status, response headers (lower-case names), body (JSON if it parses)."""
    verb = ["-I"] if method == "HEAD" else ["-X", method]
    args = ["curl", "-sS", *verb, "-D", "-", "-o", "/dev/stderr", *extra, base_url + path]
    for name, value in (headers or {}).items():
        args += ["-H", f"{name}: {value}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    done = subprocess.run(args, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    head = done.stdout.decode("latin-1").strip().split("\r\n")
    status = int(head[0].split()[1])
    names = {line.split(":", 1)[0].lower(): line.split(":", 1)[1].strip() for line in head[1:] if ":" in line}
    try:
        payload = json.loads(done.stderr)
    except ValueError:
        payload = done.stderr.decode("utf-8", "replace")
    return status, names, payload


#: family → [(method, path, body, key lacking the scope, key with it)]; run in order (copy before delete)
FAMILIES = {
    "native inference": [
        ("POST", "/api/generate", {"model": SMOL, "prompt": "Hi", "stream": False, "options": {"num_predict": 1}}),
        ("POST", "/api/chat", {"model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
                               "options": {"num_predict": 1}}),
        ("POST", "/api/embed", {"model": SMOL, "input": "hello"}),
        ("GET", "/api/tags", None), ("POST", "/api/show", {"model": SMOL}), ("GET", "/api/ps", None),
    ],
    "native manage": [
        ("POST", "/api/copy", {"source": SMOL, "destination": "curl-copy"}),
        ("DELETE", "/api/delete", {"model": "curl-copy"}),
        ("HEAD", "/api/blobs/sha256:" + "0" * 64, None),
    ],
    "admin": [("GET", "/metrics", None), ("GET", "/api/runners", None), ("GET", "/api/keys", None)],
    "openai": [
        ("POST", "/v1/chat/completions", {"model": SMOL, "messages": [{"role": "user", "content": "Hi"}],
                                          "max_tokens": 1}),
        ("POST", "/v1/completions", {"model": SMOL, "prompt": "Hi", "max_tokens": 1}),
        ("POST", "/v1/embeddings", {"model": SMOL, "input": "hello"}),
        ("GET", "/v1/models", None),
    ],
    "anthropic": [
        ("POST", "/v1/messages", {"model": SMOL, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}),
        ("POST", "/v1/messages/count_tokens", {"model": SMOL, "messages": [{"role": "user", "content": "Hi"}]}),
    ],
}
LACKING = {"native inference": "mgr", "native manage": "inf", "admin": "inf", "openai": "mgr", "anthropic": "mgr"}
GOOD = {"native inference": "inf", "native manage": "mgr", "admin": "adm", "openai": "inf", "anthropic": "inf"}
#: what a good key gets (a blob the server lacks is a 404, as without keys)
GOOD_STATUS = {"/api/blobs/sha256:" + "0" * 64: 404}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_curl_no_key_wrong_key_lacking_scope_good_key(keyed: Keyed, family: str) -> None:
    base = keyed.server.base_url
    for method, path, body in FAMILIES[family]:
        x_api = path.startswith("/v1/messages")  # Anthropic's clients send x-api-key
        def hdr(name: str | None) -> dict[str, str]:
            key = keyed.key(name)
            return {} if key is None else ({"x-api-key": key} if x_api else {"Authorization": f"Bearer {key}"})

        for who, want in ((None, 401), (WRONG, 401), (LACKING[family], 403)):
            status, headers, payload = curl(base, method, path, body, hdr(who))
            assert status == want, (path, who, payload)
            if method != "HEAD":
                assert_shape(path, status, payload)
            if status == 401:
                assert headers["www-authenticate"].startswith('Bearer realm="trillama"')
                assert ('error="invalid_token"' in headers["www-authenticate"]) == (who is not None)
        status, _, payload = curl(base, method, path, body, hdr(GOOD[family]))
        assert status == GOOD_STATUS.get(path, 200), (path, payload)
    # the env key (TRILLAMA_API_KEY) has every scope
    method, path, body = FAMILIES[family][-1]
    assert curl(base, method, path, body, keyed.headers("env"))[0] == GOOD_STATUS.get(path, 200)


def test_open_routes_need_no_key(keyed: Keyed) -> None:
    base = keyed.server.base_url
    assert curl(base, "GET", "/")[0] == 200
    assert curl(base, "HEAD", "/")[0] == 200
    assert curl(base, "GET", "/health")[0] == 200
    assert curl(base, "GET", "/ready")[0] == 200
    # an unknown path says nothing to a stranger, and 404 to a key holder
    assert curl(base, "GET", "/api/nothing-here")[0] == 401
    assert curl(base, "GET", "/api/nothing-here", None, keyed.headers("mgr"))[0] == 404


# ----------------------------------------------------------------------------- the Python clients
def _expect(call: Callable[[], Any], status: int | None, check: Callable[[Exception], None] | None = None) -> None:
    """``status`` None: the call succeeds (or fails for a reason other than access control)."""
    try:
        call()
    except Exception as exc:  # the SDKs' own exception classes are checked by the callers
        got = getattr(exc, "status_code", None)
        if status is None:
            assert got not in (401, 403, 429), exc
            return
        assert got == status, exc
        if check is not None:
            check(exc)
        return
    assert status is None, f"expected {status}, the call succeeded"


def test_ollama_client(keyed: Keyed, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def client(name: str | None) -> ollama.Client:
        return ollama.Client(host=keyed.server.base_url, headers=keyed.headers(name), timeout=120)

    one = {"num_predict": 1}
    inference = [
        lambda c: c.generate(model=SMOL, prompt="Hi", options=one),
        lambda c: c.chat(model=SMOL, messages=[{"role": "user", "content": "Hi"}], options=one),
        lambda c: c.embed(model=SMOL, input="hello"),
        lambda c: c.list(), lambda c: c.show(SMOL), lambda c: c.ps(),
    ]
    manage = [
        lambda c: c.copy(SMOL, "ollama-copy"), lambda c: c.delete("ollama-copy"),
        lambda c: c.create(model="ollama-created", from_=SMOL, system="Be brief."),
        lambda c: c.delete("ollama-created"),
        # no registry answers here: a good key gets the registry's error, never an access one
        lambda c: c.pull("127.0.0.1:9/nobody/nothing", insecure=True),
        lambda c: c.push("127.0.0.1:9/nobody/nothing", insecure=True),
    ]

    def says_key(exc: Exception) -> None:
        assert isinstance(exc, ollama.ResponseError) and "API key" in exc.error

    for calls, lacking, good in ((inference, "mgr", "inf"), (manage, "inf", "mgr")):
        for call in calls:
            _expect(lambda: call(client(None)), 401, says_key)
            _expect(lambda: call(client(WRONG)), 401, says_key)
            _expect(lambda: call(client(lacking)), 403, says_key)
            _expect(lambda: call(client(good)), None)
    assert client("inf").generate(model=SMOL, prompt="Hi", options=one).done
    # Ollama's clients send OLLAMA_API_KEY by themselves
    monkeypatch.setenv("OLLAMA_API_KEY", keyed.key("inf"))
    assert SMOL in [m.model for m in ollama.Client(host=keyed.server.base_url).list().models]
    monkeypatch.setenv("OLLAMA_API_KEY", WRONG)
    _expect(lambda: ollama.Client(host=keyed.server.base_url).list(), 401)


def test_openai_client(keyed: Keyed) -> None:
    def client(name: str | None) -> openai.OpenAI:
        base = dict(base_url=keyed.server.base_url + "/v1", max_retries=0, timeout=120)
        if name is None:  # the SDK insists on a key: take it off the wire
            def strip(request: Any) -> None:
                del request.headers["Authorization"]
            return openai.OpenAI(api_key="unused", http_client=openai.DefaultHttpxClient(
                event_hooks={"request": [strip]}), **base)
        return openai.OpenAI(api_key=keyed.key(name), **base)

    user = [{"role": "user", "content": "Hi"}]
    calls = [
        lambda c: c.chat.completions.create(model=SMOL, messages=user, max_tokens=1),
        lambda c: c.completions.create(model=SMOL, prompt="Hi", max_tokens=1),
        lambda c: c.embeddings.create(model=SMOL, input="hello"),
        lambda c: c.models.list(), lambda c: c.models.retrieve(SMOL),
        lambda c: c.responses.create(model=SMOL, input="Hi", max_output_tokens=16),
    ]

    def code(expected: str, cls: type) -> Callable[[Exception], None]:
        def check(exc: Exception) -> None:
            assert isinstance(exc, cls) and exc.code == expected, exc
        return check

    for call in calls:
        _expect(lambda: call(client(None)), 401, code("invalid_api_key", openai.AuthenticationError))
        _expect(lambda: call(client(WRONG)), 401, code("invalid_api_key", openai.AuthenticationError))
        _expect(lambda: call(client("mgr")), 403, code("insufficient_permissions", openai.PermissionDeniedError))
        _expect(lambda: call(client("inf")), None)
    reply = client("inf").chat.completions.create(model=SMOL, messages=user, max_tokens=1)
    assert reply.choices[0].finish_reason == "length"


def test_a_stored_response_is_its_keys_only(keyed: Keyed) -> None:
    """One key cannot read, continue or delete what another key stored on /v1/responses."""
    def client(name: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=keyed.server.base_url + "/v1", api_key=keyed.key(name), max_retries=0,
                             timeout=120)

    mine, theirs = client("fair-a"), client("fair-b")
    stored = mine.responses.create(model=SMOL, input="Hi", max_output_tokens=4, store=True)
    assert mine.responses.retrieve(stored.id).id == stored.id
    with pytest.raises(openai.NotFoundError):
        theirs.responses.retrieve(stored.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.input_items.list(stored.id)
    with pytest.raises(openai.BadRequestError) as refused:
        theirs.responses.create(model=SMOL, input="And?", max_output_tokens=4, previous_response_id=stored.id)
    assert refused.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        theirs.responses.delete(stored.id)
    follow = mine.responses.create(model=SMOL, input="And?", max_output_tokens=4, previous_response_id=stored.id)
    assert follow.previous_response_id == stored.id
    mine.responses.delete(stored.id)
    with pytest.raises(openai.NotFoundError):
        mine.responses.retrieve(stored.id)


def test_anthropic_client(keyed: Keyed) -> None:
    def client(name: str | None, bearer: bool = False) -> anthropic.Anthropic:
        base = dict(base_url=keyed.server.base_url, max_retries=0, timeout=120)
        if name is None:
            return anthropic.Anthropic(api_key=None, auth_token=None, default_headers={"Authorization": anthropic.omit},
                                       **base)
        if bearer:  # Claude Code with ANTHROPIC_AUTH_TOKEN
            return anthropic.Anthropic(auth_token=keyed.key(name), api_key=None, **base)
        return anthropic.Anthropic(api_key=keyed.key(name), **base)

    user = [{"role": "user", "content": "Hi"}]
    calls = [
        lambda c: c.messages.create(model=SMOL, max_tokens=1, messages=user),
        lambda c: c.messages.count_tokens(model=SMOL, messages=user),
    ]

    def kind(expected: str, cls: type) -> Callable[[Exception], None]:
        def check(exc: Exception) -> None:
            assert isinstance(exc, cls) and exc.body["error"]["type"] == expected, exc
        return check

    for call in calls:
        _expect(lambda: call(client(None)), 401, kind("authentication_error", anthropic.AuthenticationError))
        _expect(lambda: call(client(WRONG)), 401, kind("authentication_error", anthropic.AuthenticationError))
        _expect(lambda: call(client("mgr")), 403, kind("permission_error", anthropic.PermissionDeniedError))
        _expect(lambda: call(client("inf")), None)
        _expect(lambda: call(client("inf", bearer=True)), None)
    message = client("inf").messages.create(model=SMOL, max_tokens=1, messages=user)
    assert message.stop_reason == "max_tokens"


# ----------------------------------------------------------------------------- the model allow-list
def test_model_allow_list(keyed: Keyed) -> None:
    base, only = keyed.server.base_url, keyed.headers("smol-only")
    gen = {"prompt": "Hi", "stream": False, "options": {"num_predict": 1}}
    assert curl(base, "POST", "/api/generate", {"model": SMOL, **gen}, only)[0] == 200
    status, _, body = curl(base, "POST", "/api/generate", {"model": GEMMA, **gen}, only)
    assert status == 403 and "may not use model 'gemma3:270m'" in body["error"]
    status, _, body = curl(base, "POST", "/v1/chat/completions", {"model": GEMMA, "max_tokens": 1,
                                                                   "messages": [{"role": "user", "content": "x"}]}, only)
    assert status == 403 and body["error"]["code"] == "insufficient_permissions"
    assert curl(base, "GET", "/v1/models/" + GEMMA, None, only)[0] == 403
    # listings show only what the key may use
    assert [m["name"] for m in curl(base, "GET", "/api/tags", None, only)[2]["models"]] == [SMOL]
    assert [m["id"] for m in curl(base, "GET", "/v1/models", None, only)[2]["data"]] == [SMOL]
    assert {m["name"] for m in curl(base, "GET", "/api/tags", None, keyed.headers("inf"))[2]["models"]} >= {SMOL, GEMMA}


# ----------------------------------------------------------------------------- fairness
async def test_one_key_flooding_the_queue_does_not_starve_another(keyed: Keyed) -> None:
    """Key A queues 100 requests on a one-slot model; key B's one request is served after at most
    the request holding the slot and one of A's (its turn in the round robin) — and one more that
    may finish while B's request is on its way. First come, first served, B would wait for ~100."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    body = {"model": SMOL, "prompt": "Count to ten:", "stream": False, "options": {"num_predict": 8}}
    finished: list[str] = []
    async with httpx.AsyncClient(base_url=keyed.server.base_url, timeout=600, limits=limits) as http:
        assert (await http.post("/api/generate", json=body, headers=keyed.headers("fair-a"))).status_code == 200

        async def ask(key: str, tag: str) -> None:
            response = await http.post("/api/generate", json=body, headers=keyed.headers(key))
            assert response.status_code == 200, response.text
            finished.append(tag)

        async def queued() -> int:
            runners = (await http.get("/api/runners", headers=keyed.headers("adm"))).json()
            return sum(r["queued"] for r in runners["runners"] if r["name"] == SMOL)

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(ask, "fair-a", f"a{i}")
            while await queued() < 95:
                await trio.sleep(0.05)
            before = len(finished)
            await ask("fair-b", "b")
            served_first = finished.index("b") - before
            left = 100 - len(finished) + 1
            nursery.cancel_scope.cancel()  # the rest of A's requests leave the queue
    assert served_first <= 3, f"{served_first} of key A's requests were served before key B's"
    assert left > 80, "A's flood should still be queued when B is served"


# ----------------------------------------------------------------------------- per-key limits
def test_concurrency_limit_gives_429_with_retry_after(keyed: Keyed) -> None:
    base, port = keyed.server.base_url, keyed.server.port
    # A request that stays in flight as long as the test wants: its body is announced and never
    # finished (the key's limit admits a request when its headers arrive).
    body = json.dumps({"model": SMOL, "prompt": "Hi", "stream": False, "options": {"num_predict": 8}}).encode()
    held = socket.create_connection(("127.0.0.1", port), timeout=120)
    held.sendall(b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {keyed.key('conc')}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                 + body[:10])
    try:
        status, headers, payload = wait_for(
            lambda: (r := curl(base, "GET", "/api/tags", None, keyed.headers("conc")))[0] == 429 and r)
        assert int(headers["retry-after"]) >= 1 and "too many concurrent requests" in payload["error"]
        assert_shape("/api/tags", status, payload)
        try:
            openai.OpenAI(base_url=base + "/v1", api_key=keyed.key("conc"), max_retries=0).models.list()
            raise AssertionError("expected a 429")
        except openai.RateLimitError as exc:
            assert exc.code == "rate_limit_exceeded" and exc.response.headers["retry-after"]
        try:
            anthropic.Anthropic(base_url=base, api_key=keyed.key("conc"), max_retries=0).messages.count_tokens(
                model=SMOL, messages=[{"role": "user", "content": "x"}])
            raise AssertionError("expected a 429")
        except anthropic.RateLimitError as exc:
            assert exc.body["error"]["type"] == "rate_limit_error"
        assert curl(base, "GET", "/api/tags", None, keyed.headers("inf"))[0] == 200  # other keys are free
        held.sendall(body[10:])  # the held request completes...
        assert held.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        held.close()
    # ...and its place is given back
    wait_for(lambda: curl(base, "GET", "/api/tags", None, keyed.headers("conc"))[0] == 200, timeout=60)


def test_requests_per_minute_limit(keyed: Keyed) -> None:
    base = keyed.server.base_url
    assert [curl(base, "GET", "/api/tags", None, keyed.headers("rpm"))[0] for _ in range(2)] == [200, 200]
    status, headers, payload = curl(base, "POST", "/v1/chat/completions", {"model": SMOL, "messages": []},
                                    keyed.headers("rpm"))
    assert status == 429 and 1 <= int(headers["retry-after"]) <= 30
    assert_shape("/v1/chat/completions", status, payload)
    assert payload["error"]["type"] == "requests"


def test_tokens_per_minute_limit(keyed: Keyed) -> None:
    base = keyed.server.base_url
    body = {"model": SMOL, "prompt": "Say something about the sea.", "stream": False, "options": {"num_predict": 4}}
    status, _, first = curl(base, "POST", "/api/generate", body, keyed.headers("tpm"))
    assert status == 200 and first["prompt_eval_count"] + first["eval_count"] > 5
    status, headers, payload = curl(base, "POST", "/v1/messages",
                                    {"model": SMOL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
                                    {"x-api-key": keyed.key("tpm")})
    assert status == 429 and int(headers["retry-after"]) >= 1
    assert_shape("/v1/messages", status, payload)
    assert "tokens per minute" in payload["error"]["message"]


# ----------------------------------------------------------------------------- the key file while serving
def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trillama", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **env}, timeout=120)


def test_key_file_edited_while_serving(keyed: Keyed) -> None:
    base, env = keyed.server.base_url, {"TRILLAMA_API_KEYS_FILE": str(keyed.key_file)}
    added = _cli("keys", "add", "fresh", env=env)
    assert added.returncode == 0, added.stderr
    fresh = {"Authorization": f"Bearer {added.stdout.strip()}"}
    assert curl(base, "GET", "/api/tags", None, fresh)[0] == 200  # at once, no restart
    assert curl(base, "POST", "/api/copy", {"source": SMOL, "destination": "fresh-copy"}, fresh)[0] == 403
    # a hand edit: give it the manage scope
    text = keyed.key_file.read_text()
    edited = re.sub(r'(\[keys\.fresh\]\nhash = "[^"]+"\nscopes = )\["inference"\]', r'\1["inference", "manage"]', text)
    assert edited != text
    keyed.key_file.write_text(edited)
    assert curl(base, "POST", "/api/copy", {"source": SMOL, "destination": "fresh-copy"}, fresh)[0] == 200
    assert curl(base, "DELETE", "/api/delete", {"model": "fresh-copy"}, fresh)[0] == 200
    # a broken edit keeps the keys in force, and the log says why
    keyed.key_file.write_text(edited + "\n[keys.oops]\nhash = 12\n")
    assert curl(base, "GET", "/api/tags", None, fresh)[0] == 200
    assert curl(base, "GET", "/api/tags", None, keyed.headers("inf"))[0] == 200
    log = wait_for(lambda: "api_keys_reload_failed" in keyed.server.log_text() and keyed.server.log_text())
    event = next(json.loads(line) for line in log.splitlines() if "api_keys_reload_failed" in line)
    assert "keys.oops.hash" in event["error"] and "fresh" in event["keeping"]
    keyed.key_file.write_text(edited)
    revoked = _cli("keys", "revoke", "fresh", env=env)
    assert revoked.returncode == 0, revoked.stderr
    status, _, payload = curl(base, "GET", "/api/tags", None, fresh)  # refused at once
    assert status == 401 and payload == {"error": "invalid API key"}
    assert curl(base, "GET", "/api/tags", None, keyed.headers("inf"))[0] == 200


# ----------------------------------------------------------------------------- bad input
def test_bad_authorization_headers(keyed: Keyed) -> None:
    base, good = keyed.server.base_url, keyed.key("inf")
    with httpx.Client(base_url=base, timeout=60) as http:
        for value in ("Bearer " + "k" * 8000, b"Bearer \xc3\xa9t\xc3\xa9-\xff\xfe", "Basic aW5mOnNlY3JldA==",
                      b"Bearer " + good.encode() + b"\xe9"):
            r = http.get("/api/tags", headers={"Authorization": value})
            assert r.status_code == 401 and set(r.json()) == {"error"}, r.text
            r = http.post("/v1/messages", headers={"x-api-key": value if isinstance(value, bytes) else value[7:]},
                          json={})
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
        huge = http.get("/api/tags", headers={"Authorization": "Bearer " + "k" * 200_000})
        assert 400 <= huge.status_code < 500 and huge.status_code != 200
        # several keys at once: refused unless they are the same key
        several = [("Authorization", f"Bearer {good}"), ("x-api-key", WRONG)]
        r = http.get("/api/tags", headers=httpx.Headers(several))
        assert r.status_code == 401 and "several different API keys" in r.json()["error"]
        r = http.get("/api/tags", headers=httpx.Headers([("Authorization", f"Bearer {WRONG}"),
                                                         ("Authorization", f"Bearer {good}")]))
        assert r.status_code == 401
        same = [("Authorization", f"Bearer {good}"), ("x-api-key", good)]
        assert http.get("/api/tags", headers=httpx.Headers(same)).status_code == 200
    assert curl(base, "GET", "/api/tags", None, keyed.headers("inf"))[0] == 200  # still serving


# ----------------------------------------------------------------------------- what is seen
def test_log_and_metrics_show_key_ids_never_keys(keyed: Keyed) -> None:
    base = keyed.server.base_url
    assert curl(base, "POST", "/api/generate", {"model": SMOL, "prompt": "Hi", "stream": False,
                                                "options": {"num_predict": 1}}, keyed.headers("inf"))[0] == 200
    curl(base, "GET", "/api/tags", None, {"Authorization": f"Bearer {WRONG}"})
    curl(base, "GET", "/api/tags")
    assert curl(base, "GET", "/metrics", None, keyed.headers("inf"))[0] == 403
    status, _, metrics = curl(base, "GET", "/metrics", None, keyed.headers("adm"))
    assert status == 200
    for reason in ("missing_key", "invalid_key", "scope"):
        assert re.search(rf'trillama_auth_denied_total{{reason="{reason}"}} [1-9]', metrics), reason
    assert re.search(r'trillama_key_requests_total{key="inf",status="200"} [1-9]', metrics)
    assert re.search(r'trillama_key_requests_total{key="inf",status="403"} [1-9]', metrics)
    assert re.search(r'trillama_key_tokens_total{key="inf",kind="generated"} [1-9]', metrics)
    assert 'trillama_key_requests_in_flight{key="adm"} 1.0' in metrics
    log = wait_for(lambda: keyed.server.log_text())
    access = [e for e in map(_json_or_none, log.splitlines()) if e is not None and e.get("event") == "access"]
    generate = [a for a in access if a.get("route") == "/api/generate" and a.get("key_id") == "inf"]
    assert generate and generate[-1]["status"] == 200 and generate[-1]["generated_tokens"] == 1
    refused = [a for a in access if a.get("status") == 401]
    assert refused and all("key_id" not in a for a in refused)
    for secret in keyed.secrets.values():
        assert secret not in log and secret not in metrics


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


# ----------------------------------------------------------------------------- other servers
def test_failed_authentication_is_slowed_down_per_address(start_server) -> None:
    server = start_server({"TRILLAMA_API_KEY": ENV_KEY, "TRILLAMA_AUTH_FAILURES_PER_MINUTE": "3"})

    def client(address: str) -> httpx.Client:
        return httpx.Client(base_url=server.base_url, timeout=30,
                            transport=httpx.HTTPTransport(local_address=address))

    with client("127.0.0.2") as guesser, client("127.0.0.1") as other:
        wrong = {"Authorization": f"Bearer {WRONG}"}
        assert [guesser.get("/api/tags", headers=wrong).status_code for _ in range(3)] == [401] * 3
        braked = guesser.get("/api/tags", headers=wrong)
        assert braked.status_code == 429 and int(braked.headers["retry-after"]) >= 1
        assert "too many failed authentication attempts" in braked.json()["error"]
        # while braked, even the right key is not looked at from that address
        assert guesser.get("/api/tags", headers={"Authorization": f"Bearer {ENV_KEY}"}).status_code == 429
        assert guesser.get("/api/tags").status_code == 401  # presenting nothing is not guessing
        assert other.get("/api/tags", headers={"Authorization": f"Bearer {ENV_KEY}"}).status_code == 200


def test_malformed_key_file_stops_the_start_with_a_clear_error(tmp_path: Path, models_dir: Path) -> None:
    key_file = tmp_path / "keys.toml"
    key_file.write_text('[keys.alice]\nhash = "sha256:123"\n')
    env = {**os.environ, "OLLAMA_MODELS": str(models_dir), "OLLAMA_HOST": "127.0.0.1:9",
           "TRILLAMA_API_KEYS_FILE": str(key_file)}
    done = subprocess.run([sys.executable, "-m", "trillama", "serve"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert done.returncode == 1
    assert f"Error: TRILLAMA_API_KEYS_FILE: {key_file}: keys.alice.hash: expected" in done.stderr
    key_file.unlink()
    done = subprocess.run([sys.executable, "-m", "trillama", "serve"], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert done.returncode == 1 and "no such file" in done.stderr


def test_listening_beyond_loopback_without_keys(models_dir: Path) -> None:
    server = ServerProcess(models_dir, env={"TRILLAMA_BUNDLED_MODEL": "0", "TRILLAMA_REQUIRE_KEYS": "1"})
    server.env["OLLAMA_HOST"] = f"0.0.0.0:{server.port}"
    refused = subprocess.run([sys.executable, "-m", "trillama", "serve"], capture_output=True, text=True,
                             env=server.env, cwd=REPO, timeout=120)
    assert refused.returncode == 1
    assert f"refusing to listen on 0.0.0.0:{server.port} without API keys" in refused.stderr
    del server.env["TRILLAMA_REQUIRE_KEYS"]
    server.start()
    try:
        warning = next(json.loads(line) for line in server.log_text().splitlines() if "exposed_without_keys" in line)
        assert warning["level"] == "warning" and "beyond loopback, without API keys" in warning["message"]
    finally:
        server.stop()


def test_launch_hands_the_key_to_the_agent(keyed: Keyed, tmp_path: Path) -> None:
    """A stand-in ``claude`` asks the server with the credentials ``trillama launch`` gave it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude"
    fake.write_text('#!/bin/sh\ncurl -s -o /dev/null -w "%{http_code}\\n" -H "Authorization: Bearer '
                    '$ANTHROPIC_AUTH_TOKEN" -H "Content-Type: application/json" '
                    '-d "{\\"model\\":\\"$ANTHROPIC_MODEL\\",\\"messages\\":[{\\"role\\":\\"user\\",\\"content\\":\\"hi\\"}]}" '
                    '"$ANTHROPIC_BASE_URL/v1/messages/count_tokens"\necho "model: $ANTHROPIC_MODEL"\n')
    fake.chmod(0o755)
    env = {"OLLAMA_HOST": keyed.server.base_url, "OLLAMA_API_KEY": keyed.key("inf"),
           "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    ran = _cli("launch", "claude", env=env)  # no --model: the newest model, listed with the key
    assert ran.returncode == 0, ran.stderr
    status, model = ran.stdout.splitlines()
    assert status == "200"
    assert model in (f"model: {SMOL}", f"model: {GEMMA}")
    assert keyed.key("inf") not in ran.stderr  # the printed plan names $OLLAMA_API_KEY instead
    assert "may not create models" in ran.stderr  # an inference key cannot create the larger-context model
    ran = _cli("launch", "claude", "--model", SMOL, env={**env, "OLLAMA_API_KEY": WRONG})
    assert ran.returncode == 1 and not ran.stdout  # refused before the agent starts, and said why
    assert "refused the API key in OLLAMA_API_KEY: 401" in ran.stderr, ran.stderr
