"""The batching loop in process (no runner process around it), with the real SmolLM2: what each
``llama_decode`` is given."""

from __future__ import annotations

import threading

import llama_cpp as L
import pytest

from test_runner_process import MODEL, chat
from trillama.actors.runner import native
from trillama.actors.runner import protocol as P
from trillama.actors.runner.engine import Engine


@pytest.fixture
def engine_and_decodes(monkeypatch):
    """A running engine with 4 slots, and the sequence ids of every batch it decodes."""
    model = native.load_model(MODEL, n_gpu_layers=0, use_mmap=True)
    ctx = native.create_generation_context(model, n_ctx=512, n_parallel=4, n_batch=512, n_threads=1,
                                           flash_attn=None, kv_cache_type="f16")
    decodes: list[list[int]] = []
    real_decode = L.llama_decode

    def recording_decode(context, batch):
        decodes.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        return real_decode(context, batch)

    monkeypatch.setattr(L, "llama_decode", recording_decode)
    finished: dict[str, dict] = {}
    changed = threading.Condition()

    def emit(events: list) -> None:
        with changed:
            for event in events:
                if event[0] in (P.EV_DONE, P.EV_FAILED):
                    finished[event[1]] = event
            changed.notify_all()

    engine = Engine(model, ctx, n_ctx=512, n_parallel=4, n_batch=512, n_threads=1, emit=emit)
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()

    def run_all(prompts: dict[str, str]) -> None:
        for job_id, prompt in prompts.items():
            engine.submit((P.OP_GENERATE, engine.prepare(job_id, {"prompt": prompt, "temperature": 0.0,
                                                                   "num_predict": 6})))
        with changed:
            assert changed.wait_for(lambda: all(j in finished for j in prompts), timeout=120)
        assert all(finished[j][0] == P.EV_DONE for j in prompts)

    yield engine, decodes, run_all
    engine.stop()
    thread.join(timeout=30)
    engine.close()
    L.llama_free(ctx)
    model.close()


def test_every_batch_lists_its_sequences_in_increasing_order(engine_and_decodes):
    """With one KV stream per slot llama.cpp micro-batches only consecutive increasing sequence
    ids; a batch in another order is decoded in several passes (a third slower at 4 streams)."""
    engine, decodes, run_all = engine_and_decodes
    topics = ["the sea", "a dragon", "mountains", "a robot"]
    run_all({f"first-{i}": chat(f"Write about {t}.") for i, t in enumerate(topics)})
    assert [s.job for s in engine.slots] == [None] * 4
    # Follow-ups arrive in the reverse order: prefix reuse gives each its old slot, 3, 2, 1, 0.
    follow = {f"next-{i}": chat(f"Write about {topics[i]}.") + "Sure" for i in reversed(range(4))}
    decodes.clear()
    run_all(follow)
    for slot, topic in zip(engine.slots, topics):  # each follow-up went back to its first slot
        prompt = engine.model.tokenize(chat(f"Write about {topic}.") + "Sure", add_special=False)
        assert slot.cached[: len(prompt)] == prompt
    assert decodes
    for seqs in decodes:
        order = [seq for i, seq in enumerate(seqs) if i == 0 or seqs[i - 1] != seq]  # runs of a sequence
        assert order == sorted(set(order)), seqs
