"""The bundled default model: created from the installed GGUF, with a template that speaks its format."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from test_store_store import tree

import trillama.bundled as bundled
from trillama.actors.prompt.inspector import GoTemplateInspector
from trillama.store import ModelStore, read_gguf_info
from trillama.store.templates import CHAT_FORMATS

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is 2+2?"},
]


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", templates=GoTemplateInspector())


def test_creates_smollm2_from_the_installed_gguf(store: ModelStore, smollm2_gguf: Path) -> None:
    assert bundled.bundled_gguf_path() == smollm2_gguf
    assert bundled.ensure_bundled_model(store) is True
    record = store.resolve("smollm2:135m")
    assert record.model_path.read_bytes() == smollm2_gguf.read_bytes()
    assert record.template == bundled.BUNDLED_TEMPLATE  # ChatML with tools, as Ollama's library model
    assert record.parameters == {"stop": ["<|im_start|>", "<|im_end|>"]}
    (license_text,) = record.license
    assert license_text.lstrip().startswith("Apache License\n") and "Version 2.0, January 2004" in license_text
    assert record.capabilities == ["completion", "tools"]
    assert record.details == {"parent_model": "SmolLM2-135M-Instruct.Q4_1.gguf", "format": "gguf",
                              "family": "llama", "families": ["llama"], "parameter_size": "134.52M",
                              "quantization_level": "Q4_1"}
    (entry,) = store.list_models()
    assert entry.name.display == "smollm2:135m"
    assert entry.details["context_length"] == 8192


def test_second_start_is_a_no_op(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bundled.ensure_bundled_model(store) is True
    before = tree(store.root)

    def must_not_be_called() -> Path:
        raise AssertionError("the package GGUF was looked at although the model exists")

    monkeypatch.setattr(bundled, "bundled_gguf_path", must_not_be_called)
    assert bundled.ensure_bundled_model(store) is False
    assert tree(store.root) == before


def test_existing_spelling_in_another_case_counts(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled.ensure_bundled_model(store)
    store.copy("smollm2:135m", "SmolLM2:135M")
    store.delete("smollm2:135m")  # the copy keeps the blobs
    monkeypatch.setattr(bundled, "bundled_gguf_path", lambda: None)
    assert bundled.ensure_bundled_model(store) is False


def test_missing_package_leaves_store_alone(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    before = tree(store.root)
    assert bundled.ensure_bundled_model(store) is False
    assert tree(store.root) == before


def _render_jinja(chat_template: str, messages: list[dict], bos: str = "", eos: str = "") -> str:
    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(chat_template).render(messages=messages, add_generation_prompt=True,
                                                 bos_token=bos, eos_token=eos)


def _render_go(template: str, messages: list[dict]) -> str:
    from trillama.actors.prompt.gotemplate import parse_template

    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    data = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return parse_template(template).execute(data)


def test_detected_template_renders_like_the_models_own(smollm2_gguf: Path) -> None:
    """The hand-written ChatML template must produce the same prompt as SmolLM2's Jinja template."""
    info = read_gguf_info(smollm2_gguf)
    expected = _render_jinja(info.chat_template or "", CONVERSATION)
    assert _render_go(CHAT_FORMATS["chatml"].template, CONVERSATION) == expected


def test_bundled_template_without_tools_renders_like_the_models_own(smollm2_gguf: Path) -> None:
    """Without tools the bundled template is plain ChatML: the prompt SmolLM2's own template makes."""
    info = read_gguf_info(smollm2_gguf)
    assert _render_go(bundled.BUNDLED_TEMPLATE, CONVERSATION) == _render_jinja(info.chat_template or "", CONVERSATION)
    without_system = CONVERSATION[1:]
    assert _render_go(bundled.BUNDLED_TEMPLATE, without_system) == _render_go(CHAT_FORMATS["chatml"].template,
                                                                              without_system)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_bundled_template_renders_tools_calls_and_results() -> None:
    from trillama.actors.prompt.capabilities import tool_call_tag
    from trillama.actors.prompt.messages import Message
    from trillama.actors.prompt.render import render_chat

    messages = [Message.from_json(m) for m in (
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "12 C and rain"},
    )]
    text = render_chat(bundled.BUNDLED_TEMPLATE, messages, tools=[WEATHER])
    assert text.startswith("<|im_start|>system\n\n# Tools\n")
    assert '<tools>\n{"type":"function","function":{"name":"get_weather"' in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city":"Oslo"}}\n'
            "</tool_call><|im_end|>\n") in text
    assert "<|im_start|>user\n<tool_response>\n12 C and rain\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tool_call_tag(bundled.BUNDLED_TEMPLATE) == "<tool_call>"


def test_default_model_calls_tools_on_v1_and_on_the_native_api(shared_server) -> None:
    """End to end on the store the server seeded itself: the bundled model calls a tool."""
    import json

    import httpx
    from openai import OpenAI

    server = shared_server
    oai = OpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=300)
    forced = oai.chat.completions.create(
        model="smollm2:135m", messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=[WEATHER], tool_choice="required", max_tokens=40, temperature=0)
    choice = forced.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)

    # the native `tools` field: earlier calls in the conversation (rendered by the template) show
    # the model the format, and its <tool_call> answer comes back as tool_calls
    history = []
    for city in ("Paris", "Rome"):
        history += [{"role": "user", "content": f"Weather in {city}?"},
                    {"role": "assistant", "content": "",
                     "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": city}}}]}]
    body = {"model": "smollm2:135m", "stream": False, "tools": [WEATHER],
            "options": {"temperature": 0, "num_predict": 30},
            "messages": [{"role": "system", "content": "Always answer by calling a function."}, *history,
                         {"role": "user", "content": "Weather in Oslo?"}]}
    with httpx.Client(base_url=server.base_url, timeout=300) as http:
        reply = http.post("/api/chat", json=body).json()
    calls = reply["message"].get("tool_calls")
    assert calls, reply
    assert calls[0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}
    assert reply["message"]["content"] == ""
