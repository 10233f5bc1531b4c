"""``/v1/messages`` end to end: the official ``anthropic`` SDK against a real server and real model.

The session's shared server (tests/conftest.py), with the bundled ``smollm2:135m`` and
``smollm2-tools``: the same weights with a ChatML template that lists tools and shows calls as
``<tool_call>``, as a user would make it with ``ollama create``; the module adds
``smollm2-plain``, whose template shows no tools. Generations are short and greedy; nothing
asserts on timing.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Iterator

import anthropic
import httpx
import pytest
from anthropic import Anthropic

from conftest import REPO, TOOLS_MODEL, ServerProcess, models_on

SMOL = "smollm2:135m"
#: the bundled model renders tools; this one's template does not, so it "does not support tools"
PLAIN_MODEL = "smollm2-plain:latest"
PLAIN_TEMPLATE = "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"

WEATHER = {"name": "get_weather", "description": "Current weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                            "required": ["city"]}}
CLOCK = {"name": "get_time", "description": "The current time", "input_schema": {"type": "object", "properties": {}}}
HI = [{"role": "user", "content": "Say hello."}]
# This SDK no longer has temperature/top_k arguments (newer Claude models dropped them); the API does.
GREEDY = {"temperature": 0, "top_k": 1}


@pytest.fixture(scope="module", autouse=True)
def plain_model(session_server: ServerProcess) -> Iterator[None]:
    with models_on(session_server, {PLAIN_MODEL: {"from": SMOL, "template": PLAIN_TEMPLATE}}):
        yield


@pytest.fixture
def msg_server(shared_server: ServerProcess) -> ServerProcess:
    return shared_server


def _post(server: ServerProcess, path: str, **kwargs) -> httpx.Response:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        return http.post(path, **kwargs)


# ----------------------------------------------------------------------------- messages
def test_create_non_streaming(claude: Anthropic) -> None:
    out = claude.messages.create(model=SMOL, max_tokens=8, messages=HI, system="Answer briefly.", extra_body=GREEDY,
                                 metadata={"user_id": "tester"})
    assert out.id.startswith("msg_") and out.type == "message" and out.role == "assistant"
    assert out.model == SMOL
    assert [b.type for b in out.content] == ["text"] and out.content[0].text
    assert out.stop_reason in ("end_turn", "max_tokens") and out.stop_sequence is None
    assert 0 < out.usage.output_tokens <= 8
    assert out.usage.input_tokens + out.usage.cache_read_input_tokens > 10

    short = claude.messages.create(model=SMOL, max_tokens=3, extra_body=GREEDY,
                                   messages=[{"role": "user", "content": [{"type": "text", "text": "Write a long story."}]}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    assert short.id != out.id


def test_stop_sequences_report_the_sequence(claude: Anthropic) -> None:
    ask = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    free = claude.messages.create(model=SMOL, max_tokens=24, messages=ask, extra_body=GREEDY)
    text = free.content[0].text
    assert len(text) > 6, text
    stop = text[len(text) // 3: len(text) // 3 + 2]
    cut = claude.messages.create(model=SMOL, max_tokens=24, messages=ask, extra_body=GREEDY,
                                 stop_sequences=[stop, "never-seen-xyz"])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert "".join(b.text for b in cut.content) == text[: text.find(stop)]


def test_stream_text_and_final_message(claude: Anthropic) -> None:
    with claude.messages.stream(model=SMOL, max_tokens=6, messages=HI, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == text
    assert final.id.startswith("msg_") and final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 6
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens > 10


def test_raw_stream_events_in_order(claude: Anthropic) -> None:
    events = list(claude.messages.create(model=SMOL, max_tokens=4, messages=HI, extra_body=GREEDY, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop"
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 4


def test_structured_output(claude: Anthropic) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    out = claude.messages.create(model=SMOL, max_tokens=30, extra_body=GREEDY,
                                 output_config={"format": {"type": "json_schema", "schema": schema}},
                                 messages=[{"role": "user", "content": "Give a JSON object with a key a set to 1"}])
    assert isinstance(json.loads(out.content[0].text)["a"], int)


# ----------------------------------------------------------------------------- tools
def test_forced_tool_by_name(claude: Anthropic) -> None:
    out = claude.messages.create(model=TOOLS_MODEL, max_tokens=60, extra_body=GREEDY, tools=[WEATHER],
                                 tool_choice={"type": "tool", "name": "get_weather"},
                                 messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    assert out.stop_reason == "tool_use"
    (use,) = [b for b in out.content if b.type == "tool_use"]
    assert use.id.startswith("toolu_") and use.name == "get_weather"
    assert set(use.input) == {"city"} and isinstance(use.input["city"], str)


def test_forced_any_tool_streaming(claude: Anthropic) -> None:
    # The question is about the weather, but only the clock is offered besides it: "any" must call one.
    with claude.messages.stream(model=TOOLS_MODEL, max_tokens=60, extra_body=GREEDY, tools=[CLOCK, WEATHER],
                                tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                messages=[{"role": "user", "content": "Hello there."}]) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name in ("get_time", "get_weather")
    assert isinstance(uses[0].input, dict) and final.stop_reason == "tool_use"


def test_tool_result_round_trip(claude: Anthropic, msg_server: ServerProcess) -> None:
    def conversation(result: str) -> list[dict]:
        return [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                                               "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01",
                                          "content": [{"type": "text", "text": result}]}]},
        ]

    out = claude.messages.create(model=TOOLS_MODEL, max_tokens=8, extra_body=GREEDY, tools=[WEATHER],
                                 messages=conversation("18 degrees and sunny"))
    assert out.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert out.content
    # The result is part of the prompt: a longer result makes a longer prompt.
    short = claude.messages.count_tokens(model=TOOLS_MODEL, tools=[WEATHER], messages=conversation("18"))
    long = claude.messages.count_tokens(model=TOOLS_MODEL, tools=[WEATHER],
                                        messages=conversation("18 degrees, sunny, light wind from the west"))
    assert long.input_tokens > short.input_tokens
    # tool_choice "none" hides the tools: even the model without tool support answers.
    none = claude.messages.create(model=SMOL, max_tokens=3, tools=[WEATHER], tool_choice={"type": "none"}, messages=HI)
    assert none.content and none.stop_reason != "tool_use"


# ----------------------------------------------------------------------------- count_tokens
def test_count_tokens_equals_the_prompt_the_model_reads(claude: Anthropic, msg_server: ServerProcess) -> None:
    messages = [{"role": "user", "content": f"Repeat this code: {uuid.uuid4().hex}"}]
    # Unload the model so that its runner has nothing cached.
    r = _post(msg_server, "/api/generate", json={"model": SMOL, "keep_alive": 0})
    assert r.status_code == 200, r.text
    counted = claude.messages.count_tokens(model=SMOL, system="You count.", messages=messages).input_tokens
    first = claude.messages.create(model=SMOL, max_tokens=1, system="You count.", messages=messages, extra_body=GREEDY)
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.input_tokens == counted > 20
    # Again: most of the prompt now comes from the runner's cache; the sum is still the prompt.
    second = claude.messages.create(model=SMOL, max_tokens=1, system="You count.", messages=messages, extra_body=GREEDY)
    assert second.usage.cache_read_input_tokens > 0
    assert second.usage.input_tokens + second.usage.cache_read_input_tokens == counted
    # The same count as the native chat's prompt_eval_count for the same conversation, uncached.
    r = _post(msg_server, "/api/generate", json={"model": SMOL, "keep_alive": 0})
    native = _post(msg_server, "/api/chat", json={
        "model": SMOL, "stream": False, "options": {"num_predict": 1},
        "messages": [{"role": "system", "content": "You count."}, *messages]}).json()
    assert native["prompt_eval_count"] == counted
    # Tools are part of the prompt.
    with_tools = claude.messages.count_tokens(model=TOOLS_MODEL, messages=messages, tools=[WEATHER]).input_tokens
    without = claude.messages.count_tokens(model=TOOLS_MODEL, messages=messages).input_tokens
    assert with_tools > without


# ----------------------------------------------------------------------------- errors
def test_not_found_raises_the_sdk_class(claude: Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=HI)
    assert missing.value.status_code == 404 and missing.value.type == "not_found_error"
    assert "no-such-model" in missing.value.api_message
    with pytest.raises(anthropic.NotFoundError):
        with claude.messages.stream(model="no-such-model", max_tokens=5, messages=HI) as stream:
            stream.get_final_message()
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=HI)


def test_bad_input_raises_bad_request(claude: Anthropic) -> None:
    cases = [
        ({"messages": []}, "at least one message"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": [{"type": "hologram", "data": "x"}]}]},
         "Input tag 'hologram' found using 'type' does not match any of the expected tags"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_zz",
                                                     "content": "42"}]}]}, "toolu_zz"),
        ({"tools": [WEATHER], "model": PLAIN_MODEL}, "does not support tools"),
        ({"temperature": 3}, "temperature"),
        ({"thinking": {"type": "sometimes"}}, "thinking.type"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}, "does not support images"),
        ({"output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}, "tools": [WEATHER],
          "tool_choice": {"type": "any"}, "model": TOOLS_MODEL}, "cannot be combined"),
    ]
    for change, expected in cases:
        body = {"model": SMOL, "max_tokens": 5, "messages": HI, **change}
        extra = {k: body.pop(k) for k in ("temperature",) if k in body}
        with pytest.raises(anthropic.BadRequestError) as bad:
            claude.messages.create(**body, extra_body=extra)
        assert bad.value.status_code == 400 and bad.value.type == "invalid_request_error", change
        assert expected in bad.value.api_message, (change, bad.value.api_message)


def test_error_bodies_on_the_wire(msg_server: ServerProcess) -> None:
    r = _post(msg_server, "/v1/messages", json={"model": SMOL, "messages": HI})
    assert r.status_code == 400
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "max_tokens: field required"}}
    r = _post(msg_server, "/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = _post(msg_server, "/v1/messages", json={"model": SMOL, "max_tokens": "many", "messages": HI})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    # A streamed request that fails before it starts keeps its real status and a JSON body.
    r = _post(msg_server, "/v1/messages", json={"model": "no-such-model", "max_tokens": 5, "messages": HI,
                                                "stream": True})
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {"type": "error", "error": {"type": "not_found_error",
                                                   "message": "model 'no-such-model' not found"}}
    r = _post(msg_server, "/v1/messages/count_tokens", json={"model": SMOL})
    assert r.status_code == 400 and r.json()["error"]["message"] == "messages: field required"


# ----------------------------------------------------------------------------- SSE bytes
def test_sse_framing_bytes(msg_server: ServerProcess) -> None:
    body = {"model": SMOL, "max_tokens": 3, "temperature": 0, "stream": True, "messages": HI}
    with httpx.Client(base_url=msg_server.base_url, timeout=120) as http:
        with http.stream("POST", "/v1/messages", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            raw = b"".join(response.iter_raw())
    assert raw.endswith(b"\n\n")
    events = raw[:-2].split(b"\n\n")
    parsed = []
    for event in events:
        name_line, data_line = event.split(b"\n")  # exactly two lines per event
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: "), event
        name, data = name_line[len(b"event: "):].decode(), json.loads(data_line[len(b"data: "):])
        assert data["type"] == name
        parsed.append((name, data))
    names = [n for n, _ in parsed if n != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    start = parsed[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["role"] == "assistant"
    assert ("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}}) in parsed
    deltas = [d for n, d in parsed if n == "content_block_delta"]
    assert deltas and all(d["index"] == 0 and d["delta"]["type"] == "text_delta" for d in deltas)
    final = [d for n, d in parsed if n == "message_delta"][0]
    assert final["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == 3
    # The events came from a producer task in the app's nursery (the path that can ping).
    assert '"producer": "task"' in msg_server.log_path.read_text(errors="replace")


# ----------------------------------------------------------------------------- overload
def test_a_full_queue_is_overloaded_529(start_server) -> None:
    server = start_server({"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_MAX_QUEUE": "1"})
    client = Anthropic(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    try:
        _hold_the_slot_and_overflow(server, client)
    finally:
        client.close()


def _hold_the_slot_and_overflow(server: ServerProcess, client: Anthropic) -> None:
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        http.post("/api/generate", json={"model": SMOL})
        long_body = {"model": SMOL, "max_tokens": 3000, "stream": True,
                     "messages": [{"role": "user", "content": "Tell a very long story."}]}
        with http.stream("POST", "/v1/messages", json=long_body) as long:
            lines = long.iter_lines()
            next(lines)  # the only slot is busy now
            served: list = []
            waiter = threading.Thread(
                target=lambda: served.append(client.messages.create(model=SMOL, max_tokens=2, messages=HI)),
                daemon=True)
            waiter.start()

            def queued() -> int:
                return sum(row["queued"] for row in http.get("/api/runners").json()["runners"])

            deadline = time.monotonic() + 60
            while queued() < 1:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.1)
            with pytest.raises(anthropic.OverloadedError) as busy:
                client.messages.create(model=SMOL, max_tokens=2, messages=HI)
            assert busy.value.status_code == 529 and busy.value.type == "overloaded_error"
            assert busy.value.response.headers.get("retry-after")
        # Leaving the long stream gave its slot back: the queued request is served.
        waiter.join(timeout=120)
        assert served and served[0].usage.output_tokens > 0


# ----------------------------------------------------------------------------- docs
def _docs_script(base_url: str) -> str:
    """The shell blocks of docs/anthropic.md, pointed at ``base_url``; each curl prints its status."""
    text = (REPO / "docs" / "anthropic.md").read_text()
    part = text.split("<!-- examples:begin -->", 1)[1].split("<!-- examples:end -->", 1)[0]
    blocks = [block.split("```", 1)[0] for block in part.split("```sh\n")[1:]]
    body = "\n".join(blocks).replace("http://localhost:11434", base_url)
    return "set -euo pipefail\ncurl() { command curl -sS -o /dev/stderr -w '%{http_code}\\n' \"$@\"; }\n" + body


def test_docs_curl_examples(msg_server: ServerProcess) -> None:
    import subprocess

    result = subprocess.run(["bash", "-c", _docs_script(msg_server.base_url)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    statuses = result.stdout.split()
    assert statuses == ["200", "200", "200", "200", "404"], (statuses, result.stderr)
    assert '"type":"message"' in result.stderr and "event: message_stop" in result.stderr
    assert '"input_tokens":' in result.stderr and '"type":"tool_use"' in result.stderr
    assert '"not_found_error"' in result.stderr



def test_count_tokens_counts_a_prompt_past_the_context(claude: Anthropic) -> None:
    """As Anthropic's does: the count of a prompt the model could not read is still the count (a
    generation of it is the 400), found in bounded pieces: the runner never tokenizes 4.8 MB at
    once (issue 12's unbounded-prompt defect, on this route)."""
    huge = "lorem ipsum " * 400_000  # ~4.8 MB: far past 4096 tokens
    counted = claude.messages.count_tokens(model=SMOL, messages=[{"role": "user", "content": huge}])
    assert counted.input_tokens > 400_000
    with pytest.raises(anthropic.BadRequestError) as refused:
        claude.messages.create(model=SMOL, max_tokens=8, messages=[{"role": "user", "content": huge}])
    assert refused.value.type == "invalid_request_error"
    assert refused.value.api_message.startswith("prompt is too long: ")
