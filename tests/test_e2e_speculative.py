"""Speculative decoding through the real server: the per-request option, the Modelfile
``PARAMETER``, the counters in ``/metrics``, and the same greedy output either way.

The session's shared server: counters are compared with what they were before the test.
"""

from __future__ import annotations

import json
import re

import pytest

SMOL = "smollm2:135m"
REPEAT = ("Copy this list exactly: alpha, beta, gamma, delta, epsilon, zeta, eta, theta, iota, kappa, "
          "lambda, mu, nu, xi, omicron, pi, rho, sigma, tau, upsilon.")


def _drafts(client, model: str) -> dict[str, float]:
    text = client.get("/metrics").text
    out = {"drafted": 0.0, "accepted": 0.0}
    for kind, value in re.findall(
            r'trillama_draft_tokens_total\{kind="(\w+)",model="' + re.escape(model) + r'"\} (\S+)', text):
        out[kind] = float(value)
    return out


def _generate(client, model: str, **options) -> dict:
    r = client.post("/api/generate", json={"model": model, "prompt": REPEAT, "stream": False,
                                           "options": {"temperature": 0, "num_predict": 64, **options}})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def server(shared_server):
    return shared_server


def test_drafts_on_by_default_off_by_option_same_output(server):
    with server.client() as client:
        # Warm-up: afterwards every request reuses the cached prompt, so the two compared runs
        # start from the same cache state (a fresh prefill and a reused prompt can differ in the
        # last bits of the logits, drafts or not; see tests/test_speculative.py)
        _generate(client, SMOL, draft_max=0, num_predict=1)
        before = _drafts(client, SMOL)
        plain = _generate(client, SMOL, draft_max=0)
        after_plain = _drafts(client, SMOL)
        assert after_plain["drafted"] == before["drafted"]  # draft_max 0: nothing drafted
        spec = _generate(client, SMOL)
        after = _drafts(client, SMOL)
        accepted, drafted = after["accepted"] - before["accepted"], after["drafted"] - before["drafted"]
        assert spec["response"] == plain["response"] and spec["eval_count"] == plain["eval_count"]
        assert spec["context"] == plain["context"]
        assert accepted > 10, after  # the copy was drafted, and the drafts were confirmed
        assert accepted <= drafted
        # Ollama's final response has no field for the counters: none is added
        assert not any("draft" in key for key in spec)
        streamed = client.post("/api/generate", json={"model": SMOL, "prompt": REPEAT, "stream": True,
                                                      "options": {"temperature": 0, "num_predict": 64}})
        lines = [json.loads(line) for line in streamed.text.splitlines() if line]
        assert "".join(line.get("response", "") for line in lines) == plain["response"]


def test_modelfile_parameter_turns_drafting_off(server):
    with server.client() as client:
        r = client.post("/api/create", json={"model": "smol-nodraft", "from": SMOL,
                                             "parameters": {"draft_max": 0}, "stream": False})
        assert r.status_code == 200, r.text
        show = client.post("/api/show", json={"model": "smol-nodraft"}).json()
        assert re.search(r"draft_max\s+0", show["parameters"]), show["parameters"]
        _generate(client, "smol-nodraft", num_predict=1)  # warm-up: same cache state for the next two
        out = _generate(client, "smol-nodraft")
        name = "smol-nodraft:latest"
        assert f'trillama_draft_tokens_total{{kind="drafted",model="{name}"}} 0.0' in client.get("/metrics").text
        # the request's option wins over the Modelfile's
        again = _generate(client, "smol-nodraft", draft_max=8)
        assert again["response"] == out["response"]
        assert _drafts(client, name)["accepted"] > 0


def test_bad_draft_max_is_a_400(server):
    with server.client() as client:
        for value, fragment in ((-1, "draft_max must be between 0 and 64"), (65, "draft_max must be between"),
                                ("many", 'option "draft_max" must be of type integer')):
            r = client.post("/api/generate", json={"model": SMOL, "prompt": "hi", "stream": False,
                                                   "options": {"draft_max": value}})
            assert r.status_code == 400, (value, r.text)
            assert fragment in r.json()["error"]
