"""GGUF metadata: synthetic files written with ``gguf.GGUFWriter``, and the real bundled model.

``write_tiny_gguf`` is also used by the other store and API tests: a few-kilobyte GGUF with a
real header is enough for everything the store does (create reads only the header).
"""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from trillama.store.errors import NotGGUF
from trillama.store.gguf_info import file_type_name, human_number, read_gguf_info

CHATML_JINJA = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    chat_template: str | None = CHATML_JINJA,
    file_type: int = 2,
    kind: str | None = None,
    vocab: int = 12,
    embedding: int = 8,
    pooling: bool = False,
    license: str | None = None,
    extra_tensor_elements: int = 0,
) -> Path:
    """A small but well-formed GGUF with the keys the store reads."""
    writer = gguf.GGUFWriter(path, arch)
    if kind:
        writer.add_type(kind)
    writer.add_name("tiny test model")
    writer.add_context_length(256)
    writer.add_embedding_length(embedding)
    writer.add_block_count(1)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(file_type)
    if license:
        writer.add_license(license)
    if pooling:
        writer.add_pooling_type(gguf.PoolingType.MEAN)
    tokens = ["<s>", "</s>"] + [f"t{i}" for i in range(vocab - 2)]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.zeros((vocab, embedding), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones((embedding,), dtype=np.float32))
    if extra_tensor_elements:
        writer.add_tensor("blk.0.extra.weight", np.zeros((extra_tensor_elements,), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def test_header_fields(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    assert info.architecture == "llama"
    assert info.context_length == 256
    assert info.embedding_length == 8
    assert info.block_count == 1
    assert (info.head_count, info.head_count_kv) == (2, 1)
    assert info.key_length == info.value_length == 4  # embedding / heads when not declared
    assert info.file_type == "Q4_0"
    assert info.bos_token == "<s>" and info.eos_token == "</s>"
    assert info.chat_template == CHATML_JINJA
    assert info.vocab_size == 12
    assert not info.has_pooling and not info.has_vision


def test_parameter_count_is_counted_from_tensors(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    # 12×8 embedding + 8 norm weights; Ollama ignores any declared count and sums the tensors.
    assert info.parameter_count == 12 * 8 + 8
    assert info.kv["general.parameter_count"] == 104
    assert info.parameter_size == "104"


def test_model_info_hides_long_arrays_unless_verbose(tiny_gguf: Path) -> None:
    info = read_gguf_info(tiny_gguf)
    short = info.model_info()
    assert "general.name" not in short and "tokenizer.chat_template" not in short
    assert short["tokenizer.ggml.tokens"] == []  # 12 entries > 5
    assert short["llama.context_length"] == 256
    assert short["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # float32 shown shortest
    assert not any(key.startswith("GGUF.") for key in short)
    verbose = info.model_info(verbose=True)
    assert verbose["tokenizer.ggml.tokens"][:3] == ["<s>", "</s>", "t0"]


def test_short_arrays_are_kept(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "five.gguf", vocab=5)
    assert read_gguf_info(path).model_info()["tokenizer.ggml.tokens"] == ["<s>", "</s>", "t0", "t1", "t2"]


def test_tensors_listed_with_type_and_shape(tiny_gguf: Path) -> None:
    tensors = read_gguf_info(tiny_gguf).tensors
    assert tensors[0] == {"name": "token_embd.weight", "type": "F32", "shape": [8, 12]}
    assert tensors[1]["name"] == "output_norm.weight"


def test_embedding_model_and_kinds(tmp_path: Path) -> None:
    assert read_gguf_info(write_tiny_gguf(tmp_path / "e.gguf", pooling=True)).has_pooling
    adapter = read_gguf_info(write_tiny_gguf(tmp_path / "a.gguf", kind="adapter"))
    assert adapter.is_adapter and not adapter.is_projector


def test_not_gguf(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not a model")
    with pytest.raises(NotGGUF, match="supplied file was not in GGUF format"):
        read_gguf_info(text)
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(NotGGUF):
        read_gguf_info(damaged)


def test_cache_follows_file_changes(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", arch="llama")
    assert read_gguf_info(path).architecture == "llama"
    write_tiny_gguf(path, arch="qwen2")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000))
    assert read_gguf_info(path).architecture == "qwen2"


@pytest.mark.parametrize(
    ("count", "text"),
    [(999, "999"), (1_000, "1K"), (134_515_008, "134.52M"), (137_000_000, "137M"),
     (494_032_768, "494.03M"), (3_212_749_888, "3.2B"), (8_000_000_000, "8B")],
)
def test_human_number(count: int, text: str) -> None:
    assert human_number(count) == text


def test_file_type_names() -> None:
    assert file_type_name(15) == "Q4_K_M"
    assert file_type_name(1) == "F16"
    assert file_type_name(0) == "unknown"  # Ollama reads 0 (F32) as "not set"
    assert file_type_name(None) == "unknown"


def test_real_bundled_model(smollm2_gguf: Path) -> None:
    info = read_gguf_info(smollm2_gguf)
    assert info.architecture == "llama"
    assert info.parameter_size == "134.52M"  # what Ollama shows for smollm2:135m
    assert info.file_type == "Q4_1"
    assert info.context_length == 8192 and info.embedding_length == 576
    assert info.bos_token == "<|im_start|>" and info.eos_token == "<|im_end|>"
    assert "<|im_start|>" in (info.chat_template or "")
    assert len(info.tensors) == 272
