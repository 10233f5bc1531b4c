"""``/v1/responses`` without a server: input items → chat messages, tools and formats, the reply
and stream events built from chat deltas, SSE framing, and the bounded response store."""

from __future__ import annotations

import base64
import json

import pytest

from trillama.actors.runner.messages import Done
from trillama.api.errors import APIError
from trillama.api.openai.chat import Delta
from trillama.api.openai.common import OpenAIError, error_body
from trillama.api.openai.response_store import ResponseStore
from trillama.api.openai.responses import sse_event
from trillama.api.openai.responses_input import (
    calls_in,
    chat_response_format,
    chat_tool_choice,
    chat_tools,
    input_messages,
    listed_items,
)
from trillama.api.openai.responses_output import ReplyContext, ResponseBuilder

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def _param(exc: pytest.ExceptionInfo[OpenAIError]) -> str | None:
    assert exc.value.status == 400
    return exc.value.param


# ----------------------------------------------------------------------------- input items
def test_string_input_is_one_user_message() -> None:
    assert input_messages("hi") == [{"role": "user", "content": "hi"}]
    assert input_messages(None) == []


def test_items_become_chat_messages() -> None:
    out = input_messages([
        {"role": "developer", "content": "be brief"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "look"},
                                                        {"type": "input_image", "image_url": PNG}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": ""},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "noon"}]},
    ])
    assert out == [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": PNG}}]},
        # the assistant message and both calls are one turn, with the reasoning before them
        {"role": "assistant", "content": "Let me check.", "reasoning": "hm", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
    ]
    assert calls_in(out) == ["call_1", "call_2"]


def test_function_call_output_may_answer_a_stored_call() -> None:
    out = input_messages([{"type": "function_call_output", "call_id": "call_9", "output": "ok"}],
                         known_calls=["call_9"])
    assert out == [{"role": "tool", "tool_call_id": "call_9", "content": "ok"}]


@pytest.mark.parametrize(("raw", "param"), [
    (42, "input"),
    (["hi"], "input[0]"),
    ([{"type": "image_generation_call", "id": "ig_1"}], "input[0].type"),
    ([{"content": "no type, no role"}], "input[0].type"),
    ([{"role": "wizard", "content": "x"}], "input[0].role"),
    ([{"role": "user"}], "input[0].content"),
    ([{"role": "user", "content": [{"type": "input_audio"}]}], "input[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}], "input[0].content[0].type"),
    ([{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}], "input[0].content[0].image_url"),
    ([{"role": "user", "content": [{"type": "input_text"}]}], "input[0].content[0].text"),
    ([{"role": "assistant", "content": [{"type": "input_image", "image_url": PNG}]}], "input[0].content[0].type"),
    ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
    ([{"type": "function_call", "call_id": "c", "arguments": "{}"}], "input[0].name"),
    ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{nope"}], "input[0].arguments"),
    ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}], "input[0].arguments"),
    ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}], "input[0].arguments"),
    ([{"type": "function_call_output", "call_id": "nobody", "output": "x"}], "input[0].call_id"),
    ([{"type": "function_call", "call_id": "c", "name": "f"}, {"type": "function_call_output", "call_id": "c"}],
     "input[1].output"),
])
def test_bad_items_name_the_param(raw, param) -> None:
    with pytest.raises(OpenAIError) as exc:
        input_messages(raw)
    assert _param(exc) == param
    assert exc.value.message


def test_unknown_item_type_lists_the_supported_ones() -> None:
    with pytest.raises(OpenAIError) as exc:
        input_messages([{"type": "item_reference", "id": "msg_1"}])
    assert "'function_call_output'" in exc.value.message and "item_reference" in exc.value.message
    assert error_body(exc.value) == {"error": {"message": exc.value.message, "type": "invalid_request_error",
                                               "param": "input[0].type", "code": "invalid_value"}}


# ----------------------------------------------------------------------------- tools, choice, format
def test_flat_function_tools_become_chat_tools() -> None:
    tools = chat_tools([{"type": "function", "name": "get_weather", "description": "w", "strict": True,
                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
                        {"type": "function", "name": "get_time"}])
    assert tools == [
        {"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "get_time"}},
    ]
    assert chat_tools(None) is None


@pytest.mark.parametrize(("raw", "param"), [
    ({"type": "function"}, "tools"),
    ([{"type": "computer_use_preview"}], "tools[0].type"),
    ([{"type": "function"}], "tools[0].name"),
    ([{"type": "function", "name": "f", "parameters": "x"}], "tools[0].parameters"),
])
def test_bad_tools(raw, param) -> None:
    with pytest.raises(OpenAIError) as exc:
        chat_tools(raw)
    assert _param(exc) == param


def test_tool_choice_translation() -> None:
    assert chat_tool_choice(None) is None
    for mode in ("none", "auto", "required"):
        assert chat_tool_choice(mode) == mode
    assert chat_tool_choice({"type": "function", "name": "f"}) == {"type": "function", "function": {"name": "f"}}
    for bad in ("always", {"type": "function"}, {"type": "file_search"}, 3):
        with pytest.raises(OpenAIError) as exc:
            chat_tool_choice(bad)
        assert _param(exc).startswith("tool_choice")


def test_text_format_translation() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert chat_response_format(None) is None
    assert chat_response_format({"format": {"type": "text"}}) is None
    assert chat_response_format({"verbosity": "low"}) is None
    assert chat_response_format({"format": {"type": "json_object"}}) == {"type": "json_object"}
    assert chat_response_format({"format": {"type": "json_schema", "name": "a", "schema": schema}}) == {
        "type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    for bad, param in (("json", "text"), ({"format": "json"}, "text.format"),
                       ({"format": {"type": "json_schema"}}, "text.format.schema"),
                       ({"format": {"type": "yaml"}}, "text.format.type")):
        with pytest.raises(OpenAIError) as exc:
            chat_response_format(bad)
        assert _param(exc) == param


# ----------------------------------------------------------------------------- the reply and its events
def _done(reason: str = "stop", cached: int = 0) -> Done:
    return Done(done_reason=reason, prompt_eval_count=10, prompt_eval_duration_ns=1, eval_count=5,
                eval_duration_ns=1, context=[], cached_count=cached)


def _builder(**kw) -> ResponseBuilder:
    return ResponseBuilder(ReplyContext(id="resp_x", model="m", created_at=1, **kw))


def _call(name: str, args: str, ident: str = "call_a") -> dict:
    return {"id": ident, "index": 0, "type": "function", "function": {"name": name, "arguments": args}}


def test_stream_events_follow_the_documented_order() -> None:
    b = _builder()
    events = b.start()
    events += b.feed(Delta(reasoning="think"))
    events += b.feed(Delta(content="\n"))  # whitespace alone does not open a message yet
    events += b.feed(Delta(content="Hel"))
    events += b.feed(Delta(content="lo"))
    events += b.feed(Delta(tool_calls=(_call("get_time", "{}"),)))
    events += b.finish(_done(cached=4))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert [d["delta"] for d in deltas] == ["\nHel", "lo"] and {d["output_index"] for d in deltas} == {1}
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["incomplete_details"] is None
    kinds = [item["type"] for item in final["output"]]
    assert kinds == ["reasoning", "message", "function_call"]
    reasoning, message, call = final["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "think"}] and reasoning["summary"] == []
    assert message["content"] == [{"type": "output_text", "text": "\nHello", "annotations": [], "logprobs": []}]
    assert message["status"] == "completed" and message["role"] == "assistant"
    assert call["call_id"] == "call_a" and call["name"] == "get_time" and call["arguments"] == "{}"
    assert call["id"].startswith("fc_") and message["id"].startswith("msg_") and reasoning["id"].startswith("rs_")
    # every item's added/done events name the item and index it ends up with
    for event in events:
        if event["type"] == "response.output_item.done":
            assert final["output"][event["output_index"]] == event["item"]
    assert final["usage"] == {"input_tokens": 14, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 19}
    assert b.response() == final
    assert b.assistant_message() == {"role": "assistant", "content": "\nHello", "reasoning": "think",
                                     "tool_calls": [{"id": "call_a", "type": "function",
                                                     "function": {"name": "get_time", "arguments": "{}"}}]}


def test_length_limit_is_incomplete() -> None:
    b = _builder(max_output_tokens=5)
    b.feed(Delta(content="a b c"))
    events = b.finish(_done("length"))
    assert events[-1]["type"] == "response.incomplete"
    final = b.response()
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete" and final["max_output_tokens"] == 5


def test_empty_answer_is_still_a_message() -> None:
    b = _builder()
    events = b.finish(_done())
    assert [e["type"] for e in events][-4:] == ["response.output_text.done", "response.content_part.done",
                                                "response.output_item.done", "response.completed"]
    assert b.response()["output"][0]["content"][0]["text"] == ""


def test_whitespace_after_a_call_is_not_a_message() -> None:
    b = _builder()
    b.feed(Delta(tool_calls=(_call("f", '{"x":1}'),)))
    b.feed(Delta(content="\n"))
    b.finish(_done())
    assert [item["type"] for item in b.response()["output"]] == ["function_call"]


def test_reply_echoes_the_request_settings() -> None:
    tools = [{"type": "function", "name": "f"}]
    b = _builder(instructions="be brief", previous_response_id="resp_0", store=False, tools=tools,
                 tool_choice="required", text={"format": {"type": "json_object"}}, reasoning={"effort": "low"},
                 temperature=0.0, top_p=0.5, metadata={"k": "v"})
    body = b.response()
    assert body["object"] == "response" and body["id"] == "resp_x" and body["model"] == "m"
    assert body["instructions"] == "be brief" and body["previous_response_id"] == "resp_0"
    assert body["store"] is False and body["tools"] == tools and body["tool_choice"] == "required"
    assert body["text"] == {"format": {"type": "json_object"}}
    assert body["reasoning"] == {"effort": "low", "summary": None}
    assert body["temperature"] == 0.0 and body["top_p"] == 0.5 and body["metadata"] == {"k": "v"}
    assert _builder().response()["text"] == {"format": {"type": "text"}}


def test_failure_events() -> None:
    b = _builder()
    b.start()
    events = b.fail(APIError(500, "boom"), None)
    assert [e["type"] for e in events] == ["error", "response.failed"]
    assert events[0]["message"] == "boom" and events[0]["sequence_number"] == 2
    assert events[1]["response"]["status"] == "failed"
    assert events[1]["response"]["error"] == {"code": "server_error", "message": "boom"}


def test_sse_framing() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 3, "delta": "é\n"}
    assert sse_event(event) == (b'event: response.output_text.delta\n'
                                b'data: {"type":"response.output_text.delta","sequence_number":3,'
                                b'"delta":"\xc3\xa9\\n"}\n\n')


# ----------------------------------------------------------------------------- the store
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_store_keeps_gets_and_deletes() -> None:
    store = ResponseStore(max_bytes=10_000, ttl=60, clock=_Clock())
    assert store.put("a", {"id": "a"}, [{"role": "user", "content": "hi"}])
    got = store.get("a")
    assert got is not None and got.body == {"id": "a"} and got.conversation == ({"role": "user", "content": "hi"},)
    assert store.delete("a") and store.get("a") is None and not store.delete("a")
    assert len(store) == 0 and store.bytes_used == 0


def test_store_entries_belong_to_the_key_that_stored_them() -> None:
    store = ResponseStore(max_bytes=10_000, ttl=60, clock=_Clock())
    assert store.put("a", {"id": "a"}, [], owner="key-a")
    assert store.put("open", {"id": "open"}, [])  # a server without keys
    assert store.get("a") is None and store.get("a", owner="key-b") is None
    assert store.get("a", owner="key-a").body == {"id": "a"}
    assert store.get("open") is not None and store.get("open", owner="key-a") is None
    assert not store.delete("a", owner="key-b") and store.get("a", owner="key-a") is not None
    assert store.delete("a", owner="key-a") and store.get("a", owner="key-a") is None


def test_store_expires_entries() -> None:
    clock = _Clock()
    store = ResponseStore(max_bytes=10_000, ttl=60, clock=clock)
    store.put("a", {}, [])
    clock.now = 30
    store.put("b", {}, [])
    clock.now = 61
    assert store.get("a") is None and store.get("b") is not None
    clock.now = 91
    assert store.get("b") is None and store.bytes_used == 0


def test_store_evicts_oldest_past_its_size() -> None:
    store = ResponseStore(max_bytes=300, ttl=60, clock=_Clock())
    text = "x" * 80
    for name in "abcd":
        assert store.put(name, {"t": text}, [])
    assert store.get("a") is None and store.get("d") is not None
    assert store.bytes_used <= 300 and len(store) < 4
    # one entry bigger than the whole store is refused, and evicts nothing
    kept = len(store)
    assert not store.put("huge", {"t": "y" * 400}, [])
    assert store.get("huge") is None and len(store) == kept


def test_store_can_be_off() -> None:
    assert not ResponseStore(max_bytes=0, ttl=60).put("a", {}, [])
    assert not ResponseStore(max_bytes=100, ttl=0).enabled


def test_stored_size_counts_json() -> None:
    store = ResponseStore(max_bytes=10_000, ttl=60, clock=_Clock())
    store.put("a", {"k": "é"}, [{"role": "user"}], [{"id": "msg_1"}])
    assert store.bytes_used == (len(json.dumps({"k": "é"}, ensure_ascii=False)) + len(json.dumps([{"role": "user"}]))
                                + len(json.dumps([{"id": "msg_1"}])))
    assert store.get("a").input_items == ({"id": "msg_1"},)


def test_listed_items_spell_out_the_short_forms() -> None:
    (only,) = listed_items("hi")
    assert only["id"].startswith("msg_") and only["status"] == "completed"
    assert {k: v for k, v in only.items() if k != "id"} == {
        "type": "message", "role": "user", "status": "completed", "content": [{"type": "input_text", "text": "hi"}]}
    items = listed_items([{"role": "assistant", "content": "ok"},
                          {"type": "function_call", "id": "fc_mine", "call_id": "c", "name": "f", "arguments": "{}"},
                          {"type": "function_call_output", "call_id": "c", "output": "x"}])
    assert items[0]["type"] == "message" and items[0]["content"] == [{"type": "output_text", "text": "ok"}]
    assert items[1]["id"] == "fc_mine" and items[2]["id"].startswith("fco_")


def test_store_settings_from_the_environment() -> None:
    from trillama.config import ConfigError, Settings

    default = Settings.from_env({})
    assert default.responses_store_size == 64 * 2**20 and default.responses_store_ttl == 3600
    custom = Settings.from_env({"TRILLAMA_RESPONSES_STORE_SIZE": "1MiB", "TRILLAMA_RESPONSES_STORE_TTL": "10m"})
    assert custom.responses_store_size == 2**20 and custom.responses_store_ttl == 600
    with pytest.raises(ConfigError, match="TRILLAMA_RESPONSES_STORE_TTL"):
        Settings.from_env({"TRILLAMA_RESPONSES_STORE_TTL": "soon"})


async def test_a_failure_mid_stream_ends_with_error_and_failed_events() -> None:
    from trillama.api.openai.responses import _stream

    builder = _builder()

    async def events():
        for event in builder.start():
            yield event
        for event in builder.feed(Delta(content="Hi")):
            yield event
        raise APIError(500, "model runner has unexpectedly stopped")

    response = await _stream(events(), builder)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    chunks = []
    async with response.response as body:
        async for chunk in body:
            chunks.append(chunk)
    raw = b"".join(chunks)
    names = [line[len(b"event: "):].decode() for line in raw.split(b"\n") if line.startswith(b"event: ")]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "error", "response.failed"]
    datas = [json.loads(line[len(b"data: "):]) for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert [d["sequence_number"] for d in datas] == list(range(7))
    assert datas[-2]["message"] == "model runner has unexpectedly stopped"
    assert datas[-1]["response"]["status"] == "failed"


async def test_an_error_before_the_first_event_is_raised() -> None:
    from trillama.api.openai.responses import _stream

    async def events():
        raise APIError(503, "server busy")
        yield {}  # pragma: no cover

    with pytest.raises(APIError) as exc:
        await _stream(events(), _builder())
    assert exc.value.status == 503


# ----------------------------------------------------------------------------- prefix reuse, as text
async def test_a_continued_prompt_starts_with_the_previous_prompt_and_answer(monkeypatch, smollm2_gguf) -> None:
    """Why ``previous_response_id`` reuses the runner's cache: turn 2's rendered prompt (SmolLM2's
    own chat template, through the real renderer) begins with turn 1's prompt followed by the
    answer, so the slot's cached tokens are a prefix of the new prompt."""
    import attrs

    from trillama.api.openai import responses_input
    from trillama.api.openai.messages import native_messages
    from trillama.api.prompting import build_chat_prompt
    from trillama.store.gguf_info import read_gguf_info

    info = read_gguf_info(smollm2_gguf)

    @attrs.frozen
    class Record:
        capabilities: tuple[str, ...] = ("completion",)
        template: str | None = None
        system: str | None = None
        messages: tuple = ()

        def gguf_info(self):
            return info

    async def count(text: str, limit: int) -> list[int] | None:
        return [0] * len(text) if len(text) <= limit else None

    async def render(plan) -> str:
        prompt = await build_chat_prompt(Record(), native_messages(plan.chat.messages), tools=None, think=None,
                                         truncate=True, num_ctx=100_000, count_tokens=count)
        return prompt.text

    monkeypatch.setattr(responses_input, "plan_chat", lambda chat, **_: chat)  # keep the chat request itself
    first = responses_input.plan_response(
        responses_input.ResponsesRequest(model="m", instructions="Be terse.", input="Remember 42."))
    builder = _builder()
    builder.feed(Delta(content="OK, 42."))
    builder.finish(_done())
    history = first.conversation + [builder.assistant_message()]
    second = responses_input.plan_response(
        responses_input.ResponsesRequest(model="m", instructions="Be terse.", input="Which number?"), history)
    turn1, turn2 = await render(first), await render(second)
    assert "Remember 42." in turn1 and "Be terse." in turn1
    assert turn2.startswith(turn1 + "OK, 42."), (turn1, turn2)
    assert "Which number?" in turn2[len(turn1):]


# ----------------------------------------------------------------------------- the routes, without a model
@pytest.fixture
def app(tmp_path):
    from trillama.actors.prompt.inspector import GoTemplateInspector
    from trillama.api.app import create_app
    from trillama.api.context import Services
    from trillama.config import Settings
    from trillama.store import ModelStore

    settings = Settings(models_dir=tmp_path / "models", bundled_model=False, responses_store_size=10_000,
                        responses_store_ttl=60)
    return create_app(Services(settings=settings, store=ModelStore(tmp_path / "models",
                                                                   templates=GoTemplateInspector())))


async def _request(app, method: str, path: str, body=None):
    response = await app.test_client().open(path, method=method, json=body)
    return response.status_code, json.loads(await response.get_data())


async def test_store_routes_page_and_refuse(app) -> None:
    store = app.extensions["trillama.responses"]
    assert store.max_bytes == 10_000 and store.ttl == 60  # sized from the settings
    items = listed_items([{"role": "user", "content": str(n)} for n in range(5)])
    store.put("resp_a", {"id": "resp_a", "object": "response"}, [], items)
    assert await _request(app, "GET", "/v1/responses/resp_a") == (200, {"id": "resp_a", "object": "response"})

    status, page = await _request(app, "GET", "/v1/responses/resp_a/input_items?limit=2")
    assert status == 200 and [i["content"][0]["text"] for i in page["data"]] == ["4", "3"]
    assert page["has_more"] is True and page["first_id"] == items[4]["id"] and page["last_id"] == items[3]["id"]
    status, page = await _request(app, "GET", f"/v1/responses/resp_a/input_items?order=asc&after={items[2]['id']}")
    assert [i["content"][0]["text"] for i in page["data"]] == ["3", "4"] and page["has_more"] is False

    for query, param in (("order=up", "order"), ("limit=0", "limit"), ("limit=x", "limit"), ("after=msg_no", "after")):
        status, body = await _request(app, "GET", f"/v1/responses/resp_a/input_items?{query}")
        assert status == 400 and body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error"

    assert await _request(app, "DELETE", "/v1/responses/resp_a") == (
        200, {"id": "resp_a", "object": "response.deleted", "deleted": True})
    for method, path in (("GET", "/v1/responses/resp_a"), ("DELETE", "/v1/responses/resp_a"),
                         ("GET", "/v1/responses/resp_a/input_items")):
        status, body = await _request(app, method, path)
        assert status == 404 and body["error"]["type"] == "not_found_error", (method, path, body)


async def test_bad_bodies_are_400s_before_any_model(app) -> None:
    # no scheduler here: each of these must be refused while validating
    for body, param in (({"model": "m", "input": "hi", "previous_response_id": "resp_gone"}, "previous_response_id"),
                        ({"model": "m", "input": [{"type": "bogus"}]}, "input[0].type"),
                        ({"model": "m", "input": "hi", "max_output_tokens": -1}, "max_output_tokens"),
                        ({"model": "m", "input": "hi", "background": True}, "background"),
                        ({"model": "m"}, "input")):
        status, out = await _request(app, "POST", "/v1/responses", body)
        assert status == 400 and out["error"]["param"] == param, (body, out)
    status, out = await _request(app, "POST", "/v1/responses", {"model": "m", "input": "hi", "store": "yes"})
    assert status == 400 and "store" in out["error"]["message"]
