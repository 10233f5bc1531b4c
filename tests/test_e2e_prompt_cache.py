"""Prefix sharing and the prompt cache through the real server: what each protocol's usage says,
``/metrics`` and ``/api/runners`` (issue 22)."""

from __future__ import annotations

import random
import re

import pytest

from conftest import wait_for


def words(seed: int, n: int) -> str:
    rng = random.Random(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "seven", "green", "tool",
             "parse", "file", "return", "value", "north", "quiet", "table", "light", "paper", "order"]
    return " ".join(rng.choice(vocab) for _ in range(n))


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


SYSTEM = "You are a coding agent. Tools and rules follow. " + words(1, 500)


def test_a_second_session_reuses_the_prefix_the_first_computed_in_another_slot(start_server):
    server = start_server({"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_CONTEXT_LENGTH": "4096"})
    options = {"temperature": 0, "max_tokens": 4}
    with server.client() as client:
        first = client.post("/v1/chat/completions", json={
            "model": "gemma3:270m", **options,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": "Session one asks: " + words(2, 200)}]})
        assert first.status_code == 200, first.text
        assert first.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        second = client.post("/v1/chat/completions", json={
            "model": "gemma3:270m", **options,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": "Session two asks something else."}]})
        assert second.status_code == 200, second.text
        usage = second.json()["usage"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        assert cached >= 500 and usage["prompt_tokens"] - cached < 30  # only its own question computed

        metrics = client.get("/metrics").text
        assert metric(metrics, "trillama_prompt_cache_hits_total", model="gemma3:270m", tier="copy") == 1
        assert metric(metrics, "trillama_prompt_tokens_total", model="gemma3:270m", kind="reused") == cached
        computed = metric(metrics, "trillama_prompt_tokens_total", model="gemma3:270m", kind="computed")
        assert computed == first.json()["usage"]["prompt_tokens"] + usage["prompt_tokens"] - cached

        # Both slots hold the shared prefix now: session one's history was not cut short.
        (runner,) = client.get("/api/runners").json()["runners"]
        assert sorted(s["n_cached"] for s in runner["slots"])[0] >= 500
        assert runner["prompt_cache"]["reuse"]["copy"] == 1

        # Anthropic's and Ollama's words for the same thing, on a third request.
        third = client.post("/v1/messages", json={
            "model": "gemma3:270m", "max_tokens": 4, "temperature": 0, "system": SYSTEM,
            "messages": [{"role": "user", "content": "Session three asks too."}]})
        assert third.status_code == 200, third.text
        assert third.json()["usage"]["cache_read_input_tokens"] >= 500
        native = client.post("/api/chat", json={
            "model": "gemma3:270m", "stream": False, "options": {"temperature": 0, "num_predict": 4},
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "And four."}]})
        assert native.status_code == 200, native.text
        assert native.json()["prompt_eval_count"] < 30  # counts only the tokens it computed, as Ollama


@pytest.mark.parametrize("tier", ["ram", "disk", "park"])
def test_a_session_whose_slot_was_taken_gets_its_prefix_back_from_the_cache(start_server, tier):
    """One slot (Ollama's default): another request takes it between two turns of a session.
    SmolLM2's state comes back from the RAM or disk tier; gemma3's (sliding-window layers, whose
    saved states do not restore exactly) from a spare KV stream it was parked in."""
    env = {"OLLAMA_NUM_PARALLEL": "1", "OLLAMA_CONTEXT_LENGTH": "4096", "TRILLAMA_PROMPT_CACHE": "1GiB"}
    if tier == "disk":
        env["TRILLAMA_PROMPT_CACHE_DISK"] = "1GiB"
    server = start_server(env)
    model = "gemma3:270m" if tier == "park" else "smollm2:135m"
    history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What now?"}]

    def chat(client, messages):
        r = client.post("/api/chat", json={"model": model, "stream": False, "messages": messages,
                                            "options": {"temperature": 0, "num_predict": 6}})
        assert r.status_code == 200, r.text
        return r.json()

    with server.client() as client:
        first = chat(client, history)
        chat(client, [{"role": "user", "content": words(3, 300)}])  # takes the only slot
        (runner,) = client.get("/api/runners").json()["runners"]
        assert runner["slots"][0]["n_cached"] < 500
        cache = runner["prompt_cache"]
        assert cache.get("entries", 0) + cache.get("disk_entries", 0) + cache.get("park_entries", 0) >= 1, cache
    if tier == "disk":  # a restart: only the files are left
        wait_for(lambda: any(server.models_dir.glob("cache/prompts/*/*.bin")), timeout=30)
        server.stop()
        server = start_server(env)
    history += [first["message"], {"role": "user", "content": "And then?"}]
    with server.client() as client:
        again = chat(client, history)
        assert again["prompt_eval_count"] < 40  # the system prompt and first turn came back
        metrics = client.get("/metrics").text
        assert metric(metrics, "trillama_prompt_cache_hits_total", model=model, tier=tier) == 1
        if tier != "park":
            assert metric(metrics, "trillama_prompt_cache_bytes", model=model, tier="ram") > 0


def test_under_memory_pressure_the_prompt_cache_shrinks_before_a_model_is_evicted(start_server):
    def load(client, model):
        r = client.post("/api/generate", json={"model": model, "prompt": "hi", "stream": False,
                                                "options": {"num_predict": 1}})
        assert r.status_code == 200, r.text

    plain = start_server({"TRILLAMA_PROMPT_CACHE": "0"})
    with plain.client() as client:
        load(client, "smollm2:135m")
        load(client, "gemma3:270m")
        sizes = {m["name"]: m["size"] for m in client.get("/api/ps").json()["models"]}
    plain.stop()
    cache = 512 * 2**20
    # Room for both models and half of one cache: the second load must take it from the caches.
    limit = sizes["smollm2:135m"] + sizes["gemma3:270m"] + cache // 2
    server = start_server({"TRILLAMA_PROMPT_CACHE": str(cache), "TRILLAMA_MEMORY_LIMIT": str(limit)})
    with server.client() as client:
        load(client, "smollm2:135m")
        reserved = {r["name"]: r["prompt_cache"]["reserved"] for r in client.get("/api/runners").json()["runners"]}
        assert reserved == {"smollm2:135m": cache}
        load(client, "gemma3:270m")
        assert sorted(m["name"] for m in client.get("/api/ps").json()["models"]) == ["gemma3:270m", "smollm2:135m"]
        reserved = {r["name"]: r["prompt_cache"]["reserved"] for r in client.get("/api/runners").json()["runners"]}
        assert reserved["smollm2:135m"] + reserved["gemma3:270m"] <= cache // 2
        assert reserved["smollm2:135m"] < cache
    assert "model_evicted" not in server.log_text()
