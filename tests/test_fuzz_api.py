"""Schema fuzzing of the real server with hypothesis: no request may earn a 5xx.

Bodies are built from the fields each route knows, filled with well-formed values, wrong types and
the extremes that broke the server before (issue 12): empty and huge durations, integers past 64
bits, lone surrogates, deep nesting, unknown models. The run is bounded (``FUZZ_EXAMPLES``,
derandomized so that a failure reproduces) and fails on any 5xx, on a non-JSON error from a known
route, on a dead server, and on server memory growing by more than 100 MB. Random bodies rarely
get every other field right at once, so a second test walks a grid: each field of a valid body
replaced, one at a time, by each of a few values that broke servers before (it found the /v1
``max_tokens: 1e300`` and ``seed: 2**70`` 500s).

Not fuzzed: ``/api/pull`` and ``/api/push`` (their documented 5xx is "registry unreachable" and
each case would wait on the network), and ``num_parallel`` (a valid but huge value asks for more
memory than the machine has, which is a documented 500 from the memory estimate).
"""

from __future__ import annotations

import json
import os

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = int(os.environ.get("TRILLAMA_FUZZ_EXAMPLES", "300"))
MODEL = "fuzzy"  # smollm2 with num_predict 2, so that generations stay short whatever the body

# ----------------------------------------------------------------------------- values
EXTREMES = st.sampled_from([
    "", " ", "0", "-1", "5m", "1h30m", "99999999999h", "10", "\ud800", "\udfffx", "a" * 300, "../../etc/passwd",
    "sha256:" + "0" * 64, "smollm2:135m", "FROM /etc/passwd", "{{ .Prompt", "{{ .Prompt }}", "json", "yaml",
    2**63, -(2**63) - 1, 2**70, -1, 0, 1, 1e12, 1e300, -1e300, 0.5, True, False, None, [], {}, [1, "x"],
    {"type": "object"}, {"a": {"b": {"c": [None]}}},
])
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
JSON = st.recursive(SCALARS | EXTREMES, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


STRING_EXTREMES = st.sampled_from(["", " ", "\ud800x", "99999999999h", "a" * 300, "../../etc/passwd"])
NUMBER_EXTREMES = st.sampled_from([2**63, -(2**63) - 1, 2**70, -1, 0, 1e300])
OTHER_EXTREMES = st.sampled_from([None, [], {}, True, {"a": [None]}])


def field(good) -> st.SearchStrategy:
    """A plausible value, or one of the values that broke servers before, or any JSON at all."""
    return st.one_of(good, STRING_EXTREMES, NUMBER_EXTREMES, OTHER_EXTREMES, JSON)


OPTION_VALUES = {
    "num_ctx": st.sampled_from([None, -5, 0, 1, 16, 2048, 2**31, 2**70, "big", 1.5]),
    "num_batch": st.sampled_from([None, -1, 0, 7, 512, 2**40, "x"]),
    "num_thread": st.sampled_from([None, -5, 0, 1, 2**40, "x"]),
    "num_gpu": st.sampled_from([None, -1, 0, 99, 2**40]),
    "num_keep": field(st.integers(-10, 100)),
    "seed": field(st.integers(-(2**65), 2**65)),
    "num_predict": field(st.integers(-2, 3)),
    "top_k": field(st.integers(-5, 100)),
    "top_p": field(st.floats(-1, 2)),
    "min_p": field(st.floats(-1, 2)),
    "typical_p": field(st.floats(-1, 2)),
    "temperature": field(st.floats(-1, 1e6)),
    "repeat_penalty": field(st.floats(-1, 3)),
    "repeat_last_n": field(st.integers(-2, 2**33)),
    "presence_penalty": field(st.floats(-3, 3)),
    "frequency_penalty": field(st.floats(-3, 3)),
    "stop": field(st.lists(st.text(max_size=4), max_size=3)),
    "bogus": JSON,
}
OPTIONS = st.one_of(st.fixed_dictionaries({}, optional=OPTION_VALUES), EXTREMES)
MODEL_NAMES = st.sampled_from([MODEL] * 8 + ["smollm2:135m", "", "nope", "bad name", "x" * 90, "a/b/c/d/e"])
TEXT = st.text(max_size=40)
MESSAGE = st.fixed_dictionaries({}, optional={
    "role": field(st.sampled_from(["user", "assistant", "system", "tool", "USER", "robot"])),
    "content": field(TEXT),
    "thinking": field(TEXT),
    "images": field(st.lists(st.sampled_from(["", "aGVsbG8=", "!!"]), max_size=2)),
    "tool_calls": field(st.lists(st.fixed_dictionaries({}, optional={
        "function": field(st.fixed_dictionaries({"name": field(TEXT)}, optional={"arguments": JSON}))}), max_size=2)),
    "tool_name": field(TEXT),
})
TOOL = st.fixed_dictionaries({}, optional={
    "type": field(st.just("function")),
    "function": field(st.fixed_dictionaries({"name": field(TEXT)}, optional={
        "description": field(TEXT), "parameters": field(st.just({"type": "object", "properties": {}}))})),
})
COMMON = {
    "stream": field(st.booleans()),
    "keep_alive": field(st.sampled_from(["5m", 60, -1, "1s"])),
    "options": OPTIONS,
    "format": field(st.sampled_from(["json", {"type": "object", "properties": {"a": {"type": "string"}}}])),
    "think": field(st.booleans()),
    "truncate": field(st.booleans()),
    "shift": field(st.booleans()),
    "logprobs": field(st.booleans()),
    "top_logprobs": field(st.integers(-1, 25)),
    "_debug_render_only": field(st.booleans()),
}

ROUTES = {
    "/api/generate": st.fixed_dictionaries({"model": MODEL_NAMES}, optional={
        **COMMON, "prompt": field(TEXT), "suffix": field(TEXT), "system": field(TEXT),
        "template": field(st.sampled_from(["{{ .Prompt }}", "{{ .Prompt", "{{ range .Messages }}{{ end }}"])),
        "context": field(st.lists(st.integers(-5, 60000), max_size=4)), "raw": field(st.booleans()),
        "images": field(st.lists(st.sampled_from(["aGVsbG8=", "!!"]), max_size=2))}),
    "/api/chat": st.fixed_dictionaries({"model": MODEL_NAMES}, optional={
        **COMMON, "messages": field(st.lists(MESSAGE, max_size=3)), "tools": field(st.lists(TOOL, max_size=2))}),
    "/api/embed": st.fixed_dictionaries({"model": MODEL_NAMES}, optional={
        "input": field(st.one_of(TEXT, st.lists(TEXT, max_size=3))), "truncate": field(st.booleans()),
        "dimensions": field(st.integers(-2, 600)), "options": OPTIONS, "keep_alive": COMMON["keep_alive"]}),
    "/api/embeddings": st.fixed_dictionaries({"model": MODEL_NAMES}, optional={
        "prompt": field(TEXT), "options": OPTIONS}),
    "/api/show": st.fixed_dictionaries({"model": MODEL_NAMES}, optional={
        "verbose": field(st.booleans()), "system": field(TEXT), "options": OPTIONS}),
    "/api/create": st.fixed_dictionaries({"model": field(st.sampled_from(["made", "made:v2", "ns/made"]))}, optional={
        "from": field(st.sampled_from([MODEL, "nope"])), "system": field(TEXT),
        "template": field(st.sampled_from(["{{ .Prompt }}", "{{ if }}"])),
        "parameters": field(st.fixed_dictionaries({}, optional={"num_ctx": JSON, "stop": JSON, "temperature": JSON})),
        "messages": field(st.lists(MESSAGE, max_size=2)), "license": field(TEXT),
        "files": field(st.dictionaries(TEXT, st.sampled_from(["sha256:" + "0" * 64, "", "x"]), max_size=2)),
        "adapters": JSON, "quantize": field(st.sampled_from(["q4_K_M", "q8_0", "bogus"])),
        "modelfile": field(st.sampled_from([f"FROM {MODEL}\nSYSTEM hi\n", "FROM /etc/passwd\n", "PARAMETER x 1\n",
                                             f"FROM {MODEL}\nPARAMETER num_ctx many\n", "FROM @sha256:00\n"])),
        "path": field(st.sampled_from(["/etc/hostname", "Modelfile"])), "stream": field(st.booleans())}),
    "/api/copy": st.fixed_dictionaries({}, optional={
        "source": field(st.sampled_from([MODEL, "nope", "made"])),
        "destination": field(st.sampled_from(["copied", "bad name", "", "a:b:c"]))}),
    "/api/delete": st.fixed_dictionaries({}, optional={
        "model": field(st.sampled_from(["copied", "made", "nope", "bad name"]))}),
    "/v1/chat/completions": st.fixed_dictionaries({"model": MODEL_NAMES}, optional={
        "messages": field(st.lists(st.fixed_dictionaries({}, optional={
            "role": field(st.sampled_from(["user", "system", "assistant", "tool", "developer"])),
            "content": field(st.one_of(TEXT, st.lists(st.fixed_dictionaries(
                {"type": field(st.sampled_from(["text", "image_url"]))}, optional={"text": field(TEXT)}), max_size=2))),
        }), max_size=3)),
        "max_tokens": field(st.integers(0, 2)), "temperature": field(st.floats(0, 2)), "seed": field(st.integers()),
        "stop": field(st.lists(TEXT, max_size=2)), "stream": field(st.booleans()),
        "response_format": field(st.sampled_from([{"type": "json_object"}, {"type": "text"}, {"type": "json_schema"}])),
        "tools": field(st.lists(TOOL, max_size=1)), "tool_choice": JSON, "n": field(st.integers(-1, 3)),
        "reasoning_effort": field(st.sampled_from(["low", "high", "bogus"])), "options": OPTIONS,
        "keep_alive": COMMON["keep_alive"], "logprobs": field(st.booleans()), "top_logprobs": field(st.integers(-1, 30))}),
    "/v1/completions": st.fixed_dictionaries({"model": MODEL_NAMES}, optional={
        "prompt": field(st.one_of(TEXT, st.lists(TEXT, max_size=2))), "max_tokens": field(st.integers(0, 2)),
        "suffix": field(TEXT), "echo": field(st.booleans()), "logprobs": field(st.integers(-1, 6)),
        "stream": field(st.booleans()), "options": OPTIONS}),
    "/v1/embeddings": st.fixed_dictionaries({"model": MODEL_NAMES}, optional={
        "input": field(st.one_of(TEXT, st.lists(TEXT, max_size=2), st.lists(st.integers(-1, 50000), max_size=3))),
        "dimensions": field(st.integers(-1, 600)), "encoding_format": field(st.sampled_from(["float", "base64", "x"]))}),
}
GETS = st.sampled_from(["/api/tags", "/api/ps", "/api/version", "/v1/models", f"/v1/models/{MODEL}",
                        "/v1/models/nope", "/api/runners", "/metrics"])


def _shorten(route: str, body: object) -> object:
    """Keep every generation short: the fuzz is about validation, not about decoding."""
    if not isinstance(body, dict):
        return body
    options = body.get("options")
    if isinstance(options, dict) and isinstance(options.get("num_predict"), int) and not isinstance(
            options.get("num_predict"), bool) and -(2**63) <= options["num_predict"] < 2**63:
        options["num_predict"] = min(options["num_predict"], 2) if options["num_predict"] >= 0 else 2
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if key in body and (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                              and (value > 2 or value < 0))):
            body[key] = 2  # null, negative or huge would mean "no limit" (huge ones: test_e2e_hardening)
    return body


SHAPED = st.sampled_from(sorted(ROUTES)).flatmap(lambda route: st.tuples(st.just("POST"), st.just(route),
                                                                          ROUTES[route]))
CASES = st.one_of(
    SHAPED, SHAPED, SHAPED, SHAPED,  # bodies with the routes' own fields, most of the time
    st.tuples(st.just("POST"), st.sampled_from(sorted(ROUTES)), JSON),  # any JSON at all
    st.tuples(st.just("RAW"), st.sampled_from(sorted(ROUTES)), st.binary(max_size=64)),
    st.tuples(st.just("GET"), GETS, st.none()),
    st.tuples(st.just("DELETE"), st.just("/api/delete"), ROUTES["/api/delete"]),
    st.tuples(st.just("BLOB"), st.sampled_from(["sha256:" + "0" * 64, "sha256:zz", "md5:00", "x" * 200]),
              st.binary(max_size=32)),
)


def _send(http: httpx.Client, case: tuple) -> httpx.Response:
    method, route, body = case
    if method == "GET":
        return http.get(route)
    if method == "RAW":
        return http.post(route, content=body, headers={"Content-Type": "application/json"})
    if method == "BLOB":
        return http.post(f"/api/blobs/{route}", content=body)
    payload = json.dumps(_shorten(route, body)).encode()
    return http.request("DELETE" if method == "DELETE" else "POST", route, content=payload,
                        headers={"Content-Type": "application/json"})


def _check(case: tuple, response: httpx.Response) -> None:
    assert response.status_code < 500, f"{case!r} -> {response.status_code} {response.text[:400]}"
    if response.status_code >= 400 and response.status_code not in (404, 405):
        assert response.headers.get("content-type", "").startswith("application/json"), (case, response.text)
    if response.status_code == 404 and case[0] != "GET":
        # a missing model is JSON; only unknown paths (none here) are gin's plain text
        assert response.headers.get("content-type", "").startswith("application/json"), (case, response.text)


@pytest.fixture
def server(shared_server):
    return shared_server


def test_fuzzed_requests_never_get_a_5xx(server):
    with server.client(timeout=120) as http:
        r = http.post("/api/create", json={"model": MODEL, "from": "smollm2:135m", "stream": False,
                                           "parameters": {"num_predict": 2, "temperature": 0}})
        assert r.status_code == 200, r.text
        assert http.post("/api/generate", json={"model": MODEL, "prompt": "hi"}).status_code == 200  # load
        idle_rss = psutil.Process(server.proc.pid).memory_info().rss

        @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(CASES)
        def run(case: tuple) -> None:
            _check(case, _send(http, case))

        run()
        assert server.proc.poll() is None
        assert http.get("/api/version").status_code == 200
        grown = psutil.Process(server.proc.pid).memory_info().rss - idle_rss
        assert grown < 100 * 2**20, f"server RSS grew by {grown >> 20} MiB under fuzzing"


# ----------------------------------------------------------------------------- one field at a time
#: Valid bodies; the grid below replaces one field at a time, so that no earlier check can mask a
#: later one (random bodies rarely get every other field right at once).
BASES = {
    "/api/generate": {"model": MODEL, "prompt": "hi", "stream": False},
    "/api/chat": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False},
    "/api/embed": {"model": MODEL, "input": "hi"},
    "/api/show": {"model": MODEL},
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
}
GRID_VALUES = ["", "\ud800x", 2**70, -1, 1e300, None]


def _grid() -> list[tuple[str, str, object]]:
    cases = []
    for route, base in BASES.items():
        names = sorted(set(base) | _optional_names(route))
        for name in names:
            cases += [(route, name, value) for value in GRID_VALUES]
    cases += [("/api/generate", f"options.{name}", value) for name in sorted(OPTION_VALUES) for value in GRID_VALUES]
    messages = [f"messages.0.{name}" for name in ("role", "content", "images", "tool_calls", "thinking")]
    cases += [("/api/chat", name, value) for name in messages for value in GRID_VALUES]
    return cases


def _optional_names(route: str) -> set[str]:
    strategy = ROUTES[route]
    while hasattr(strategy, "wrapped_strategy"):
        strategy = strategy.wrapped_strategy
    return set(getattr(strategy, "optional", {}) or {}) | set(getattr(strategy, "keys", ()) or ())


def _with(base: dict, path: str, value: object) -> dict:
    body = json.loads(json.dumps(base))
    target = body
    parts = path.split(".")
    for part in parts[:-1]:
        key = int(part) if part.isdigit() else part
        if isinstance(target, dict) and not isinstance(target.get(key), (dict, list)):
            target[key] = {}
        target = target[key]
    target[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    return body


def test_each_field_with_each_extreme_value_is_never_a_5xx(server):
    with server.client(timeout=120) as http:
        r = http.post("/api/create", json={"model": MODEL, "from": "smollm2:135m", "stream": False,
                                           "parameters": {"num_predict": 2, "temperature": 0}})
        assert r.status_code == 200, r.text
        failures = []
        grid = _grid()
        assert len(grid) > 300
        for route, path, value in grid:
            body = _shorten(route, _with(BASES[route], path, value))
            if path in ("stream",):
                body["stream"] = value if value is not True else False
            try:
                response = http.post(route, content=json.dumps(body).encode(), timeout=30,
                                     headers={"Content-Type": "application/json"})
            except httpx.TimeoutException:
                failures.append(f"{route} {path}={value!r} -> no answer in 30 s")
                continue
            if response.status_code >= 500:
                failures.append(f"{route} {path}={value!r} -> {response.status_code} {response.text[:200]}")
        assert not failures, "\n".join(failures)
        assert server.proc.poll() is None
