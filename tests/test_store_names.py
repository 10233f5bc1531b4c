"""Model names: Ollama's grammar, defaults, validity rules and shortest display form."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from trillama.store.names import MISSING, InvalidName, ModelName


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("llama3", ("registry.ollama.ai", "library", "llama3", "latest")),
        ("llama3:8b", ("registry.ollama.ai", "library", "llama3", "8b")),
        ("me/llama3", ("registry.ollama.ai", "me", "llama3", "latest")),
        ("me/llama3:q4", ("registry.ollama.ai", "me", "llama3", "q4")),
        ("example.com/me/llama3:q4", ("example.com", "me", "llama3", "q4")),
        ("localhost:5000/me/m", ("localhost:5000", "me", "m", "latest")),
        ("localhost:5000/me/m:v1.2", ("localhost:5000", "me", "m", "v1.2")),
        ("http://localhost:5000/me/m:t", ("localhost:5000", "me", "m", "t")),
        ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
        ("Qwen2.5-Coder_x:1.5B-instruct", ("registry.ollama.ai", "library", "Qwen2.5-Coder_x", "1.5B-instruct")),
    ],
)
def test_parse_applies_defaults(text: str, parts: tuple[str, str, str, str]) -> None:
    assert ModelName.parse(text).parts == parts


def test_scheme_is_kept_but_not_part_of_identity() -> None:
    name = ModelName.parse("http://localhost:5000/me/m:t")
    assert name.scheme == "http"
    assert name == ModelName.parse("localhost:5000/me/m:t")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../x",
        "a/../b",
        "a:b:c",
        "m:",
        "/m",
        "ns/",
        "a/b/c/d",
        "-leading-dash",
        "bad name",
        "bad*char",
        "café",
        "ns.dots/model",  # dots are not allowed in a namespace
        "x" * 81,
        "m:" + "t" * 81,
        "n" * 81 + "/m",
        "h" * 351 + "/ns/m",
        "host/ns/m:t@sha256:abc",
    ],
)
def test_invalid_names(text: str) -> None:
    assert not ModelName.parse_lenient(text).is_valid
    with pytest.raises(InvalidName):
        ModelName.parse(text)


def test_length_limits_are_inclusive() -> None:
    assert ModelName.parse("x" * 80).model == "x" * 80
    assert ModelName.parse("m:" + "t" * 80).tag == "t" * 80
    assert ModelName.parse("h" * 350 + "/ns/m").host == "h" * 350


def test_empty_part_after_separator_is_missing_not_default() -> None:
    # "m:" must not silently become m:latest.
    assert ModelName.parse_lenient("m:").tag == MISSING
    assert ModelName.parse_lenient("/m").namespace == MISSING


def test_colon_in_host_does_not_start_a_tag() -> None:
    name = ModelName.parse("myhost:8080/ns/model")
    assert (name.host, name.tag) == ("myhost:8080", "latest")


@pytest.mark.parametrize(
    ("text", "display"),
    [
        ("llama3", "llama3:latest"),
        ("llama3:8b", "llama3:8b"),
        ("registry.ollama.ai/library/llama3:8b", "llama3:8b"),
        ("REGISTRY.OLLAMA.AI/Library/llama3:8b", "llama3:8b"),
        ("me/llama3", "me/llama3:latest"),
        ("example.com/library/m:t", "example.com/library/m:t"),
        ("example.com/me/m", "example.com/me/m:latest"),
    ],
)
def test_display_shortest(text: str, display: str) -> None:
    assert ModelName.parse(text).display == display


def test_manifest_relpath_has_one_level_per_part() -> None:
    assert ModelName.parse("me/m:t").manifest_relpath == PurePosixPath("registry.ollama.ai/me/m/t")
    with pytest.raises(InvalidName):
        ModelName.parse_lenient("a:b:c").manifest_relpath


def test_from_relpath_round_trip_and_rejects() -> None:
    name = ModelName.parse("example.com:5000/me/m:v1")
    assert ModelName.from_relpath(name.manifest_relpath) == name
    assert ModelName.from_relpath("registry.ollama.ai/library/m") is None  # three levels
    assert ModelName.from_relpath("registry.ollama.ai/library/m/.hidden") is None


def test_equal_fold() -> None:
    assert ModelName.parse("SmolLM2:135M").equal_fold(ModelName.parse("smollm2:135m"))
    assert not ModelName.parse("smollm2:135m").equal_fold(ModelName.parse("smollm2:360m"))
