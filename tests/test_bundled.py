"""The bundled default model: created from the installed GGUF, with a template that speaks its format."""

from __future__ import annotations

import hashlib
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
    assert record.template == CHAT_FORMATS["chatml"].template  # autodetected from the chat template
    assert record.parameters == {"stop": ["<|im_start|>", "<|im_end|>"]}
    assert record.license == ["apache-2.0"]
    assert record.capabilities == ["completion"]
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


def test_gemma3_without_chat_template_gets_the_gemma3_format(gemma3_gguf: Path) -> None:
    """This Gemma 3 GGUF ships no chat template; its architecture alone picks the format."""
    from trillama.store.templates import detect_chat_format

    info = read_gguf_info(gemma3_gguf)
    assert info.chat_template is None and info.architecture == "gemma3"
    fmt = detect_chat_format(info.chat_template, info.architecture)
    assert fmt is not None and fmt.name == "gemma3-instruct"
    # Gemma 3's published format: no system role, the system text opens the first user turn;
    # BOS is added by the tokenizer, not the template.
    assert _render_go(fmt.template, CONVERSATION) == (
        "<start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_blob_is_the_package_file(store: ModelStore, smollm2_gguf: Path) -> None:
    bundled.ensure_bundled_model(store)
    digest = "sha256:" + hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()
    assert store.has_blob(digest)
