"""The ``/v1`` layer end to end: the official ``openai`` client against a real server and real models.

The session's shared server (tests/conftest.py: starting one per test would dominate the run
time), which holds ``smollm2-tools``: the same weights with a ChatML template of its own that shows
tools and ``<tool_call>`` calls, which is what a user would do with ``ollama create``. Generations
are short and greedy. Nothing here asserts on timing.
"""

from __future__ import annotations

import json
import math
import time
import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import TOOLS_MODEL, ServerProcess

SMOL = "smollm2:135m"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                       "required": ["city"]},
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The current time",
                                          "parameters": {"type": "object", "properties": {}}}}
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture
def v1_server(shared_server: ServerProcess) -> ServerProcess:
    return shared_server


# ----------------------------------------------------------------------------- chat
def test_chat_non_streaming(oai: OpenAI) -> None:
    first = oai.chat.completions.create(model=SMOL, messages=HI, max_tokens=4, temperature=0)
    assert first.id.startswith("chatcmpl-")
    assert first.object == "chat.completion"
    assert first.system_fingerprint == "fp_ollama"
    assert first.model == SMOL
    choice = first.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = first.usage
    assert usage is not None and usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 4
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    again = oai.chat.completions.create(model=SMOL, messages=HI, max_tokens=1)
    assert again.id.startswith("chatcmpl-") and again.id != first.id


def test_prompt_tokens_count_the_cached_prefix(oai: OpenAI) -> None:
    # A prompt this server has never seen, sent twice: the second time nearly all of it comes from
    # the slot's cache, yet prompt_tokens must still be the whole prompt both times.
    messages = [{"role": "user", "content": f"Repeat this code: {uuid.uuid4().hex}"}]
    first = oai.chat.completions.create(model=SMOL, messages=messages, max_tokens=1, temperature=0)
    second = oai.chat.completions.create(model=SMOL, messages=messages, max_tokens=1, temperature=0)
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens > 20
    assert second.usage.prompt_tokens == first.usage.prompt_tokens


def test_chat_max_completion_tokens_and_length(oai: OpenAI) -> None:
    out = oai.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Write a long story."}],
                                      max_completion_tokens=3, temperature=0)
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 3


def test_chat_streaming(oai: OpenAI) -> None:
    stream = oai.chat.completions.create(model=SMOL, messages=HI, max_tokens=5, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in with_choices[1:])
    finish = with_choices[-1].choices[0]
    assert finish.finish_reason in ("stop", "length") and not finish.delta.content
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert 0 < usage_chunk.usage.completion_tokens <= 5


def test_chat_content_parts_developer_role_and_options(oai: OpenAI) -> None:
    # extra_body carries Ollama's own options and keep_alive, which Ollama's /v1 cannot take.
    out = oai.chat.completions.create(
        model=SMOL,
        messages=[{"role": "developer", "content": "Answer briefly."},
                  {"role": "user", "content": [{"type": "text", "text": "Name a colour."},
                                               {"type": "text", "text": "Just one word."}]}],
        temperature=0, seed=7, stop=["\n\n"], extra_body={"options": {"num_predict": 2}, "keep_alive": "1m"},
    )
    assert out.usage is not None and out.usage.completion_tokens <= 2


def test_chat_logprobs(oai: OpenAI) -> None:
    out = oai.chat.completions.create(model=SMOL, messages=HI, max_tokens=3, temperature=0, logprobs=True,
                                      top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert "".join(t.token for t in content) == out.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2
        assert token.top_logprobs[0].logprob >= token.top_logprobs[1].logprob


def test_chat_json_object(oai: OpenAI) -> None:
    out = oai.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Give a JSON object with a key a set to 1"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {
            "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}},
        max_tokens=30, temperature=0,
    )
    assert isinstance(json.loads(out.choices[0].message.content)["a"], int)


# ----------------------------------------------------------------------------- tools
def test_tool_choice_required_returns_a_tool_call(oai: OpenAI) -> None:
    out = oai.chat.completions.create(
        model=TOOLS_MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER], tool_choice="required", max_tokens=60, temperature=0,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city"} and isinstance(args["city"], str)


def test_tool_choice_named_function_streaming(oai: OpenAI) -> None:
    # The question is about weather; the named choice must still force get_time.
    stream = oai.chat.completions.create(
        model=TOOLS_MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=60, temperature=0, stream=True,
    )
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert [tc.function.name for tc in calls] == ["get_time"]
    assert json.loads(calls[0].function.arguments) == {}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_round_trip_and_tool_choice_none(oai: OpenAI) -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    out = oai.chat.completions.create(model=TOOLS_MODEL, messages=messages, tools=[WEATHER], tool_choice="none",
                                      max_tokens=8, temperature=0)
    assert out.choices[0].message.tool_calls is None
    assert out.choices[0].finish_reason in ("stop", "length")
    # With tool_choice "none" the tools are not offered, so a model without tool support is fine.
    out = oai.chat.completions.create(model=SMOL, messages=HI, tools=[WEATHER], tool_choice="none", max_tokens=2)
    assert out.choices[0].message.content


# ----------------------------------------------------------------------------- completions
def test_completions(oai: OpenAI) -> None:
    out = oai.completions.create(model=SMOL, prompt="The capital of France is", max_tokens=4, temperature=0,
                                 logprobs=1)
    assert out.id.startswith("cmpl-") and out.object == "text_completion"
    choice = out.choices[0]
    assert choice.text and choice.finish_reason in ("stop", "length")
    assert "".join(choice.logprobs.tokens) == choice.text
    assert choice.logprobs.text_offset[0] == 0
    assert out.usage is not None and out.usage.completion_tokens == len(choice.logprobs.tokens)

    chunks = list(oai.completions.create(model=SMOL, prompt="The capital of France is", max_tokens=4,
                                         temperature=0, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 4
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].text for c in chunks if c.choices)


# ----------------------------------------------------------------------------- embeddings
def test_embeddings_base64_default_and_float(oai: OpenAI, v1_server: ServerProcess) -> None:
    # The client asks for base64 unless told otherwise and decodes it itself.
    b64 = oai.embeddings.create(model=SMOL, input=["hello world", "goodbye"])
    assert [d.index for d in b64.data] == [0, 1]
    assert b64.usage.prompt_tokens > 0 and b64.usage.total_tokens == b64.usage.prompt_tokens
    floats = oai.embeddings.create(model=SMOL, input="hello world", encoding_format="float")
    a, b = b64.data[0].embedding, floats.data[0].embedding
    assert len(a) == len(b) == 576
    assert math.isclose(sum(x * x for x in b), 1.0, rel_tol=1e-6)
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b))  # float32 round trip
    assert a != b64.data[1].embedding
    # Same vector as the native /api/embed.
    with v1_server.client() as client:
        native = client.post("/api/embed", json={"model": SMOL, "input": "hello world"}).json()["embeddings"][0]
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(native, b))
    short = oai.embeddings.create(model=SMOL, input="hello world", encoding_format="float", dimensions=8)
    assert len(short.data[0].embedding) == 8


# ----------------------------------------------------------------------------- models
def test_models_list_and_retrieve(oai: OpenAI) -> None:
    ids = {m.id: m for m in oai.models.list()}
    assert SMOL in ids and TOOLS_MODEL in ids
    assert ids[SMOL].owned_by == "library" and ids[SMOL].object == "model"
    assert abs(ids[SMOL].created - time.time()) < 10 * 365 * 86400
    one = oai.models.retrieve(SMOL)
    assert one.id == SMOL and one.created == ids[SMOL].created
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model:latest")


# ----------------------------------------------------------------------------- errors
def test_errors_raise_the_right_sdk_exceptions(oai: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="no-such-model", messages=HI)
    assert "not found" in missing.value.message
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="no-such-model", messages=HI, stream=True)
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="no-such-model", input="x")
    # n > 1: one choice, as Ollama answers
    assert len(oai.chat.completions.create(model=SMOL, messages=HI, n=2, max_tokens=2).choices) == 1
    with pytest.raises(openai.BadRequestError, match="too short"):
        oai.chat.completions.create(model=SMOL, messages=[])
    with pytest.raises(openai.BadRequestError, match="image URLs"):
        oai.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}]}])
    with pytest.raises(openai.BadRequestError, match="does not support tools"):  # Gemma 3's template has none
        oai.chat.completions.create(model="gemma3:270m", messages=HI, tools=[WEATHER], tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="not in 'tools'"):
        oai.chat.completions.create(model=TOOLS_MODEL, messages=HI, tools=[WEATHER],
                                    tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="does not support insert"):
        oai.completions.create(model=SMOL, prompt="def f(", suffix="return 1")
    with pytest.raises(openai.BadRequestError, match="encoding_format"):
        oai.embeddings.create(model=SMOL, input="x", encoding_format="hex")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="keep_alive|duration|time"):
        oai.chat.completions.create(model=SMOL, messages=HI, extra_body={"keep_alive": "soon"})
    with pytest.raises(openai.BadRequestError) as bad_type:
        oai.chat.completions.create(model=SMOL, messages=HI, temperature="hot")  # type: ignore[arg-type]
    assert bad_type.value.status_code == 400 and bad_type.value.type == "invalid_request_error"


# ----------------------------------------------------------------------------- SSE bytes
def _events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n")
    return raw[:-2].split(b"\n\n")


def test_sse_framing_bytes(v1_server: ServerProcess) -> None:
    body = {"model": SMOL, "messages": HI, "max_tokens": 3, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=v1_server.base_url, timeout=120) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            raw = b"".join(response.iter_raw())
    events = _events(raw)
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events), raw
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    first, *middle, finish, usage = chunks
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert isinstance(first["choices"][0]["delta"]["content"], str)
    for c in middle:
        assert set(c["choices"][0]["delta"]) == {"content"} and c["choices"][0]["finish_reason"] is None
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "length"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 3

    # Without include_usage: no usage chunk, the finish chunk is the last before [DONE].
    body["stream_options"] = None
    with httpx.Client(base_url=v1_server.base_url, timeout=120) as client:
        raw = client.post("/v1/chat/completions", json=body).content
    events = _events(raw)
    assert events[-1] == b"data: [DONE]"
    last = json.loads(events[-2][len(b"data: "):])
    assert last["choices"][0]["finish_reason"] == "length" and "usage" not in last


def test_errors_before_streaming_keep_their_status(v1_server: ServerProcess) -> None:
    with httpx.Client(base_url=v1_server.base_url, timeout=120) as client:
        r = client.post("/v1/chat/completions", json={"model": "no-such-model", "messages": HI, "stream": True})
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
        assert r.json() == {"error": {"message": "model 'no-such-model' not found", "type": "not_found_error",
                                      "param": None, "code": None}}
        r = client.post("/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = client.get("/v1/models/" + SMOL)
        assert r.status_code == 200 and r.json()["id"] == SMOL
