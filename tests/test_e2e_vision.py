"""Images end to end: a vision model created over HTTP from SmolLM2 plus a projector, then asked
about pictures through the official ``ollama`` and ``openai`` clients and raw HTTP.

The projector is the tiny random one from ``tiny_projector`` (no real vision model can be
downloaded here), so the assertions are about the picture reaching the model, never about what
the model says of it: greedy answers repeat for the same picture and change with the picture.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import httpx
import ollama
import openai
import pytest

from conftest import delete_models, upload_and_create
from tiny_projector import IMAGE_TOKENS, png_bytes, write_tiny_projector

MODEL = "smolvision:135m"
GREEDY = {"temperature": 0, "num_predict": 12}
RED = png_bytes((220, 30, 30))
BLUE = png_bytes((30, 30, 220))
QUESTION = "Describe the picture."


@pytest.fixture
def server(shared_server):
    return shared_server


@pytest.fixture(scope="module")
def vision_model(session_server, smollm2_gguf, tmp_path_factory):
    """``smolvision:135m`` on the shared server: SmolLM2's weights plus a vision projector."""
    projector = write_tiny_projector(tmp_path_factory.mktemp("vision") / "mmproj-smolvision.gguf", text_embd=576)
    with httpx.Client(base_url=session_server.base_url, timeout=120) as http:
        upload_and_create(http, MODEL, smollm2_gguf, projector)
    yield MODEL
    delete_models(session_server, [MODEL])


@pytest.fixture
def vision_server(vision_model, shared_server):
    """The shared server, holding ``smolvision:135m`` (not loaded: each test starts a fresh runner)."""
    return shared_server


@pytest.fixture
def client(vision_server) -> ollama.Client:
    return ollama.Client(host=vision_server.base_url, timeout=120)


def test_a_model_with_a_projector_shows_vision(client, vision_server):
    shown = client.show(MODEL)
    assert "vision" in shown.capabilities and "completion" in shown.capabilities
    with httpx.Client(base_url=vision_server.base_url) as http:  # the client drops projector_info
        info = http.post("/api/show", json={"model": MODEL}).json()["projector_info"]
    assert info["general.architecture"] == "clip" and info["clip.has_vision_encoder"] is True
    listed = {m.model: m for m in client.list().models}
    assert MODEL in listed


def test_chat_images_reach_the_model(client):
    def ask(image: bytes | None, **kw) -> ollama.ChatResponse:
        message = {"role": "user", "content": QUESTION}
        if image is not None:
            message["images"] = [image]
        return client.chat(model=MODEL, messages=[message], options=GREEDY, logprobs=True, top_logprobs=5, **kw)

    def first_token(answer: ollama.ChatResponse) -> str:
        # The first token's distribution is a continuous function of the picture's embeddings:
        # unlike a dozen greedy words, it cannot come out the same for two pictures by chance
        # (the projector is random).
        return repr(answer.logprobs[0].top_logprobs)

    # keep_alive 0: a fresh runner each time, so prompt_eval_count is the whole prompt
    red, no_image = ask(RED, keep_alive=0), ask(None, keep_alive=0)
    assert red.message.content and red.eval_count == GREEDY["num_predict"]
    assert first_token(red) != first_token(no_image)
    assert red.prompt_eval_count - no_image.prompt_eval_count == IMAGE_TOKENS  # the picture's positions
    blue, red_again, red_third = ask(BLUE), ask(RED), ask(RED)
    assert red.message.content == red_again.message.content == red_third.message.content
    assert first_token(blue) not in (first_token(red), first_token(red_again))
    # after blue, red is encoded again; the third time the picture comes from the slot's cache
    assert red_third.prompt_eval_count < red_again.prompt_eval_count <= red.prompt_eval_count


def test_generate_images_stream_and_file_paths(client, tmp_path):
    picture = tmp_path / "red.png"
    picture.write_bytes(RED)
    parts = list(client.generate(model=MODEL, prompt=QUESTION, images=[picture], options=GREEDY, stream=True))
    final = parts[-1]
    assert final.done and final.done_reason == "length"
    streamed = "".join(p.response for p in parts)
    whole = client.generate(model=MODEL, prompt=QUESTION, images=[RED], options=GREEDY)
    assert whole.response == streamed
    assert client.generate(model=MODEL, prompt=QUESTION, images=[BLUE], options=GREEDY).response != streamed
    # the context is text tokens only: sending it back continues the conversation as text
    assert final.context and all(isinstance(t, int) and t >= 0 for t in final.context)
    follow = client.generate(model=MODEL, prompt="And then?", context=final.context, options=GREEDY)
    assert follow.done and follow.response


def test_raw_generate_places_images_where_the_prompt_says(vision_server):
    with httpx.Client(base_url=vision_server.base_url, timeout=120) as http:
        def raw(prompt: str, images: list[bytes]) -> dict:
            r = http.post("/api/generate", json={
                "model": MODEL, "prompt": prompt, "raw": True, "stream": False, "options": GREEDY,
                "images": [base64.b64encode(i).decode() for i in images]})
            assert r.status_code == 200, r.text
            return r.json()

        ending = raw("A photo of [img-0]", [RED])
        assert ending["response"] and ending["done_reason"] == "length"
        swapped = raw("First [img-0], then [img-1]:", [RED, BLUE])["response"]
        assert swapped != raw("First [img-0], then [img-1]:", [BLUE, RED])["response"]
        # images the raw prompt does not mention go in front of it
        assert raw("is what I see.", [RED])["response"] == raw("[img-0]is what I see.", [RED])["response"]


def test_debug_render_shows_the_image_tags(vision_server):
    with httpx.Client(base_url=vision_server.base_url, timeout=120) as http:
        r = http.post("/api/chat", json={
            "model": MODEL, "stream": False, "_debug_render_only": True,
            "messages": [{"role": "user", "content": "one", "images": [base64.b64encode(RED).decode()]},
                         {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": "two [img] here", "images": [base64.b64encode(BLUE).decode()]}]})
        assert r.status_code == 200, r.text
        info = r.json()["_debug_info"]
        assert info["image_count"] == 2
        rendered = info["rendered_template"]
        assert "[img-0]one" in rendered and "two [img-1] here" in rendered


def test_openai_image_parts_reach_the_model(vision_server, client):
    oai = openai.OpenAI(base_url=vision_server.base_url + "/v1", api_key="unused", timeout=120)

    def ask(image: bytes) -> str:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        r = oai.chat.completions.create(
            model=MODEL, temperature=0, max_tokens=GREEDY["num_predict"],
            messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                                   {"type": "image_url", "image_url": {"url": url}}]}])
        return r.choices[0].message.content

    red = ask(RED)
    assert red and red != ask(BLUE)
    native = client.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION, "images": [RED]}],
                         options=GREEDY)
    assert red == native.message.content  # the same prompt through either API


def test_bad_images_are_400s_and_the_model_keeps_serving(vision_server):
    with httpx.Client(base_url=vision_server.base_url, timeout=120) as http:
        r = http.post("/api/chat", json={"model": MODEL, "stream": False,
                                         "messages": [{"role": "user", "content": "x", "images": ["%%%"]}]})
        assert r.status_code == 400 and r.json()["error"].startswith("illegal base64 data")
        not_a_picture = base64.b64encode(b"definitely not a picture").decode()
        r = http.post("/api/chat", json={"model": MODEL, "stream": False,
                                         "messages": [{"role": "user", "content": "x", "images": [not_a_picture]}]})
        assert r.status_code == 400 and "image 0 could not be decoded" in r.json()["error"]
        lines = [json.loads(line) for line in http.post("/api/chat", json={
            "model": MODEL, "options": GREEDY,
            "messages": [{"role": "user", "content": "x", "images": [base64.b64encode(RED).decode()]}]}).iter_lines()
            if line]
        assert lines[-1]["done"] and lines[-1]["eval_count"] == GREEDY["num_predict"]


def test_the_documented_vision_examples_work(server, smollm2_gguf, tmp_path):
    from conftest import REPO, docs_script

    picture = tmp_path / "picture.png"
    picture.write_bytes(RED)
    env = {**os.environ, "MODEL_GGUF": str(smollm2_gguf), "PICTURE": str(picture),
           "PROJECTOR_GGUF": str(write_tiny_projector(tmp_path / "mmproj.gguf", text_embd=576))}
    result = subprocess.run(["bash", "-c", docs_script(server.base_url, "vision")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    statuses = result.stdout.split()
    # two blob uploads (201, or 200 when already stored), create, chat, generate
    assert len(statuses) == 5 and set(statuses[2:]) == {"200"} and set(statuses[:2]) <= {"200", "201"}, (
        statuses, result.stderr)
    assert '"done":true' in result.stderr
    # the examples bound their answers, so they finish however the model rambles
    assert re.findall(r'"eval_count":(\d+)', result.stderr) and all(
        int(n) <= 64 for n in re.findall(r'"eval_count":(\d+)', result.stderr)), result.stderr
    with httpx.Client(base_url=server.base_url) as http:
        assert "vision" in http.post("/api/show", json={"model": "my-vision"}).json()["capabilities"]


def test_the_cli_adds_a_projector_and_runs_with_picture_paths(server, tmp_path):
    write_tiny_projector(tmp_path / "mmproj.gguf", text_embd=576)
    (tmp_path / "Modelfile").write_text(
        "FROM smollm2:135m\nFROM ./mmproj.gguf\nPARAMETER temperature 0\nPARAMETER num_predict 12\n")
    (tmp_path / "red picture.png").write_bytes(RED)
    (tmp_path / "blue.png").write_bytes(BLUE)
    env = {**os.environ, "OLLAMA_HOST": server.base_url}

    def cli(*args: str) -> subprocess.CompletedProcess:
        result = subprocess.run([sys.executable, "-m", "trillama", *args], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        return result

    cli("create", "eyes", "-f", "Modelfile")
    assert "vision" in ollama.Client(host=server.base_url).show("eyes").capabilities
    red = cli("run", "eyes", "Describe ./red\\ picture.png please")
    assert "Added image 'red picture.png'" in red.stderr
    blue = cli("run", "eyes", "Describe ./blue.png please")
    assert red.stdout.strip() and red.stdout != blue.stdout
    assert cli("run", "eyes", "Describe ./red\\ picture.png please").stdout == red.stdout
    # the same words without the picture: the path leaves the prompt, so the answer differs again
    assert cli("run", "eyes", "Describe please").stdout not in (red.stdout, blue.stdout)
