"""Prompt-lookup speculative decoding in the batching loop: drafts change the cost, never the output.

The engine runs in process with the real SmolLM2 (as in test_runner_engine.py); every test runs
the same jobs with drafting off (``draft_max: 0``) and on, and compares what came out token for
token. Repetitive prompts make sure drafts are proposed *and confirmed*, so the verification path
really runs; the counters in the final event prove it.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter

import llama_cpp as L
import pytest

from test_runner_process import COUNTING, MODEL, chat
from trillama.actors.runner import native
from trillama.actors.runner import protocol as P
from trillama.actors.runner.drafting import Drafter, RowCost, best_length
from trillama.actors.runner.engine import Engine, JobError
from trillama.actors.structured import grammar_for_format

CODE = """def area(width, height):
    return width * height


def perimeter(width, height):
    return 2 * (width + height)


def describe(width, height):
    return f"{width} by {height}: area {area(width, height)}, perimeter {perimeter(width, height)}"
"""
# Raw prompts that SmolLM2-135M continues by copying (its chat answers to "repeat this" rarely do)
REWRITE = ("```python\n" + CODE + "```\n\nThe same file, with `describe` renamed to `summary`:\n\n```python\n"
           + CODE.replace("describe", "summary") + "```\n\nAnd once more, unchanged:\n\n```python\ndef area(")
QUOTE = "Pack my box with five dozen liquor jugs. " * 4 + "Pack my"
PROMPTS = {
    "counting": COUNTING,
    "rewrite": REWRITE,
    "quote": QUOTE,
    "story": chat("Write a short story about a lighthouse."),
    "list": "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday, Monday, Tuesday,",
}


# ----------------------------------------------------------------------------------- units
def test_drafter_proposes_what_followed_the_latest_occurrence():
    d = Drafter([1, 2, 3, 4, 5, 9, 9, 1, 2, 3], limit=8)
    assert d.propose(room=3, cost=0.1) == [4, 5, 9]  # the tail (1, 2, 3) was followed by 4 5 9
    d.append(7)  # tail (2, 3, 7): never seen, nor (3, 7)
    assert d.propose(room=3, cost=0.1) == []
    d = Drafter([5, 6, 5, 6, 5, 6], limit=8)
    assert d.propose(room=8, cost=0.1)[:2] == [5, 6]  # the latest earlier (5, 6) and what follows it


def test_drafter_skips_image_placeholders():
    d = Drafter([1, 2, -77, -77, 3, 1, 2], limit=8)
    assert d.propose(room=4, cost=0.1) == []  # (1, 2) was followed by an image


def test_draft_length_follows_acceptance_and_drops_to_zero():
    assert best_length(0.9, 0.1, 16) == 16  # 0.9**21 > 0.1: the limit decides
    assert best_length(0.9, 0.1, 64) == 21
    assert best_length(0.5, 0.1, 16) == 3  # 0.5**3 = 0.125 > 0.1 > 0.5**4
    assert best_length(0.1, 0.1, 16) == 0
    assert best_length(0.99, 0.1, 5) == 5  # never past the limit
    d = Drafter(list(range(10)) * 3, limit=8)
    first = len(d.propose(room=8, cost=0.1))
    assert first >= 2
    for _ in range(10):  # nothing confirmed: the length falls to zero
        d.verified(max(1, first), 0)
    assert d.rate < 0.1
    assert [d.propose(room=8, cost=0.1) for _ in range(64)] == [[]] * 64  # not one row spent
    for _ in range(10):  # confirmed again: drafts grow back
        d.verified(4, 4)
    assert len(d.propose(room=8, cost=0.1)) == 8


def _discouraged(tokens: list[int]) -> Drafter:
    d = Drafter(tokens, limit=8)
    for _ in range(30):
        d.verified(4, 0)
    assert d.rate < 0.05
    return d


def test_while_drafts_do_not_pay_the_shadow_draft_learns_from_the_generated_tokens():
    d = _discouraged(list(range(10)) * 3)  # the tail (…, 7, 8, 9) was followed by 0, 1, 2…
    rates = [d.rate]
    for step in range(40):  # the model goes on repeating the cycle, and the shadows say so
        draft = d.propose(room=8, cost=0.5)
        if draft:
            break
        d.append(step % 10)
        rates.append(d.rate)
    assert draft == [(step + i) % 10 for i in range(len(draft))] and len(draft) >= 1
    assert step < 30 and rates == sorted(rates) and rates[-1] > 0.5


def test_shadows_the_generated_tokens_mostly_contradict_keep_drafting_off():
    import random

    rng = random.Random(7)
    d = _discouraged([rng.randrange(5) for _ in range(30)])
    rates = []
    for _ in range(300):  # short n-grams recur all the time; what follows them is a coin toss
        assert d.propose(room=8, cost=0.5) == []
        d.append(rng.randrange(5))
        rates.append(d.rate)
    assert max(rates) > 0.1  # the shadows were checked (a fifth of their first tokens match)…
    assert max(rates) < 0.5  # …and never made drafting look worth a row at this price


# ----------------------------------------------------------------------------------- engine
class Harness:
    """An engine on its thread, and a way to run jobs and collect what each produced."""

    def __init__(self, n_parallel: int = 4, n_ctx: int = 1024) -> None:
        self.model = native.load_model(MODEL, n_gpu_layers=0, use_mmap=True)
        self.ctx = native.create_generation_context(self.model, n_ctx=n_ctx, n_parallel=n_parallel, n_batch=512,
                                                    n_threads=1, flash_attn=None, kv_cache_type="f16")
        self.results: dict[str, dict] = {}
        self.changed = threading.Condition()
        self.engine = Engine(self.model, self.ctx, n_ctx=n_ctx, n_parallel=n_parallel, n_batch=512, n_threads=1,
                             emit=self._emit)
        self.thread = threading.Thread(target=self.engine.run, daemon=True)
        self.thread.start()
        self._n = 0

    def _emit(self, events: list) -> None:
        with self.changed:
            for ev in events:
                r = self.results.setdefault(ev[1], {"text": "", "logprobs": [], "final": None})
                if ev[0] == P.EV_PIECE:
                    r["text"] += ev[2]
                    r["logprobs"].extend(ev[3] or [])
                elif ev[0] in (P.EV_DONE, P.EV_FAILED):
                    r["final"] = ev
            self.changed.notify_all()

    def run(self, specs: list[dict]) -> list[dict]:
        """Submit all jobs at once (they share decode steps), wait for all; results in order."""
        ids = []
        for spec in specs:
            self._n += 1
            job_id = f"j{self._n}"
            ids.append(job_id)
            self.engine.submit((P.OP_GENERATE, self.engine.prepare(job_id, spec)))
        with self.changed:
            assert self.changed.wait_for(lambda: all((self.results.get(j) or {}).get("final") for j in ids),
                                         timeout=600)
        out = []
        for j in ids:
            r = self.results.pop(j)
            assert r["final"][0] == P.EV_DONE, r["final"]
            r["done"] = r["final"][2]
            out.append(r)
        return out

    def close(self) -> None:
        self.engine.stop()
        self.thread.join(timeout=60)
        self.engine.close()
        L.llama_free(self.ctx)
        self.model.close()


@pytest.fixture(scope="module")
def harness():
    h = Harness()
    yield h
    h.close()


def _tokens(r: dict) -> list[int]:
    done = r["done"]
    return done["context"][len(done["context"]) - done["eval_count"]:]


def _pair(harness: Harness, spec: dict) -> tuple[dict, dict]:
    """The job run alone without drafts, then alone with them, both from the same cache state.

    Why the warm-up: a prompt evaluated in one big prefill batch and the same prompt reused from
    the cache (only its last token decoded again, alone) give slightly different floating-point
    logits, and a near-tie can flip — with or without drafts. After the warm-up both runs start
    from the reused prompt, so only the drafts differ between them.
    """
    harness.run([{**spec, "draft_max": 0, "num_predict": 1}])
    (off,) = harness.run([{**spec, "draft_max": 0}])
    (on,) = harness.run([spec])
    assert off["done"]["draft_count"] == 0
    return off, on


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_greedy_tokens_are_identical_with_and_without_drafts(harness, name):
    spec = {"prompt": PROMPTS[name], "temperature": 0.0, "num_predict": 96}
    off, on = _pair(harness, spec)
    assert _tokens(on) == _tokens(off)
    assert on["text"] == off["text"]
    assert on["done"]["eval_count"] == off["done"]["eval_count"]
    assert on["done"]["done_reason"] == off["done"]["done_reason"]
    if name in ("rewrite", "list", "quote"):  # the output repeats the input: drafts are confirmed
        # (how many depends on the draft lengths, which follow the measured price of a draft row)
        assert on["done"]["draft_accepted"] >= 1, on["done"]
    assert on["done"]["draft_accepted"] <= on["done"]["draft_count"]


def test_num_predict_is_exact_while_drafts_are_confirmed(harness):
    for n in (1, 2, 7, 33):
        off, on = _pair(harness, {"prompt": COUNTING, "temperature": 0.0, "num_predict": n})
        assert on["done"]["eval_count"] == n == off["done"]["eval_count"]
        assert _tokens(on) == _tokens(off)


def test_stop_strings_cut_at_the_same_place(harness):
    for stop in (["7,"], ["14"], ["summary("], ["height)\n\n\ndef"]):
        for prompt in (COUNTING, REWRITE):
            off, on = _pair(harness, {"prompt": prompt, "temperature": 0.0, "num_predict": 120, "stop": stop})
            assert on["text"] == off["text"]
            assert on["done"]["done_reason"] == off["done"]["done_reason"]
            assert stop[0] not in on["text"]


def test_format_json_grammar_output_is_identical_and_parses(harness):
    schema = {"type": "object", "properties": {"days": {"type": "array", "items": {"type": "string"}}},
              "required": ["days"]}
    for fmt in ("json", schema):
        spec = {"prompt": chat("List the days of the week as JSON: Monday, Tuesday, Wednesday, Thursday, "
                               "Friday, Saturday, Sunday."),
                "temperature": 0.0, "num_predict": 80, "grammar": grammar_for_format(fmt)}
        off, on = _pair(harness, spec)
        assert on["text"] == off["text"]
        if on["done"]["done_reason"] == "stop":
            json.loads(on["text"])


def test_logprobs_are_those_of_the_undrafted_run(harness):
    # a prompt whose answer repeats it: drafts are confirmed whatever row price the engine has
    # learnt by now (counting drafts only while the optimistic start lasts, if at all)
    spec = {"prompt": QUOTE, "temperature": 0.0, "num_predict": 40, "logprobs": True, "top_logprobs": 3}
    off, on = _pair(harness, spec)
    assert on["done"]["draft_accepted"] > 0
    assert len(on["logprobs"]) == len(off["logprobs"]) == 40
    for a, b in zip(on["logprobs"], off["logprobs"]):
        assert a["token"] == b["token"] and a["bytes"] == b["bytes"]
        assert math.isclose(a["logprob"], b["logprob"], abs_tol=1e-3)
        assert [t["token"] for t in a["top_logprobs"]] == [t["token"] for t in b["top_logprobs"]]


def test_repeat_penalties_see_the_same_history(harness):
    spec = {"prompt": REWRITE, "temperature": 0.0, "num_predict": 80, "repeat_penalty": 1.3,
            "repeat_last_n": 32, "presence_penalty": 0.2, "frequency_penalty": 0.1}
    off, on = _pair(harness, spec)
    assert _tokens(on) == _tokens(off)


def test_concurrent_slots_equal_their_single_undrafted_runs(harness, monkeypatch):
    names = ["counting", "rewrite", "story", "list"]
    specs = [{"prompt": PROMPTS[n], "temperature": 0.0, "num_predict": 64} for n in names]
    harness.run([{**s, "draft_max": 0, "num_predict": 1} for s in specs])  # see _pair: same cache state
    alone = [harness.run([{**s, "draft_max": 0}])[0] for s in specs]
    runs: list[list[int]] = []  # per decode: tokens of each sequence, in batch order
    real_decode = L.llama_decode

    def recording_decode(context, batch):
        seqs = [batch.seq_id[i][0] for i in range(batch.n_tokens)]
        runs.append([seqs.count(s) for s in sorted(set(seqs))])
        return real_decode(context, batch)

    monkeypatch.setattr(L, "llama_decode", recording_decode)
    # Shared steps do not draft by default (DRAFT_ROW_COST_SHARED); a low price turns them on
    monkeypatch.setattr(harness.engine, "row_cost", RowCost(0.15, 0.05))
    together = harness.run(specs)
    monkeypatch.setattr(L, "llama_decode", real_decode)
    for name, a, t in zip(names, alone, together):
        assert _tokens(t) == _tokens(a), name
    assert sum(t["done"]["draft_accepted"] for t in together) > 0
    # Side by side, every sequence gets runs of one length (llama.cpp's equal split then needs
    # one micro-batch); only a job near its num_predict end may be shorter.
    drafted = [r for r in runs if len(r) == 4 and max(r) > 1]
    assert drafted, runs
    even = [r for r in drafted if len(set(r)) == 1]
    assert len(even) >= 0.8 * len(drafted), drafted


def test_context_end_is_respected_with_drafts(harness):
    # a job context just past the prompt: drafts must never reach past it; shift off ends at the edge
    prompt = COUNTING * 3
    n_prompt = len(harness.model.tokenize(prompt, add_special=True))
    spec = {"prompt": prompt, "temperature": 0.0, "num_predict": 200, "num_ctx": n_prompt + 20, "shift": False}
    off, on = _pair(harness, spec)
    assert _tokens(on) == _tokens(off)
    assert on["done"]["done_reason"] == "length" and on["done"]["eval_count"] == off["done"]["eval_count"]


def test_kv_cache_holds_no_rejected_drafts(harness):
    (r,) = harness.run([{"prompt": PROMPTS["story"], "temperature": 0.0, "num_predict": 48}])
    context = r["done"]["context"]
    slot = next(s for s in harness.engine.slots if s.cached[: len(context) - 1] == context[:-1])
    # the slot holds exactly prompt + generated tokens except the last one (sampled, never decoded)
    assert slot.cached == context[:-1]
    # and llama.cpp's memory agrees: nothing past that position in this sequence
    assert L.llama_memory_seq_pos_max(harness.engine.mem, slot.seq) == len(context) - 2


def test_bad_draft_max_is_a_bad_request(harness):
    with pytest.raises(JobError) as err:
        harness.engine.prepare("bad", {"prompt": "hi", "draft_max": -1})
    assert err.value.kind == "bad_request" and "draft_max" in err.value.message


# ----------------------------------------------------------------------------------- sampling
def _chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square with ``df`` degrees of freedom (regularised upper gamma)."""
    a, z = df / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    if z < a + 1:  # series for the lower part
        term = total = 1.0 / a
        k = a
        while term > total * 1e-12:
            k += 1
            term *= z / k
            total += term
        return max(0.0, 1.0 - total * math.exp(-z + a * math.log(z) - math.lgamma(a)))
    # continued fraction for the upper part (Lentz)
    b, c, d = z + 1 - a, 1e300, 1.0 / (z + 1 - a)
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1) < 1e-12:
            break
    return math.exp(-z + a * math.log(z) - math.lgamma(a)) * h


def test_chi2_helper_matches_known_values():
    assert math.isclose(_chi2_sf(3.841, 1), 0.05, abs_tol=1e-3)
    assert math.isclose(_chi2_sf(18.307, 10), 0.05, abs_tol=1e-3)
    assert math.isclose(_chi2_sf(2.0, 4), 0.7358, abs_tol=1e-3)


def test_seeded_sampling_is_identical_and_the_distribution_is_unchanged(harness, monkeypatch):
    """Same seed, same tokens, drafts or not; over many seeds the distribution of the first
    drafted positions does not differ (chi-square homogeneity test, drafts on vs off, each arm
    with its own seeds)."""
    base = {"prompt": "a b c a b c a b c a b c a b", "temperature": 1.0, "top_k": 8, "num_predict": 4}
    for seed in (1, 2, 3):
        off, on = _pair(harness, {**base, "seed": seed})
        assert _tokens(on) == _tokens(off)
    harness.run([{**base, "draft_max": 0, "num_predict": 1}] * 4)  # see _pair
    # four at a time below: let shared steps draft too (off by default, DRAFT_ROW_COST_SHARED)
    monkeypatch.setattr(harness.engine, "row_cost", RowCost(0.15, 0.05))
    n = 240
    arms = {}
    accepted = 0
    for arm, draft_max, seeds in (("off", 0, range(1000, 1000 + n)), ("on", None, range(5000, 5000 + n))):
        results = []
        for start in range(0, n, 4):  # four at a time: the slots decode side by side
            specs = [{**base, "seed": s, "draft_max": draft_max} for s in list(seeds)[start:start + 4]]
            results += harness.run(specs)
        arms[arm] = [tuple(_tokens(r)[1:3]) for r in results]  # tokens 2-3: where drafts act
        if arm == "on":
            accepted = sum(r["done"]["draft_accepted"] for r in results)
    assert accepted > n // 4, "drafts were not confirmed: the test would not test anything"
    counts = {arm: Counter(v) for arm, v in arms.items()}
    common = [k for k in set(counts["off"]) | set(counts["on"]) if counts["off"][k] + counts["on"][k] >= 10]
    rows = [(counts["off"][k], counts["on"][k]) for k in common]
    rest = (n - sum(r[0] for r in rows), n - sum(r[1] for r in rows))
    if sum(rest) >= 10:
        rows.append(rest)
    assert len(rows) >= 2, counts
    stat = 0.0
    for a, b in rows:
        expected = (a + b) / 2
        stat += (a - expected) ** 2 / expected + (b - expected) ** 2 / expected
    p = _chi2_sf(stat, len(rows) - 1)
    assert p > 0.001, (stat, rows)
