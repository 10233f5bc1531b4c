"""What the coding agents need, without a server: system messages inside a conversation, the
provider-tool rule, Claude Code's and Codex's tool shapes, prompts longer than the context, and
how ``trillama launch`` sizes the agent's context."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio

from trillama.cli import launch
from trillama.actors.prompt.toolcalls import ToolCallParser
from trillama.actors.runner.messages import Done
from trillama.api.anthropic.errors import to_api_error
from trillama.api.anthropic.reply import stop_reason
from trillama.api.anthropic.run import Finish
from trillama.api.anthropic.translate import ToolEvents, native_messages, parse_tool_choice, tool_set
from trillama.api.context_limit import (
    EXACT_CHARS,
    PIECE_CHARS,
    ContextExceeded,
    _pieces,
    context_full,
    count_text_tokens,
    native_message,
)
from trillama.api.errors import APIError
from trillama.api.openai.chat import Delta
from trillama.api.openai.common import OpenAIError, check_n, context_error
from trillama.api.openai.responses_input import chat_tool_choice, input_messages
from trillama.api.openai.responses_output import ReplyContext, ResponseBuilder
from trillama.api.openai.responses_tools import call_item, response_tools
from trillama.api.system_messages import render_conversation

from agent_clients import GEMMA_TOOLS_TEMPLATE


# ----------------------------------------------------------------------------- system messages
class _Name:
    display = "m:latest"


@attrs.frozen
class _Info:
    chat_template: str | None = None
    eos_token: str = ""


@attrs.frozen
class _Record:
    """Just what prompt rendering reads from a stored model."""

    template: str | None = None
    chat_template: str | None = None
    system: str | None = None
    messages: tuple = ()
    capabilities: tuple[str, ...] = ("completion", "tools")
    name: Any = _Name()

    def gguf_info(self) -> _Info:
        return _Info(self.chat_template)


async def _count(text: str, limit: int) -> list[int] | None:
    return [0] * len(text) if len(text) <= limit else None


def _render(record: _Record, messages: list[dict[str, Any]]) -> str:
    async def main() -> str:
        prompt = await render_conversation(record, messages, tools=None, think=None, truncate=False,
                                           num_ctx=1 << 20, count_tokens=_count)
        return prompt.text
    return trio.run(main)


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "First question"},
                {"role": "assistant", "content": "First answer"},
                {"role": "system", "content": "From now on, answer in French."},
                {"role": "user", "content": "Second question"}]

#: Renders only ``.System`` (every system message joined, as Ollama does) and skips system turns.
SYSTEM_ON_TOP = """{{ if .System }}<sys>{{ .System }}</sys>{{ end }}{{ range .Messages }}{{ if ne .Role "system" }}<{{ .Role }}>{{ .Content }}</{{ .Role }}>{{ end }}{{ end }}<assistant>"""
#: Shows no system prompt at all.
NO_SYSTEM = """{{ range .Messages }}{{ if ne .Role "system" }}<{{ .Role }}>{{ .Content }}</{{ .Role }}>{{ end }}{{ end }}<assistant>"""
#: A GGUF chat template that refuses a system message anywhere but first (as many do).
STRICT_JINJA = """{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}{{ raise_exception('System message must be at the beginning.') }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}<assistant>"""


def test_a_system_message_stays_where_it_stands_when_the_template_shows_it_there() -> None:
    text = _render(_Record(template=GEMMA_TOOLS_TEMPLATE), CONVERSATION)
    assert text.index("First answer") < text.index("answer in French") < text.index("Second question")


def test_a_template_with_only_a_system_prompt_shows_it_there() -> None:
    text = _render(_Record(template=SYSTEM_ON_TOP), CONVERSATION)
    assert text.startswith("<sys>Be brief.\n\nFrom now on, answer in French.</sys><user>First question")


def test_a_template_that_refuses_it_gets_it_in_the_system_prompt() -> None:
    record = _Record(template=None, chat_template=STRICT_JINJA)
    with pytest.raises(Exception, match="System message must be at the beginning"):  # as sent: refused
        trio.run(lambda: _build_plain(record, CONVERSATION))
    text = _render(record, CONVERSATION)
    assert text.startswith("<system>Be brief.\n\nFrom now on, answer in French.</system><user>First question")


def test_a_template_without_a_system_prompt_gets_it_in_front_of_the_first_user_message() -> None:
    text = _render(_Record(template=NO_SYSTEM), CONVERSATION)
    assert text.startswith("<user>Be brief.\n\nFrom now on, answer in French.\n\nFirst question</user>")


def test_a_system_message_last_is_kept() -> None:
    messages = CONVERSATION[1:3] + [{"role": "system", "content": "Summarise the conversation."}]
    for record in (_Record(template=GEMMA_TOOLS_TEMPLATE), _Record(template=SYSTEM_ON_TOP),
                   _Record(chat_template=STRICT_JINJA), _Record(template=NO_SYSTEM)):
        assert "Summarise the conversation." in _render(record, messages)


async def _build_plain(record: _Record, messages: list[dict[str, Any]]) -> str:
    from trillama.api.prompting import build_chat_prompt

    return (await build_chat_prompt(record, messages, tools=None, think=None, truncate=False, num_ctx=1 << 20,
                                    count_tokens=_count)).text


# ----------------------------------------------------------------------------- Claude Code's messages
def test_claude_codes_system_messages_become_native_system_messages_in_place() -> None:
    out = native_messages([
        {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": [{"type": "text", "text": "# Environment\ncwd: /w",
                                        "cache_control": {"type": "ephemeral"}}]},
    ], [{"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}])
    assert out == [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": "Hi"},
                   {"role": "system", "content": "# Environment\ncwd: /w"}]
    assert native_messages([{"role": "system", "content": "a"}, {"role": "user", "content": "b"},
                            {"role": "system", "content": "c"}])[2] == {"role": "system", "content": "c"}


def test_documents_and_search_results_are_text() -> None:
    out = native_messages([{"role": "user", "content": [
        {"type": "document", "title": "Notes", "source": {"type": "text", "media_type": "text/plain", "data": "x=1"}},
        {"type": "search_result", "source": "https://e.x", "title": "T", "content": [{"type": "text", "text": "y"}]},
    ]}])
    assert out == [{"role": "user", "content": "Notes\n\nx=1\n\nT — https://e.x\ny"}]
    with pytest.raises(APIError, match="messages.0.content.0.source: document source type 'base64'"):
        native_messages([{"role": "user", "content": [
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]}])


@pytest.mark.parametrize(("messages", "path", "expected"), [
    ([{"role": "user", "content": [{"type": "container_upload", "file_id": "f"}]}], "messages.0.content.0",
     "'text', 'image', 'document', 'search_result', 'tool_result'"),
    ([{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s", "name": "web_search"}]}],
     "messages.0.content.0", "'text', 'tool_use', 'thinking', 'redacted_thinking'"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": [{"type": "image", "source": {}}]}],
     "messages.1.content.0", "'text', 'tool_addition', 'tool_removal'"),
])
def test_unknown_block_types_are_refused_in_anthropics_words(messages, path, expected) -> None:
    with pytest.raises(APIError) as caught:
        native_messages(messages)
    kind = (messages[-1]["content"][0]["type"])
    assert caught.value.status == 400
    assert caught.value.message == (f"{path}: Input tag '{kind}' found using 'type' does not match any of the "
                                    f"expected tags: {expected}")


WEATHER = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}
CLOCK = {"name": "get_time", "input_schema": {"type": "object"}}


def _names(tools: list[dict[str, Any]] | None) -> list[str]:
    return [t["function"]["name"] for t in tools or ()]


def test_the_provider_tool_rule_on_the_anthropic_route() -> None:
    offered = tool_set([WEATHER, {"type": "web_search_20250305", "name": "web_search", "max_uses": 2},
                        {"type": "code_execution_20250825", "name": "code_execution"},
                        {"type": "bash_20250124", "name": "bash"},
                        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}])
    assert _names(offered.tools) == ["get_weather", "bash", "str_replace_based_edit_tool"]
    assert offered.left_out == ("web_search", "code_execution")
    bash = offered.tools[1]["function"]
    assert bash["parameters"]["properties"]["command"]["type"] == "string"  # the documented input
    with pytest.raises(APIError, match="'web_search' is a server tool"):
        parse_tool_choice({"type": "tool", "name": "web_search"}, offered.tools, offered.left_out)
    with pytest.raises(APIError, match="tools.0.type: unknown tool type 'hologram_2030'"):
        tool_set([{"type": "hologram_2030", "name": "h"}])


def test_deferred_tools_are_shown_once_a_tool_search_loads_them() -> None:
    deferred = {**CLOCK, "defer_loading": True}
    assert _names(tool_set([WEATHER, deferred]).tools) == ["get_weather"]
    events = ToolEvents()
    native_messages([
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "ToolSearch",
                                           "input": {"query": "time"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "tool_reference", "tool_name": "get_time"}]}]},
    ], None, events)
    assert events.referenced == {"get_time"}
    assert _names(tool_set([WEATHER, deferred], events).tools) == ["get_weather", "get_time"]


def test_tools_added_and_removed_mid_conversation() -> None:
    events = ToolEvents()
    native_messages([
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [
            {"type": "tool_addition", "tool": {"type": "tool_definition", "definition": CLOCK}},
            {"type": "tool_removal", "tool": {"type": "tool_reference", "name": "get_weather"}}]},
    ], None, events)
    assert _names(tool_set([WEATHER], events).tools) == ["get_time"]


# ----------------------------------------------------------------------------- prompt longer than the context
def test_long_texts_are_counted_in_pieces_cut_at_line_starts() -> None:
    text = ("word " * 30 + "\n\n  indented\n" + "x" * 50 + "\n") * 3000
    pieces = _pieces(text)
    assert "".join(pieces) == text and len(pieces) > 1
    assert all(len(p) <= PIECE_CHARS for p in pieces)
    assert all(p.endswith("\n") and not p.endswith("\n\n") for p in pieces[:-1])
    unbroken = "y" * (PIECE_CHARS * 2 + 5)
    assert "".join(_pieces(unbroken)) == unbroken


class _Facts:
    add_bos = True


class _Runner:
    facts = _Facts()


class _Actor:
    runner = _Runner()


class _Lease:
    """Tokenizes one character per token; BOS is token 1."""

    actor = _Actor()

    async def tokenize(self, text: str, max_tokens: int | None = None, add_special: bool = True):
        tokens = [ord(c) for c in text]
        return ([1] + tokens) if add_special else tokens


def test_counting_is_exact_far_beyond_any_context_and_estimated_past_that() -> None:
    text = "abc\ndef\n" * (PIECE_CHARS // 4)
    assert trio.run(count_text_tokens, _Lease(), text) == (len(text) + 1, True)  # + BOS
    huge = "abcdefg\n" * (EXACT_CHARS // 4)  # twice what is counted
    assert trio.run(count_text_tokens, _Lease(), huge) == (len(huge) + 1, False)


def test_context_exceeded_reads_in_each_protocols_words() -> None:
    exc = ContextExceeded(400, native_message(81234, 32768, 32768), tokens=81234, limit=32768, trained=32768)
    assert exc.message.startswith("the prompt is longer than the context length: 81234 tokens, and the model's "
                                  "context is 32768 tokens")
    assert "trained maximum" in exc.message
    assert to_api_error(exc).message == "prompt is too long: 81234 tokens > 32768 maximum"
    chat = context_error(exc, "/v1/chat/completions")
    assert (chat.status, chat.code, chat.param) == (400, "context_length_exceeded", "messages")
    assert "maximum context length is 32768 tokens" in chat.message and "81234 tokens" in chat.message
    responses = context_error(exc, "/v1/responses")
    assert (responses.code, responses.param) == ("context_length_exceeded", "input")
    smaller = native_message(9000, 4096, 32768)
    for setting in ("OLLAMA_CONTEXT_LENGTH", "PARAMETER num_ctx", "options.num_ctx", "32768"):
        assert setting in smaller


def _finish(reason: str, eval_count: int, num_predict: int | None) -> Finish:
    done = Done(done_reason=reason, prompt_eval_count=10, prompt_eval_duration_ns=1, eval_count=eval_count,
                eval_duration_ns=1, context=[], cached_count=0)
    return Finish(done=done, context_full=context_full(done, num_predict))


def test_a_full_context_is_model_context_window_exceeded_not_max_tokens() -> None:
    assert stop_reason(_finish("length", 100, 1000), False) == "model_context_window_exceeded"
    assert stop_reason(_finish("length", 1000, 1000), False) == "max_tokens"
    assert stop_reason(_finish("stop", 5, 1000), False) == "end_turn"


def test_a_call_cut_off_is_known_to_be_one() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    parser = ToolCallParser(tools, "<tool_call>")
    parser.feed('<tool_call>{"name": "get_we')
    assert parser.in_call
    tag = ToolCallParser(tools, "<tool_call>")
    assert tag.feed("<tool_ca").content == "" and tag.in_call  # cut inside the tag itself
    whole = ToolCallParser(tools, "<tool_call>")
    whole.feed('<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>')
    assert not whole.in_call
    assert not ToolCallParser(tools, "<tool_call>").in_call


# ----------------------------------------------------------------------------- Codex's tools
CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
    {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents.", "tools": [
        {"type": "function", "name": "close_agent", "parameters": {"type": "object"}}]},
    {"type": "custom", "name": "apply_patch", "description": "Edit files.",
     "format": {"type": "grammar", "syntax": "lark", "definition": "start: \"*** Begin Patch\""}},
    {"type": "local_shell"},
    {"type": "web_search", "external_web_access": False},
]


def test_codex_tools_become_functions_and_hosted_ones_are_left_out() -> None:
    tools = response_tools(CODEX_TOOLS)
    assert _names(tools.chat) == ["exec_command", "multi_agent_v1__close_agent", "apply_patch", "local_shell"]
    assert tools.left_out == ("web_search",)
    patch = tools.chat[2]["function"]
    assert patch["parameters"]["required"] == ["input"] and "*** Begin Patch" in json.dumps(patch)
    with pytest.raises(OpenAIError) as caught:
        response_tools([{"type": "computer_use_preview"}])
    assert caught.value.param == "tools[0].type"
    with pytest.raises(OpenAIError, match="hosted tool"):
        chat_tool_choice({"type": "web_search"})
    assert chat_tool_choice({"type": "custom", "name": "apply_patch"}) == {"type": "function",
                                                                          "function": {"name": "apply_patch"}}


def test_calls_go_back_in_the_shape_codex_expects() -> None:
    shapes = response_tools(CODEX_TOOLS).shapes
    namespaced = call_item("call_1", "multi_agent_v1__close_agent", '{"target": "a"}', shapes)
    assert (namespaced["type"], namespaced["name"], namespaced["namespace"]) == ("function_call", "close_agent",
                                                                                 "multi_agent_v1")
    patch = call_item("call_2", "apply_patch", json.dumps({"input": "*** Begin Patch\n"}), shapes)
    assert (patch["type"], patch["name"], patch["input"]) == ("custom_tool_call", "apply_patch", "*** Begin Patch\n")
    shell = call_item("call_3", "local_shell", '{"command": ["ls"], "workdir": "/w"}', shapes)
    assert shell["type"] == "local_shell_call"
    assert shell["action"]["command"] == ["ls"] and shell["action"]["working_directory"] == "/w"
    plain = call_item("call_4", "exec_command", "{}", shapes)
    assert plain["type"] == "function_call" and "namespace" not in plain


def test_earlier_calls_sent_back_render_as_the_model_made_them() -> None:
    out = input_messages([
        {"type": "message", "role": "user", "content": "go"},
        {"type": "function_call", "call_id": "c1", "name": "close_agent", "namespace": "multi_agent_v1",
         "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "closed"},
        {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "custom_tool_call_output", "call_id": "c2", "output": "Done!"},
        {"type": "local_shell_call", "call_id": "c3", "status": "completed",
         "action": {"type": "exec", "command": ["ls"]}},
        {"type": "local_shell_call_output", "call_id": "c3", "output": "a.txt"},
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search"}},
    ])
    calls = [c["function"] for m in out for c in m.get("tool_calls", ())]
    assert [c["name"] for c in calls] == ["multi_agent_v1__close_agent", "apply_patch", "local_shell"]
    assert json.loads(calls[1]["arguments"]) == {"input": "*** Begin Patch"}
    assert [(m["tool_call_id"], m["content"]) for m in out if m["role"] == "tool"] == [
        ("c1", "closed"), ("c2", "Done!"), ("c3", "a.txt")]


def test_streamed_calls_and_reasoning_in_responses_shapes() -> None:
    shapes = response_tools(CODEX_TOOLS).shapes
    builder = ResponseBuilder(ReplyContext(id="resp_x", model="m", created_at=1, shapes=shapes,
                                           encrypted_reasoning=True, reasoning={"summary": "auto"}))
    events = builder.feed(Delta(reasoning="Let me think."))
    events += builder.feed(Delta(tool_calls=(
        {"id": "call_1", "index": 0, "type": "function",
         "function": {"name": "apply_patch", "arguments": json.dumps({"input": "*** Begin Patch"})}},
        {"id": "call_2", "index": 1, "type": "function",
         "function": {"name": "multi_agent_v1__close_agent", "arguments": "{}"}})))
    kinds = [e["type"] for e in events]
    assert "response.custom_tool_call_input.delta" in kinds and "response.reasoning_summary_text.done" in kinds
    reasoning, patch, close = builder.output
    assert reasoning["encrypted_content"] == "Let me think."
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    assert (patch["type"], patch["input"]) == ("custom_tool_call", "*** Begin Patch")
    assert (close["name"], close["namespace"]) == ("close_agent", "multi_agent_v1")


def test_n_is_answered_with_one_choice_as_ollama_does() -> None:
    check_n(3)  # no 400 any more
    check_n(None)


# ----------------------------------------------------------------------------- launch sizes the context
def test_launch_aims_for_64k_within_the_trained_context() -> None:
    claude, codex = launch.INTEGRATIONS["claude"], launch.INTEGRATIONS["codex"]
    assert launch.choose_context(claude, "gemma3:270m", 32768, 0) == (32768, "")
    assert launch.choose_context(codex, "qwen3:8b", 40960, 0) == (40960, "")
    assert launch.choose_context(codex, "big", 131072, 0) == (65536, "")
    assert launch.choose_context(codex, "big", 131072, 100000) == (100000, "")  # its Modelfile's larger one
    assert launch.choose_context(codex, "big", 131072, 0, asked=16384) == (16384, "")
    num_ctx, warning = launch.choose_context(claude, "smollm2:135m", 8192, 0)
    assert num_ctx == 8192
    assert "too small for Claude Code" in warning and "8192" in warning and "32768" in warning
    num_ctx, warning = launch.choose_context(codex, "gemma3:270m", 32768, 0, asked=65536)
    assert num_ctx == 32768 and "trained with a context of 32768" in warning


def test_derived_model_names_say_the_context() -> None:
    assert launch.derived_name("gemma3:270m", 32768) == "gemma3:270m-ctx32k"
    assert launch.derived_name("gemma3-agent", 32768) == "gemma3-agent:ctx32k"
    assert launch.derived_name("host:5000/ns/m:q4", 65536) == "host:5000/ns/m:q4-ctx64k"


def test_each_agent_is_told_the_real_window() -> None:
    env = dict(launch.plan_for("claude", "m", "http://h:1", (), 32768).env)
    assert env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "32768"
    assert env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "8192"
    argv = launch.plan_for("codex", "m", "http://h:1", (), 32768).argv
    assert "model_context_window=32768" in argv
    config = json.loads(dict(launch.plan_for("opencode", "m", "http://h:1", (), 32768).env)["OPENCODE_CONFIG_CONTENT"])
    assert config["provider"]["trillama"]["models"]["m"]["limit"] == {"context": 32768, "output": 8192}
