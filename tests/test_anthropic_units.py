"""Unit tests for the Anthropic layer: translation, stop reasons, the event sequence, SSE and pings.

No model here: these pin the pure pieces (blocks → native messages, tools, tool choice, thinking;
Delta/Finish → events) and the transport (framing, pings while a source is quiet, an error after
the stream started, the producer cancelled when the client leaves). The end-to-end behaviour
against a real server is in test_anthropic_e2e.py.
"""

from __future__ import annotations

import base64
import json

import pytest
import trio

from trillama.actors.runner.messages import Done
from trillama.api.anthropic.errors import error_body, error_type, wire_status
from trillama.api.anthropic.reply import collect_message, stop_reason
from trillama.api.anthropic.run import Delta, Finish, ToolUse, matched_stop
from trillama.api.anthropic.sse import PING, Pump, frame, sse_body
from trillama.api.anthropic.stream import stream_events
from trillama.api.anthropic.translate import (
    native_messages,
    native_tools,
    output_schema,
    parse_tool_choice,
    stop_sequences,
    system_text,
    think_value,
)
from trillama.api.errors import APIError

PNG = base64.b64encode(b"\x89PNG fake").decode()
WEATHER = {"name": "get_weather", "description": "Weather", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def _error(fn, *args) -> str:
    with pytest.raises(APIError) as caught:
        fn(*args)
    assert caught.value.status == 400
    return caught.value.message


# ----------------------------------------------------------------------------- system and messages
def test_system_string_or_text_blocks() -> None:
    assert system_text(None) is None and system_text("") is None
    assert system_text("Be brief.") == "Be brief."
    assert system_text([{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                        {"type": "text", "text": "B"}]) == "A\n\nB"
    assert "system.0" in _error(system_text, [{"type": "image", "source": {}}])
    assert "system" in _error(system_text, 5)


def test_messages_string_and_blocks_with_system_first() -> None:
    out = native_messages([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                          {"type": "redacted_thinking", "data": "xx"},
                                          {"type": "text", "text": "Hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"},
                                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                  "data": PNG}}]},
    ], "Sys")
    assert out[0] == {"role": "system", "content": "Sys"}
    assert out[1] == {"role": "user", "content": "Hi"}
    assert out[2] == {"role": "assistant", "content": "Hello", "thinking": "hmm"}
    assert out[3] == {"role": "user", "content": "One\n\nTwo", "images": [b"\x89PNG fake"]}


def test_tool_use_and_tool_result_round_trip() -> None:
    out = native_messages([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
            {"type": "text", "text": "And so?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "boom",
                                      "is_error": True}]},
    ])
    assert out[1] == {"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "toolu_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]}
    # The result comes first, as the tool turn the template expects right after the call.
    assert out[2] == {"role": "tool", "content": "18C", "tool_name": "get_weather", "tool_call_id": "toolu_1"}
    assert out[3] == {"role": "user", "content": "And so?"}
    assert out[5] == {"role": "tool", "content": "Error: boom", "tool_name": "get_weather",
                      "tool_call_id": "toolu_2"}
    assert len(out) == 6  # a user turn holding only results adds no empty user message


@pytest.mark.parametrize(("messages", "expected"), [
    (None, "messages: field required"),
    ([], "messages: at least one message is required"),
    ("hi", "messages: expected an array"),
    ([{"role": "system", "content": "x"}], "at least one user or assistant message"),
    ([{"role": "developer", "content": "x"}], "Unexpected role 'developer': an input message role"),
    ([{"role": "user"}], "messages.0.content: field required"),
    ([{"role": "user", "content": [{"type": "video"}]}],
     "messages.0.content.0: Input tag 'video' found using 'type' does not match any of the expected tags: 'text'"),
    ([{"role": "user", "content": [{"text": "no type"}]}], "messages.0.content.0"),
    ([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]}],
     "no earlier assistant tool_use block has that id"),
    ([{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}],
     "belongs in an assistant message"),
    ([{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "a"}]}],
     "belongs in a user message"),
    ([{"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": [1]}]}],
     "messages.0.content.0.input"),
    ([{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]}],
     "not supported; send the image as base64"),
    ([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                 "data": "@@@"}}]}], "invalid base64"),
    ([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "text/plain",
                                                                 "data": PNG}}]}], "media_type"),
    ([{"role": "user", "content": 7}], "expected a string or an array of content blocks"),
])
def test_bad_messages_are_400s_naming_the_path(messages, expected) -> None:
    assert expected in _error(native_messages, messages)


def test_a_tool_result_may_answer_only_an_earlier_call() -> None:
    later = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
             {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}]
    assert "toolu_1" in _error(native_messages, later)


# ----------------------------------------------------------------------------- tools, choice, thinking
def test_tools_become_function_tools_and_server_tools_are_left_out() -> None:
    tools = native_tools([WEATHER, {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
                          {"type": "custom", "name": "clock", "input_schema": {"type": "object"}}])
    assert tools == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                          "parameters": WEATHER["input_schema"]}},
        {"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}},
    ]
    assert native_tools(None) is None and native_tools([]) is None
    assert "tools.0.input_schema" in _error(native_tools, [{"name": "x"}])
    assert "appears twice" in _error(native_tools, [WEATHER, WEATHER])
    assert "tools.0.name" in _error(native_tools, [{"input_schema": {}}])


def test_tool_choice() -> None:
    tools = native_tools([WEATHER])
    assert parse_tool_choice(None, tools).mode == "auto"
    assert not parse_tool_choice({"type": "auto"}, tools).forced
    assert parse_tool_choice({"type": "any"}, tools).forced
    named = parse_tool_choice({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}, tools)
    assert (named.mode, named.name, named.single, named.forced) == ("tool", "get_weather", True, True)
    assert parse_tool_choice({"type": "none"}, None).mode == "none"
    assert "needs at least one tool" in _error(parse_tool_choice, {"type": "any"}, None)
    assert "no tool named 'nope'" in _error(parse_tool_choice, {"type": "tool", "name": "nope"}, tools)
    assert "needs the tool's 'name'" in _error(parse_tool_choice, {"type": "tool"}, tools)
    assert "tool_choice.type" in _error(parse_tool_choice, {"type": "required"}, tools)
    assert "tool_choice" in _error(parse_tool_choice, "auto", tools)


def test_thinking_maps_to_think() -> None:
    assert think_value(None) is None
    assert think_value({"type": "enabled", "budget_tokens": 1024}) is True
    assert think_value({"type": "adaptive"}) is True
    assert think_value({"type": "disabled"}) is False
    assert think_value(None, {"effort": "low"}) == "low"
    assert think_value(None, {"effort": "xhigh"}) == "max"
    assert think_value({"type": "disabled"}, {"effort": "high"}) is False
    assert "thinking.type" in _error(think_value, {"type": "on"})
    assert "budget_tokens" in _error(think_value, {"type": "enabled", "budget_tokens": -1})
    assert "output_config.effort" in _error(think_value, None, {"effort": "extreme"})


def test_output_config_format() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert output_schema(None) is None and output_schema({"effort": "low"}) is None
    assert output_schema({"format": {"type": "json_schema", "schema": schema}}) == schema
    assert "output_config.format" in _error(output_schema, {"format": {"type": "xml"}})
    assert "output_config.format.schema" in _error(output_schema, {"format": {"type": "json_schema"}})


def test_stop_sequences() -> None:
    assert stop_sequences(None) == ()
    assert stop_sequences(["\n\n", "", "END"]) == ("\n\n", "END")
    assert "stop_sequences" in _error(stop_sequences, "END")
    assert "stop_sequences" in _error(stop_sequences, [1])


# ----------------------------------------------------------------------------- stop reasons, errors
def _done(reason: str = "stop", evaluated: int = 7, cached: int = 3, generated: int = 2) -> Done:
    return Done(done_reason=reason, prompt_eval_count=evaluated, prompt_eval_duration_ns=1, eval_count=generated,
                eval_duration_ns=1, context=[], cached_count=cached)


def test_stop_reason_mapping() -> None:
    assert stop_reason(Finish(_done("stop")), False) == "end_turn"
    assert stop_reason(Finish(_done("length")), False) == "max_tokens"
    assert stop_reason(Finish(_done("stop"), "END"), False) == "stop_sequence"
    assert stop_reason(Finish(_done("stop")), True) == "tool_use"


def test_matched_stop_finds_the_sequence_after_the_emitted_text() -> None:
    assert matched_stop("Hello END there", "Hello ", ("END", "XYZ")) == "END"
    assert matched_stop("Hello", "Hello", ("END",)) is None  # an end-of-turn token: nothing matched
    assert matched_stop("a\n\nb", "a", ("\n", "\n\n")) == "\n\n"  # both start there: the longer one
    assert matched_stop(" 1, 2", " 1", (",",)) == ","


def test_error_shapes_and_statuses() -> None:
    assert error_body(404, "model 'x' not found") == {
        "type": "error", "error": {"type": "not_found_error", "message": "model 'x' not found"}}
    assert [error_type(s) for s in (400, 404, 413, 429, 500, 503)] == [
        "invalid_request_error", "not_found_error", "request_too_large", "rate_limit_error", "api_error",
        "overloaded_error"]
    assert wire_status(503) == 529 and wire_status(400) == 400 and error_type(405) == "invalid_request_error"


# ----------------------------------------------------------------------------- the event sequence
async def _items(*items):
    for item in items:
        yield item


async def test_stream_events_order_and_block_indices() -> None:
    use = ToolUse(id="toolu_a", name="get_weather", input={"city": "Paris"})
    events = [e async for e in stream_events(_items(
        Delta(thinking="Let me "), Delta(thinking="think."), Delta(text="Hi"), Delta(text=" there"),
        Delta(tool_uses=(use,)), Finish(_done("stop"))), model="m")]
    names = [name for name, _ in events]
    assert names == ["message_start",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
                     "content_block_start", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert events[1][1] == {"type": "content_block_start", "index": 0,
                            "content_block": {"type": "thinking", "thinking": "", "signature": ""}}
    assert events[2][1]["delta"] == {"type": "thinking_delta", "thinking": "Let me "}
    assert events[5][1]["content_block"] == {"type": "text", "text": ""} and events[5][1]["index"] == 1
    assert events[6][1]["delta"] == {"type": "text_delta", "text": "Hi"}
    assert events[9][1] == {"type": "content_block_start", "index": 2, "content_block": {
        "type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}}
    assert json.loads(events[10][1]["delta"]["partial_json"]) == {"city": "Paris"}
    assert events[12][1] == {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                             "usage": {"input_tokens": 7, "cache_creation_input_tokens": 0,
                                       "cache_read_input_tokens": 3, "output_tokens": 2}}


async def test_an_empty_answer_still_starts_and_stops_the_message() -> None:
    events = [name async for name, _ in stream_events(_items(Finish(_done("length"))), model="m")]
    assert events == ["message_start", "message_delta", "message_stop"]


async def test_collect_message_merges_deltas_into_blocks() -> None:
    use = ToolUse(id="toolu_b", name="f", input={})
    body = await collect_message(_items(Delta(text="a"), Delta(text="b"), Delta(tool_uses=(use,)),
                                        Finish(_done("stop"))), model="m")
    assert body["content"] == [{"type": "text", "text": "ab"},
                               {"type": "tool_use", "id": "toolu_b", "name": "f", "input": {}}]
    assert body["stop_reason"] == "tool_use" and body["usage"]["input_tokens"] == 7
    assert body["type"] == "message" and body["role"] == "assistant" and body["model"] == "m"


# ----------------------------------------------------------------------------- SSE transport
def test_frame_bytes() -> None:
    assert frame("message_stop", {"type": "message_stop"}) == b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert PING == b'event: ping\ndata: {"type":"ping"}\n\n'


async def test_pings_fill_a_quiet_source_and_events_keep_their_order() -> None:
    async def slow():
        await trio.sleep(0.35)
        yield ("message_start", {"type": "message_start"})
        yield ("message_stop", {"type": "message_stop"})

    async with trio.open_nursery() as nursery:
        pump = await Pump.start(nursery, slow())
        assert await pump.next(0.05) is None  # nothing yet: the route would start the stream now
        chunks = [c async for c in sse_body(pump, None, ping_seconds=0.1)]
    assert chunks[0] == PING and chunks.count(PING) >= 2
    assert chunks[-2:] == [frame("message_start", {"type": "message_start"}),
                           frame("message_stop", {"type": "message_stop"})]


async def test_an_error_after_the_start_is_an_error_event() -> None:
    async def failing():
        yield ("message_start", {"type": "message_start"})
        raise APIError(503, "model was unloaded, please try again")

    async with trio.open_nursery() as nursery:
        pump = await Pump.start(nursery, failing())
        chunks = [c async for c in sse_body(pump, None, ping_seconds=5)]
    assert chunks[-1] == frame("error", {"type": "error", "error": {
        "type": "overloaded_error", "message": "model was unloaded, please try again"}})


async def test_an_unexpected_exception_is_an_api_error_event() -> None:
    async def broken():
        raise KeyError("oops")
        yield  # pragma: no cover

    async with trio.open_nursery() as nursery:
        pump = await Pump.start(nursery, broken())
        kind, error = await pump.next(5)
    assert kind == "error" and error.status == 500 and "KeyError" in error.message


async def test_closing_the_body_cancels_the_producer_and_runs_its_cleanup() -> None:
    cleaned = trio.Event()

    async def endless():
        try:
            while True:
                yield ("content_block_delta", {"type": "content_block_delta"})
                await trio.sleep(0.01)
        finally:
            cleaned.set()  # where a real source releases its model lease

    async with trio.open_nursery() as nursery:
        pump = await Pump.start(nursery, endless())
        body = sse_body(pump, None)
        assert (await body.__anext__()).startswith(b"event: content_block_delta")
        await body.aclose()  # the client went away
        with trio.fail_after(5):
            await cleaned.wait()


async def test_inline_pump_without_a_nursery() -> None:
    pump = await Pump.start(None, _items(("message_stop", {"type": "message_stop"})))
    assert await pump.next(0) == ("item", ("message_stop", {"type": "message_stop"}))
    assert await pump.next(0) == ("end", None)


async def test_the_apps_error_handler_answers_any_exception_on_v1_messages_in_anthropics_shape(
        tmp_path, monkeypatch) -> None:
    from trillama.api import anthropic
    from trillama.api.app import create_app
    from trillama.api.context import Services
    from trillama.api.errors import SERVER_BUSY
    from trillama.config import Settings
    from trillama.lifecycle import Lifecycle
    from trillama.store import ModelStore

    raised: list[BaseException] = []

    def plan_messages(req):
        raise raised[0]

    monkeypatch.setattr(anthropic, "plan_messages", plan_messages)
    life = Lifecycle()
    app = create_app(Services(settings=Settings(models_dir=tmp_path / "models", max_body_size=1024),
                              store=ModelStore(tmp_path / "models"), lifecycle=life))
    client = app.test_client()
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}

    raised[:] = [KeyError("boom")]
    unexpected = await client.post("/v1/messages", json=body)
    assert unexpected.status_code == 500
    error = json.loads(await unexpected.get_data())
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    assert unexpected.headers["X-Request-Id"] in error["error"]["message"]  # the log has the traceback

    raised[:] = [APIError(503, SERVER_BUSY, headers={"Retry-After": "1"})]
    busy = await client.post("/v1/messages", json=body)
    assert busy.status_code == 529 and busy.headers["Retry-After"] == "1"
    assert json.loads(await busy.get_data())["error"] == {"type": "overloaded_error", "message": SERVER_BUSY}

    too_large = await client.post("/v1/messages", json={**body, "system": "x" * 2048})
    assert too_large.status_code == 413
    assert json.loads(await too_large.get_data())["error"]["type"] == "request_too_large"

    life.begin_drain()  # refused before the route runs: the same handler, the same map
    draining = await client.post("/v1/messages", json=body)
    assert draining.status_code == 529 and draining.headers["Retry-After"] == "1"
    assert json.loads(await draining.get_data())["error"]["type"] == "overloaded_error"
    # the map is Anthropic's alone: the rest of /v1 keeps 503
    assert (await client.post("/v1/chat/completions", json={"model": "m", "messages": []})).status_code == 503


def test_errors_outside_the_blueprint_under_v1_messages_are_in_anthropics_shape():
    from trillama.api import anthropic  # noqa: F401  (registers the shape)
    from trillama.api.errors import error_body

    body = error_body("/v1/messages/batches", 404, "404 page not found")
    assert body == {"type": "error", "error": {"type": "not_found_error", "message": "404 page not found"}}
    # the rest of /v1 keeps OpenAI's error object
    assert error_body("/v1/chat/completions", 404, "x").get("type") != "error"
