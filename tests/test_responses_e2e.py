"""``/v1/responses`` end to end: the official ``openai`` SDK against a real server and real models.

As in test_openai_e2e, the session's shared server, the bundled ``smollm2:135m`` for text and
``smollm2-tools`` (the same weights with a ChatML template that shows tools) for function calls.
Generations are short and greedy; nothing here asserts on timing — the prefix reuse of a continued
response is shown by the ``cached_tokens`` the server reports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid

import httpx
import openai
import pytest
from openai import OpenAI

from conftest import REPO, TOOLS_MODEL, ServerProcess

SMOL = "smollm2:135m"
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                          "required": ["city"]}}
CLOCK = {"type": "function", "name": "get_time", "description": "The current time",
         "parameters": {"type": "object", "properties": {}}}


@pytest.fixture
def resp_server(shared_server: ServerProcess) -> ServerProcess:
    return shared_server


# ----------------------------------------------------------------------------- create
def test_create_non_streaming(oai: OpenAI) -> None:
    out = oai.responses.create(model=SMOL, input="Say hello.", max_output_tokens=12, temperature=0)
    assert out.id.startswith("resp_") and out.object == "response" and out.model == SMOL
    assert out.status in ("completed", "incomplete")
    (message,) = out.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text"
    assert out.output_text and out.output_text == message.content[0].text
    usage = out.usage
    assert usage is not None and usage.input_tokens > 0 and 0 < usage.output_tokens <= 12
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert out.store is True and out.previous_response_id is None and out.tool_choice == "auto"


def test_instructions_items_and_incomplete(oai: OpenAI) -> None:
    out = oai.responses.create(
        model=SMOL, instructions="Answer at length.",
        input=[{"role": "developer", "content": "Use plain words."},
               {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Write a long story"},
                            {"type": "input_text", "text": "about a cat."}]}],
        max_output_tokens=3, temperature=0, reasoning={"effort": "none"}, extra_body={"keep_alive": "5m"})
    assert out.status == "incomplete" and out.reasoning.effort == "none"
    assert out.incomplete_details is not None and out.incomplete_details.reason == "max_output_tokens"
    assert out.instructions == "Answer at length." and out.max_output_tokens == 3
    assert out.usage is not None and out.usage.output_tokens == 3
    assert out.output[0].status == "incomplete"
    # the input as stored, newest first unless asked otherwise, each item with an id
    listed = oai.responses.input_items.list(out.id, order="asc")
    assert [item.role for item in listed.data] == ["developer", "user"]
    assert listed.data[0].content[0].text == "Use plain words." and listed.data[1].id.startswith("msg_")
    assert [item.role for item in oai.responses.input_items.list(out.id).data] == ["user", "developer"]
    page = oai.responses.input_items.list(out.id, limit=1)
    assert len(page.data) == 1 and page.has_more


def test_streaming_with_the_sdk_helpers(oai: OpenAI) -> None:
    # get_final_response() wants response.completed, so the limit is well above the answer's length
    with oai.responses.stream(model=SMOL, input="Say hi.", max_output_tokens=100, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas and "".join(deltas) == final.output_text
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == final.output_text
    assert events[0].response.id == final.id and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens > 0


def test_streaming_create_iterates_typed_events(oai: OpenAI) -> None:
    stream = oai.responses.create(model=SMOL, input="Name a colour.", max_output_tokens=4, temperature=0,
                                  stream=True)
    events = list(stream)
    assert isinstance(events[0], openai.types.responses.ResponseCreatedEvent)
    assert isinstance(events[-1], (openai.types.responses.ResponseCompletedEvent,
                                   openai.types.responses.ResponseIncompleteEvent))


def test_json_schema_text_format(oai: OpenAI) -> None:
    out = oai.responses.create(
        model=SMOL, input="Give a JSON object with a key a set to 1",
        text={"format": {"type": "json_schema", "name": "a", "schema": {
            "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}},
        max_output_tokens=30, temperature=0)
    assert isinstance(json.loads(out.output_text)["a"], int)
    assert out.text.format.type == "json_schema"


# ----------------------------------------------------------------------------- function calls
def test_forced_function_call_and_output_round_trip(oai: OpenAI) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = oai.responses.create(model=TOOLS_MODEL, input=[question], tools=[WEATHER, CLOCK],
                                 tool_choice={"type": "function", "name": "get_weather"},
                                 max_output_tokens=60, temperature=0, store=False)
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert set(json.loads(call.arguments)) == {"city"}
    assert first.tool_choice.name == "get_weather"

    # The client runs the tool and sends the whole conversation back (what a stateless agent does).
    second = oai.responses.create(
        model=TOOLS_MODEL, tools=[WEATHER, CLOCK], max_output_tokens=30, temperature=0,
        input=[question, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}])
    assert second.status in ("completed", "incomplete")
    assert second.output and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


def test_required_function_call_streaming(oai: OpenAI) -> None:
    with oai.responses.stream(model=TOOLS_MODEL, input="What time is it?", tools=[WEATHER, CLOCK],
                              tool_choice="required", max_output_tokens=60, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name in ("get_weather", "get_time") and isinstance(json.loads(call.arguments), dict)
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == call.arguments


def test_function_call_output_continues_a_stored_response(oai: OpenAI) -> None:
    first = oai.responses.create(model=TOOLS_MODEL, input="What is the weather in Oslo?", tools=[WEATHER],
                                 tool_choice="required", max_output_tokens=60, temperature=0)
    (call,) = [item for item in first.output if item.type == "function_call"]
    second = oai.responses.create(
        model=TOOLS_MODEL, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=30, temperature=0,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Rain, 8 C"}])
    assert second.previous_response_id == first.id and second.output
    # a call id that no stored or sent call made is refused
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(model=TOOLS_MODEL, previous_response_id=first.id, tools=[WEATHER],
                             input=[{"type": "function_call_output", "call_id": "call_nobody", "output": "x"}])
    assert exc.value.body["param"] == "input[0].call_id"


# ----------------------------------------------------------------------------- store, continue, retrieve, delete
def test_previous_response_id_reuses_the_cached_prefix(oai: OpenAI) -> None:
    code = uuid.uuid4().hex[:8]
    first = oai.responses.create(model=SMOL, instructions="You are terse.",
                                 input=f"Remember the code {code}. Reply with OK.", max_output_tokens=8,
                                 temperature=0)
    second = oai.responses.create(model=SMOL, instructions="You are terse.", previous_response_id=first.id,
                                  input="What was the code?", max_output_tokens=8, temperature=0)
    assert first.usage is not None and second.usage is not None
    # Turn 2's prompt is turn 1's prompt and answer plus the new question: the whole of turn 1's
    # prompt, and the answer's tokens after it, come from the runner's cache, not a re-evaluation.
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= first.usage.input_tokens + 1, (cached, first.usage)
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # the same question without the history is a shorter prompt: the history really was sent
    alone = oai.responses.create(model=SMOL, instructions="You are terse.", input="What was the code?",
                                 max_output_tokens=1, temperature=0, store=False)
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.input_tokens // 2


def test_retrieve_and_delete(oai: OpenAI) -> None:
    made = oai.responses.create(model=SMOL, input="Say hi.", max_output_tokens=4, temperature=0,
                                metadata={"run": "1"})
    got = oai.responses.retrieve(made.id)
    assert got.id == made.id and got.output_text == made.output_text and got.metadata == {"run": "1"}
    assert got.usage == made.usage
    oai.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.delete(made.id)
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(model=SMOL, previous_response_id=made.id, input="more")
    assert exc.value.code == "previous_response_not_found"
    assert exc.value.body["param"] == "previous_response_id"


def test_store_false_keeps_nothing(oai: OpenAI) -> None:
    made = oai.responses.create(model=SMOL, input="Say hi.", max_output_tokens=2, store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(made.id)


def test_streamed_response_is_stored(oai: OpenAI) -> None:
    with oai.responses.stream(model=SMOL, input="Say hi.", max_output_tokens=100, temperature=0) as stream:
        final = stream.get_final_response()
    assert oai.responses.retrieve(final.id).output_text == final.output_text


# ----------------------------------------------------------------------------- errors
def test_errors_raise_the_sdk_classes(oai: OpenAI, resp_server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no-such-model", input="hi")
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no-such-model", input="hi", stream=True)
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(model=SMOL, input="hi", previous_response_id="resp_" + "0" * 48)
    assert exc.value.code == "previous_response_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(model=SMOL, input=[{"type": "computer_call", "id": "c"}])
    assert exc.value.body["param"] == "input[0].type" and "computer_call" in exc.value.message
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(model=SMOL, input="hi", tool_choice="required")
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(model=SMOL, input="hi", tools=[{"type": "computer_use_preview", "display_width": 8,
                                                             "display_height": 8, "environment": "linux"}])
    assert exc.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=SMOL, input="hi", max_output_tokens=0)
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=SMOL, input="hi", reasoning={"effort": "enormous"})
    with pytest.raises(openai.BadRequestError) as exc:
        oai.responses.create(model=SMOL, input="hi", reasoning={"effort": "high"})
    assert "does not support thinking" in exc.value.message
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model="", input="hi")
    with pytest.raises(openai.BadRequestError):
        oai.responses.create(model=SMOL, input=[])
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve("resp_missing")
    # Raw bodies the SDK would not send: still a 400 in OpenAI's shape, never a 500.
    with resp_server.client() as client:
        for body in (b"{not json", b"[1]", json.dumps({"model": SMOL, "input": "hi", "stream": "yes"}).encode(),
                     json.dumps({"model": SMOL, "input": {"role": "user"}}).encode(),
                     json.dumps({"model": SMOL, "input": "hi", "text": {"format": {"type": "yaml"}}}).encode()):
            r = client.post("/v1/responses", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (body, r.text)
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"]


# ----------------------------------------------------------------------------- the wire
def test_sse_framing_bytes(resp_server: ServerProcess) -> None:
    body = {"model": SMOL, "input": "Say hello.", "max_output_tokens": 5, "temperature": 0, "stream": True}
    with httpx.Client(base_url=resp_server.base_url, timeout=120) as client:
        with client.stream("POST", "/v1/responses", json=body) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-cache"
            raw = b"".join(r.iter_bytes())
    assert raw.endswith(b"\n\n") and b"[DONE]" not in raw
    blocks = raw.split(b"\n\n")[:-1]
    names = []
    for number, block in enumerate(blocks):
        match = re.fullmatch(rb"event: ([a-z_.]+)\ndata: (\{.*\})", block)
        assert match, block
        data = json.loads(match.group(2))
        assert data["type"] == match.group(1).decode() and data["sequence_number"] == number
        names.append(data["type"])
    assert names[0] == "response.created" and names[-1] in ("response.completed", "response.incomplete")
    assert names.index("response.output_text.delta") < names.index("response.output_text.done")


def test_docs_curl_examples(resp_server: ServerProcess) -> None:
    """Every curl example of docs/responses.md runs against the server and prints what it shows."""
    text = (REPO / "docs" / "responses.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```sh\n")[1:]]
    assert len(blocks) == 5
    script = ("set -euo pipefail\n" + "\n".join(blocks)).replace("http://localhost:11434", resp_server.base_url)
    result = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "MODEL": TOOLS_MODEL})
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert '"error"' not in out.replace('"error":null', ""), out  # no example failed, bar the one meant to
    assert out.count('"previous_response_not_found"') == 1, out
    assert '"response.deleted"' in out and ("\ncompleted\n" in out or "\nincomplete\n" in out), out
    assert "event: response.completed" in out or "event: response.incomplete" in out, out
    assert '"name":"get_weather"' in out, out
