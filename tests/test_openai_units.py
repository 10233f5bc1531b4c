"""The ``/v1`` translation without a server: message conversion, tool_choice, formats, encodings,
and the forced-tool-call grammar checked against real llama.cpp with the bundled model's vocabulary.
"""

from __future__ import annotations

import base64
import ctypes
import json
import struct
from pathlib import Path
from typing import Iterator

import llama_cpp as L
import pytest

from trillama.actors.prompt.toolcalls import ToolCallParser
from trillama.actors.structured import FormatError, grammar_for_tool_call
from trillama.api.errors import APIError
from trillama.api.openai import (
    ToolChoice,
    float32_base64,
    native_messages,
    ollama_format,
    parse_tool_choice,
    stop_list,
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()


def _status(exc: pytest.ExceptionInfo[APIError]) -> int:
    return exc.value.status


# ----------------------------------------------------------------------------- messages
def test_messages_text_parts_images_and_developer() -> None:
    out = native_messages([
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                                     {"type": "text", "text": "b"}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": f"data:;base64,{PNG_B64}"}]},
    ])
    assert out == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\n\nb", "images": [base64.b64decode(PNG_B64)]},
        {"role": "user", "content": "", "images": [base64.b64decode(PNG_B64)]},
    ]


def test_messages_tool_calls_and_tool_results() -> None:
    out = native_messages([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        {"role": "tool", "tool_call_id": "call_a", "content": [{"type": "text", "text": "cold"}]},
        {"role": "tool", "name": "get_weather", "content": "windy"},
    ])
    assert out[1]["content"] == ""
    assert out[1]["tool_calls"] == [
        {"id": "call_a", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}},
        {"id": "call_b", "function": {"index": 1, "name": "get_time", "arguments": {}}},
    ]
    assert out[2] == {"role": "tool", "content": "noon", "tool_call_id": "call_b", "tool_name": "get_time"}
    assert out[3] == {"role": "tool", "content": "cold", "tool_call_id": "call_a", "tool_name": "get_weather"}
    assert out[4] == {"role": "tool", "content": "windy", "tool_name": "get_weather"}


@pytest.mark.parametrize("messages, message", [
    ([], "[] is too short - 'messages'"),
    (None, "'messages' is a required property"),
    ("hi", "invalid type for 'messages' field: string"),
    ([{"content": "x"}], "invalid message format: each message needs a string 'role'"),
    ([{"role": "user", "content": None}], "invalid message content type: <nil>"),
    ([{"role": "user", "content": 1.5}], "invalid message content type: float64"),
    ([{"role": "user", "content": [{"type": "video", "video": "x"}]}], "invalid message format"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
     "image URLs are not currently supported, please use base64 encoded data instead"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,QQ=="}}]}],
     "invalid image input"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!"}}]}],
     "invalid image input"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]}],
     "invalid tool call arguments"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}],
     "invalid tool call arguments"),
])
def test_messages_rejected_with_400(messages, message) -> None:
    with pytest.raises(APIError) as exc:
        native_messages(messages)
    assert _status(exc) == 400 and exc.value.message == message


# ----------------------------------------------------------------------------- tool_choice, format, stop
def test_tool_choice_values() -> None:
    tools = [WEATHER, CLOCK]
    assert parse_tool_choice(None, tools) == ToolChoice("auto")
    assert parse_tool_choice(None, None) == ToolChoice("auto")
    assert parse_tool_choice("none", tools) == ToolChoice("none")
    assert parse_tool_choice("required", tools).forced
    named = parse_tool_choice({"type": "function", "function": {"name": "get_time"}}, tools)
    assert named == ToolChoice("function", "get_time") and named.forced
    assert not parse_tool_choice("auto", tools).forced


@pytest.mark.parametrize("value, tools, fragment", [
    ("always", [WEATHER], "invalid tool_choice"),
    ("required", None, "requires 'tools'"),
    ({"type": "function", "function": {"name": "get_time"}}, [WEATHER], "not in 'tools'"),
    ({"type": "function"}, [WEATHER], "invalid tool_choice"),
    (3, [WEATHER], "invalid type for 'tool_choice'"),
])
def test_tool_choice_rejected(value, tools, fragment) -> None:
    with pytest.raises(APIError) as exc:
        parse_tool_choice(value, tools)
    assert _status(exc) == 400 and fragment in exc.value.message


def test_response_format_mapping() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert ollama_format(None) is None
    assert ollama_format({"type": "text"}) is None
    assert ollama_format({"type": "json_object"}) == "json"
    assert ollama_format({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}) == schema
    for bad in ({"type": "xml"}, {"type": "json_schema", "json_schema": {}}, "json"):
        with pytest.raises(APIError) as exc:
            ollama_format(bad)
        assert _status(exc) == 400


def test_stop_values() -> None:
    assert stop_list(None) is None
    assert stop_list("\n") == ["\n"]
    assert stop_list(["a", "b"]) == ["a", "b"]
    with pytest.raises(APIError, match="invalid type for 'stop' field: float64"):
        stop_list(["a", 1])
    with pytest.raises(APIError, match="invalid type for 'stop' field: bool"):
        stop_list(True)


def test_base64_is_little_endian_float32() -> None:
    vector = [0.5, -1.25, 3.0e-3, 0.0]
    raw = base64.b64decode(float32_base64(vector))
    assert len(raw) == 16
    assert struct.unpack("<4f", raw) == pytest.approx(vector, rel=1e-7)
    assert raw[:4] == b"\x00\x00\x00\x3f"  # 0.5 in little-endian IEEE 754


# ----------------------------------------------------------------------------- forced tool-call grammar
class _Vocab:
    """The bundled model's vocabulary, loaded vocab-only: enough to run llama.cpp's grammar sampler."""

    def __init__(self, path: Path) -> None:
        params = L.llama_model_default_params()
        params.vocab_only = True
        self.model = L.llama_model_load_from_file(str(path).encode(), params)
        assert self.model, path
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        # Every token with the same logit; copied fresh for each step since the sampler edits it.
        fresh = (L.llama_token_data * self.n_vocab)()
        for i in range(self.n_vocab):
            fresh[i].id = i
        self._fresh = bytes(fresh)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        buf = (ctypes.c_int32 * (len(data) + 8))()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, False)
        assert n >= 0
        return list(buf[:n])

    def accepts(self, grammar: str, text: str) -> bool:
        """Whether the grammar lets the model write exactly ``text`` and then stop."""
        sampler = L.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        assert sampler, "grammar does not parse"
        try:
            for token in [*self.tokenize(text), L.llama_vocab_eos(self.vocab)]:
                if not self._allowed(sampler, token):
                    return False
                if token != L.llama_vocab_eos(self.vocab):
                    L.llama_sampler_accept(sampler, token)
            return True
        finally:
            L.llama_sampler_free(sampler)

    def _allowed(self, sampler, token: int) -> bool:
        items = (L.llama_token_data * self.n_vocab).from_buffer_copy(self._fresh)
        array = L.llama_token_data_array(items, self.n_vocab, -1, False)
        L.llama_sampler_apply(sampler, ctypes.byref(array))
        return items[token].logit != float("-inf")

    def close(self) -> None:
        L.llama_model_free(self.model)


@pytest.fixture(scope="module")
def vocab(smollm2_gguf: Path) -> Iterator[_Vocab]:
    v = _Vocab(smollm2_gguf)
    yield v
    v.close()


@pytest.mark.parametrize("tag, text", [
    ("<tool_call>", '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'),
    ("<tool_call>", '<tool_call>\n{"name":"get_time","arguments":{}}\n</tool_call>'),
    ("{", '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}'),
    ("[TOOL_CALLS]", '[TOOL_CALLS]{"name": "get_time", "arguments": {"tz": "UTC"}}'),
    ("[", '[{"name": "get_time", "arguments": {}}]'),
])
def test_forced_call_grammar_accepts_calls_the_parser_reads(vocab: _Vocab, tag: str, text: str) -> None:
    grammar = grammar_for_tool_call([WEATHER, CLOCK], tag)
    assert vocab.accepts(grammar, text)
    parser = ToolCallParser([WEATHER, CLOCK], tag)
    calls = list(parser.feed(text).calls) + list(parser.flush().calls)
    assert len(calls) == 1
    expected = json.loads(text[text.index("{"): text.rindex("}") + 1])
    assert calls[0].function.name == expected["name"]
    assert dict(calls[0].function.arguments) == expected["arguments"]


@pytest.mark.parametrize("text", [
    "The weather is nice.",  # plain content is not a call
    '<tool_call>{"name": "get_weather", "arguments": {"days": 2}}</tool_call>',  # required city missing
    '<tool_call>{"name": "get_weather", "arguments": {"city": 5}}</tool_call>',  # wrong type
    '<tool_call>{"name": "launch", "arguments": {}}</tool_call>',  # unknown tool
    '<tool_call>{"name": "get_time", "arguments": {}}</tool_call><tool_call>',  # more after the call
])
def test_forced_call_grammar_rejects_everything_else(vocab: _Vocab, text: str) -> None:
    assert not vocab.accepts(grammar_for_tool_call([WEATHER, CLOCK], "<tool_call>"), text)


def test_named_tool_choice_grammar_admits_only_that_function(vocab: _Vocab) -> None:
    grammar = grammar_for_tool_call([WEATHER, CLOCK], "<tool_call>", only="get_time")
    assert vocab.accepts(grammar, '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    assert not vocab.accepts(grammar, '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>')
    with pytest.raises(FormatError):
        grammar_for_tool_call([WEATHER], "<tool_call>", only="get_time")
