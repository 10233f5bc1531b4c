"""Unit tests of the runner's pure-Python parts: text streaming, framing, prefix matching, messages."""

from __future__ import annotations

import io

import pytest

from trillama.actors.runner import protocol as P
from trillama.actors.runner.slots import common_prefix
from trillama.actors.runner.messages import GenerateJob, RunnerSpec, converter
from trillama.actors.runner.textstream import TextStream


def feed(stream: TextStream, chunks: list[bytes]) -> tuple[list[str], bool]:
    out = []
    for chunk in chunks:
        text, stopped = stream.push(chunk)
        out.append(text)
        if stopped:
            return out, True
    out.append(stream.flush())
    return out, False


def test_text_without_stops_passes_through():
    out, stopped = feed(TextStream(), [b"Hello", b" world"])
    assert out == ["Hello", " world", ""]
    assert not stopped


def test_incomplete_utf8_is_held_until_complete():
    snowman = "☃".encode()  # three bytes
    stream = TextStream()
    assert stream.push(b"a" + snowman[:1]) == ("a", False)
    assert stream.push(snowman[1:2]) == ("", False)
    assert stream.push(snowman[2:] + b"b") == ("☃b", False)


def test_incomplete_utf8_at_the_end_is_flushed_as_replacement():
    stream = TextStream()
    stream.push("é".encode()[:1])
    assert stream.flush() == "\ufffd"


def test_stop_string_across_tokens_truncates_and_never_leaks():
    out, stopped = feed(TextStream(("STOP",)), [b"abc S", b"T", b"OP", b"tail"])
    assert stopped
    assert "".join(out) == "abc "
    # the partial "S", "ST" were held back, not emitted and then contradicted
    assert out == ["abc ", "", ""]


def test_false_start_of_stop_string_is_released():
    out, stopped = feed(TextStream(("STOP",)), [b"ST", b"ART"])
    assert not stopped
    assert "".join(out) == "START"
    assert out[0] == ""  # "ST" could have become "STOP"


def test_earliest_of_several_stop_strings_wins():
    out, stopped = feed(TextStream(("world", "lo w")), [b"hello world"])
    assert stopped
    assert "".join(out) == "hel"


def test_stop_string_inside_a_single_token():
    out, stopped = feed(TextStream(("\n\n",)), [b"line\n\nmore"])
    assert stopped and out == ["line"]


def test_frames_round_trip_through_incremental_decoder():
    messages = [["p", "job", "tëxt", None], ["d", "job", {"context": [1, 2, 3]}], ["r", 7, [[0.5]]]]
    data = b"".join(P.encode_frame(m) for m in messages)
    decoder = P.FrameDecoder()
    got = []
    for i in range(0, len(data), 3):  # worst case: tiny reads that split headers and bodies
        got.extend(decoder.feed(data[i : i + 3]))
    assert got == messages
    assert decoder.pending_bytes == 0


def test_blocking_frame_reader_and_end_of_stream():
    stream = io.BytesIO(P.encode_frame(["stop"]) + P.encode_frame(["x", 1]))
    assert P.read_frame(stream) == ["stop"]
    assert P.read_frame(stream) == ["x", 1]
    assert P.read_frame(stream) is None


def test_truncated_frame_is_a_protocol_error():
    data = P.encode_frame(["gen", "a", {}])
    with pytest.raises(P.ProtocolError):
        P.read_frame(io.BytesIO(data[:-1]))


def test_oversized_frame_is_rejected():
    with pytest.raises(P.ProtocolError):
        P.FrameDecoder().feed(P.HEADER.pack(P.MAX_FRAME + 1))


@pytest.mark.parametrize(
    "a,b,expected",
    [
        ([], [1, 2], 0),
        ([1, 2, 3], [1, 2, 3], 3),
        ([1, 2, 3], [1, 2, 3, 4], 3),
        ([1, 2, 3, 4], [1, 2], 2),
        ([1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 9, 5, 6, 7], 3),
        ([5], [6], 0),
        (list(range(1000)), list(range(999)) + [0], 999),
    ],
)
def test_common_prefix(a, b, expected):
    assert common_prefix(a, b) == expected


def test_job_and_spec_survive_the_process_edge():
    job = GenerateJob(prompt="hi", stop=["a", "b"], grammar="root ::= \"x\"", num_ctx=64)
    assert job.stop == ("a", "b")
    assert converter.structure(converter.unstructure(job), GenerateJob) == job
    spec = RunnerSpec(model_path="/m.gguf", n_ctx=512, n_parallel=2, n_threads=1, adapters=["/a"])
    assert converter.structure(converter.unstructure(spec), RunnerSpec) == spec


def test_spec_and_job_validation():
    with pytest.raises(ValueError):
        RunnerSpec(model_path="/m", n_ctx=0, n_parallel=1, n_threads=1)
    with pytest.raises(ValueError):
        RunnerSpec(model_path="/m", n_ctx=8, n_parallel=1, n_threads=1, kv_cache_type="q5")
    with pytest.raises(ValueError):
        GenerateJob(top_logprobs=21)
