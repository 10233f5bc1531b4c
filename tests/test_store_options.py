"""The shared option table: request ``options`` validation and Go-style value formatting."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from trillama.gofmt import format_go_time, go_float32, go_g, go_json, go_quote, go_sharp_v, go_v
from trillama.store.options import OPTION_TYPES, RUNNER_OPTIONS, OptionError, coerce_options, parse_parameter


def test_table_matches_ollama_option_list() -> None:
    ollama = {
        "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict",
        "num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n",
        "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty", "stop",
    }
    trillama_only = {"num_parallel", "draft_max"}  # per-model slots (ollama#8842), speculation
    assert set(OPTION_TYPES) == ollama | trillama_only
    assert "num_ctx" in RUNNER_OPTIONS and "num_parallel" in RUNNER_OPTIONS
    assert "temperature" not in RUNNER_OPTIONS
    assert "draft_max" not in RUNNER_OPTIONS  # per request: no reload


def test_coerce_keeps_known_and_drops_unknown_and_null() -> None:
    out = coerce_options({"temperature": 1, "num_ctx": 2048.9, "stop": ["a"], "pi": 3.14, "seed": None,
                          "use_mmap": True})
    assert out == {"temperature": 1.0, "num_ctx": 2048, "stop": ["a"], "use_mmap": True}
    assert isinstance(out["temperature"], float) and isinstance(out["num_ctx"], int)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_ctx": "4096"}, 'option "num_ctx" must be of type integer'),
        ({"num_ctx": True}, 'option "num_ctx" must be of type integer'),
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
        ({"stop": "x"}, 'option "stop" must be of type array'),
        ({"stop": ["x", 1]}, 'option "stop" must be of an array of strings'),
    ],
)
def test_coerce_errors(options: dict, message: str) -> None:
    with pytest.raises(OptionError) as err:
        coerce_options(options)
    assert err.value.message == message


def test_parse_parameter_types() -> None:
    assert parse_parameter("num_ctx", "-1") == -1
    assert parse_parameter("temperature", "1e-1") == 0.1
    assert parse_parameter("use_mmap", "T") is True
    assert parse_parameter("stop", "</s>") == ["</s>"]


@pytest.mark.parametrize(
    ("value", "text"),
    [(4096.0, "4096"), (0.7, "0.7"), (1e6, "1e+06"), (123456.0, "123456"), (1e-05, "1e-05"),
     (0.0001, "0.0001"), (-2.5, "-2.5"), (0.0, "0")],
)
def test_go_g(value: float, text: str) -> None:
    assert go_g(value) == text


def test_go_json_matches_go_encoder() -> None:
    assert go_json({"stop": ["<|im_end|>"], "b": 1, "a": 0.5}, sort_keys=True) == \
        b'{"a":0.5,"b":1,"stop":["\\u003c|im_end|\\u003e"]}\n'
    assert go_json([{"role": "user", "content": "a&b"}]) == b'[{"role":"user","content":"a\\u0026b"}]\n'
    assert go_json(1e-7, newline=False) == b"1e-7"
    assert go_json(100000.0, newline=False) == b"100000"
    assert go_json("é", newline=False) == '"é"'.encode()


def test_go_value_formats() -> None:
    assert go_sharp_v("<|im_end|>") == '"<|im_end|>"'
    assert go_sharp_v(0.7) == "0.7" and go_sharp_v(True) == "true" and go_sharp_v(4096) == "4096"
    assert go_v("text") == "text" and go_v(2048.0) == "2048"
    assert go_quote('a"b\\c\n\t\x01é') == '"a\\"b\\\\c\\n\\t\\x01é"'
    assert go_float32(0.1) == 0.1 and go_float32(1 / 3) == 0.33333334


def test_format_go_time() -> None:
    utc = datetime(2024, 5, 1, 10, 0, 0, 120000, tzinfo=timezone.utc)
    assert format_go_time(utc) == "2024-05-01T10:00:00.12Z"
    pdt = datetime(2024, 5, 1, 3, 0, 0, tzinfo=timezone(timedelta(hours=-7)))
    assert format_go_time(pdt) == "2024-05-01T03:00:00-07:00"


@pytest.mark.parametrize("value", [
    {"b": [1, 2.5, 1e21, 1e-7, -0.0], "a": "<tag> & \u2028 \ud800 \x01 \"q\""},
    ["x", None, True, 0.1, 123456789.0],
])
def test_store_json_and_template_json_agree(value):
    """One set of Go formatting primitives: the store's blobs and the ``json`` template function
    write the same bytes for the same (map-shaped) value."""
    from trillama.actors.prompt.govalues import json_marshal

    assert go_json(value, sort_keys=True, newline=False).decode() == json_marshal(value)
