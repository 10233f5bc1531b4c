"""Prefixes shared across slots and the prompt cache, in the real batching loop (no process
around it): where each job's reused prefix came from, and that greedy output is token for token
what it is when everything is computed afresh."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import llama_cpp as L
import pytest

from test_runner_process import MODEL as SMOLLM
from trillama.actors.runner import native
from trillama.actors.runner import protocol as P
from trillama.actors.runner.engine import Engine
from trillama.actors.runner.prompt_cache import DiskTier, PromptCache

GEMMA = Path.home() / ".cache" / "trillama-tests" / "gemma-3-270m-q4_k_m.gguf"


def words(seed: int, n: int) -> str:
    rng = random.Random(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "seven", "green", "tool",
             "parse", "file", "return", "value", "north", "quiet", "table", "light", "paper", "order"]
    return " ".join(rng.choice(vocab) for _ in range(n))


native.install_log_callback(False)


class Harness:
    """An engine on its own thread; ``run`` submits jobs and waits for their final events."""

    def __init__(self, model_path: Path, *, n_parallel: int, cache: PromptCache | None, n_park: int = 0,
                 share_prefixes: bool = True) -> None:
        self.model = native.load_model(model_path, n_gpu_layers=0, use_mmap=True)
        self.ctx = native.create_generation_context(self.model, n_ctx=2048, n_parallel=n_parallel, n_batch=512,
                                                    n_threads=2, flash_attn=None, kv_cache_type="f16", n_park=n_park)
        self.finished: dict[str, list] = {}
        self.changed = threading.Condition()
        self.engine = Engine(self.model, self.ctx, n_ctx=2048, n_parallel=n_parallel, n_batch=512, n_threads=2,
                             emit=self._emit, cache=cache, n_park=n_park,
                             share_prefixes=share_prefixes)
        self.thread = threading.Thread(target=self.engine.run, daemon=True)
        self.thread.start()

    def _emit(self, events: list) -> None:
        with self.changed:
            for event in events:
                if event[0] in (P.EV_DONE, P.EV_FAILED):
                    self.finished[event[1]] = event
            self.changed.notify_all()

    def submit(self, job_id: str, prompt: str, num_predict: int = 8) -> None:
        spec = {"prompt": prompt, "temperature": 0.0, "num_predict": num_predict, "draft_max": 0}
        self.engine.submit((P.OP_GENERATE, self.engine.prepare(job_id, spec)))

    def wait(self, *job_ids: str) -> list[dict]:
        with self.changed:
            assert self.changed.wait_for(lambda: all(j in self.finished for j in job_ids), timeout=600)
        out = []
        for j in job_ids:
            event = self.finished[j]
            assert event[0] == P.EV_DONE, event
            out.append(event[2])
        return out

    def run(self, job_id: str, prompt: str, num_predict: int = 8) -> dict:
        self.submit(job_id, prompt, num_predict)
        return self.wait(job_id)[0]

    def close(self) -> None:
        self.engine.stop()
        self.thread.join(timeout=60)
        self.engine.close()
        L.llama_free(self.ctx)
        self.model.close()


def fresh_outputs(model_path: Path, prompts: dict[str, str]) -> dict[str, list[int]]:
    """Every prompt's greedy tokens computed from nothing (one slot, emptied before each job)."""
    harness = Harness(model_path, n_parallel=1, cache=None)
    try:
        out = {}
        for job_id, prompt in prompts.items():
            L.llama_memory_clear(harness.engine.mem, True)
            harness.engine.slots[0].cached.clear()
            done = harness.run(job_id, prompt)
            assert done["cached_count"] == 0
            out[job_id] = done["context"]
        return out
    finally:
        harness.close()


@pytest.fixture
def gemma():
    if not GEMMA.is_file():
        pytest.skip(f"missing {GEMMA}")
    harness = Harness(GEMMA, n_parallel=3, cache=PromptCache(2**30))
    yield harness
    harness.close()


def test_a_second_session_copies_the_shared_prefix_from_the_first_sessions_slot(gemma):
    """gemma3 has sliding-window layers: no saved states, but copies inside the KV cache are exact."""
    assert gemma.engine.placement.cache is None  # its states would not restore exactly (llama.cpp#25295)
    system = words(1, 300)
    prompts = {"s1": system + " first question: " + words(11, 150), "s2": system + " second question about stones",
               "s1b": None}
    first = gemma.run("s1", prompts["s1"])
    prompts["s1b"] = gemma.model.detokenize(first["context"]) + " and then?"
    second = gemma.run("s2", prompts["s2"])
    assert second["reuse"] == "copy" and second["cached_count"] >= 250
    assert second["prompt_eval_count"] < 20
    again = gemma.run("s1b", prompts["s1b"])  # session 1's history stayed in its own slot
    assert again["reuse"] == "slot" and again["cached_count"] >= len(first["context"]) - 2
    reference = fresh_outputs(GEMMA, prompts)
    for job_id, done in (("s1", first), ("s2", second), ("s1b", again)):
        assert done["context"] == reference[job_id], job_id


def test_sessions_that_start_together_compute_their_shared_prefix_once(gemma):
    system = words(2, 1000)  # more than one step of prefill: the others arrive while it runs
    prompts = {f"s{i}": system + f" question number {i} about {words(10 + i, 3)}" for i in range(3)}
    for job_id, prompt in prompts.items():
        gemma.submit(job_id, prompt)
    done = dict(zip(prompts, gemma.wait(*prompts)))
    computed = sum(d["prompt_eval_count"] for d in done.values())
    one_prompt = done["s0"]["prompt_eval_count"] + done["s0"]["cached_count"]
    assert computed < 1.2 * one_prompt  # without waiting for the leader: ~3x
    assert sorted(d["reuse"] for d in done.values()) == ["", "copy", "copy"]
    # The same burst on an engine that shares nothing. (Not against one-at-a-time runs: gemma3's
    # greedy output already depends on what else is in a batch, with or without any sharing.)
    plain = Harness(GEMMA, n_parallel=3, cache=None, share_prefixes=False)
    try:
        for job_id, prompt in prompts.items():
            plain.submit(job_id, prompt)
        reference = dict(zip(prompts, plain.wait(*prompts)))
    finally:
        plain.close()
    assert all(d["cached_count"] == 0 for d in reference.values())
    for job_id, d in done.items():
        assert d["context"] == reference[job_id]["context"], job_id


@pytest.mark.parametrize("tier,n_parallel", [("ram", 2), ("disk", 2), ("park", 2), ("park", 1)])
def test_a_session_whose_slot_was_taken_restores_its_prefix_from_the_cache(tmp_path, tier, n_parallel):
    """SmolLM2 (no sliding window): saved states restore exactly, in any slot, after a restart too.
    gemma3 (sliding window): its sequences are parked in spare KV streams instead — with one slot
    too (Ollama's default, where an agent's side request takes the slot between its turns)."""
    model = GEMMA if tier == "park" else SMOLLM
    disk = DiskTier(tmp_path, 2**31) if tier == "disk" else None
    harness = Harness(model, n_parallel=n_parallel, cache=PromptCache(2**30, disk),
                      n_park=2 if tier == "park" else 0)
    history = words(3, 400) + " so what do you say?"
    prompts = {"a": history, "x": words(4, 200), "y": words(5, 200), "a2": None}
    try:
        first = harness.run("a", history)
        prompts["a2"] = harness.model.detokenize(first["context"]) + " tell me more"
        harness.run("x", prompts["x"])
        harness.run("y", prompts["y"])  # both slots now hold other sequences: "a" was saved
        assert not any(s.cached[:50] == first["context"][:50] for s in harness.engine.slots)
        if tier == "disk":
            disk.flush()
            harness.close()  # a restart: a new cache that only has the files
            harness = Harness(SMOLLM, n_parallel=n_parallel, cache=PromptCache(2**30, DiskTier(tmp_path, 2**31)))
        if tier == "park":
            assert harness.engine.placement.cache is None and harness.engine.placement.parking is not None
        again = harness.run("a2", prompts["a2"])
        assert again["reuse"] == tier and again["cached_count"] >= len(first["context"]) - 2
        stats = harness.engine.placement.stats()
        assert stats[f"hits_{tier}"] == 1
    finally:
        harness.close()
    # The reference: the same two turns in one slot that nobody else took (no cache involved), so
    # a2's prefix was computed exactly as in the run above. (Against a2 computed from nothing,
    # gemma3's greedy output may differ, cache or no cache: llama.cpp's numbers depend on how a
    # token's batch was cut.)
    plain = Harness(model, n_parallel=1, cache=None)
    try:
        assert plain.run("a", prompts["a"])["context"] == first["context"]
        second = plain.run("a2", prompts["a2"])
        assert second["reuse"] == "slot" and second["cached_count"] == again["cached_count"]
        assert again["context"] == second["context"]
    finally:
        plain.close()
