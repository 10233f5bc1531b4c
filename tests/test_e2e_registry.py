"""Pull and push end to end: real servers, the official client, the CLI, a registry over HTTP.

Server A pushes the bundled model to the test registry; server B, with an empty store, pulls it
and answers with it. The registry asks for signed tokens, as Ollama's does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import ollama
import pytest

from fake_registry import FakeRegistry

pytestmark = pytest.mark.slow


@pytest.fixture
def registry():
    with FakeRegistry(require_auth=True, redirect_blobs=True) as fake:
        yield fake


@pytest.fixture
def pair(start_server, tmp_path):
    """Server A with the seeded store; server B with an empty one. Keys live in a test home."""
    env = {"HOME": str(tmp_path / "home")}
    a = start_server(env)
    (tmp_path / "b" / "models").mkdir(parents=True)
    b = start_server(env, root=tmp_path / "b" / "models")
    return a, b


def test_push_then_pull_on_another_server_then_generate(registry, pair):
    a, b = pair
    name = f"{registry.host}/me/smol:v1"
    client_a = ollama.Client(host=a.base_url, timeout=120)
    client_a.copy("smollm2:135m", name)
    pushed = list(client_a.push(name, insecure=True, stream=True))
    assert pushed[0].status == "retrieving manifest" and pushed[-1].status == "success"
    manifest = json.loads(registry.manifests[("me/smol", "v1")])
    weights = next(layer for layer in manifest["layers"]
                   if layer["mediaType"] == "application/vnd.ollama.image.model")
    assert len(registry.blobs[weights["digest"]]) == weights["size"] > 50_000_000

    with httpx.Client(base_url=b.base_url, timeout=120) as http:
        with http.stream("POST", "/api/pull", json={"model": name, "insecure": True}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-3:] == [{"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                          {"status": "success"}]
    done = [line for line in lines if line.get("digest") == weights["digest"]]
    assert done[-1] == {"status": f"pulling {weights['digest'][7:19]}", "digest": weights["digest"],
                        "total": weights["size"], "completed": weights["size"]}
    assert (b.models_dir / "manifests" / registry.host / "me" / "smol" / "v1").read_bytes() == \
        registry.manifests[("me/smol", "v1")]

    client_b = ollama.Client(host=b.base_url, timeout=120)
    assert name in [m.model for m in client_b.list().models]
    r = client_b.generate(model=name, prompt="Hi", options={"num_predict": 5, "temperature": 0})
    assert r.eval_count == 5 and r.response
    # the same answer as the original: the same weights, template and parameters came over
    original = client_a.generate(model="smollm2:135m", prompt="Hi", options={"num_predict": 5, "temperature": 0})
    assert r.response == original.response


def test_pull_and_push_errors_over_http(registry, start_server, tmp_path):
    server = start_server({"HOME": str(tmp_path / "home")})
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        r = http.post("/api/pull", json={"model": "a:b:c"})
        assert (r.status_code, r.json()) == (400, {"error": "invalid model name"})
        r = http.post("/api/push", json={})
        assert (r.status_code, r.json()) == (400, {"error": "model is required"})
        missing = f"{registry.host}/me/missing:latest"
        r = http.post("/api/pull", json={"model": missing, "insecure": True, "stream": False})
        assert (r.status_code, r.json()) == (500, {"error": "pull model manifest: file does not exist"})
        lines = [json.loads(line) for line in
                 http.post("/api/pull", json={"model": missing, "insecure": True}).text.splitlines()]
        assert lines == [{"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
        r = http.post("/api/pull", json={"model": f"http://{registry.host}/me/missing", "stream": False})
        assert r.json() == {"error": "insecure protocol http"}
        r = http.post("/api/push", json={"model": f"{registry.host}/me/nothing", "insecure": True})
        assert [json.loads(line) for line in r.text.splitlines()] == [
            {"status": "retrieving manifest"}, {"status": "couldn't retrieve manifest"},
            {"error": f'model "{registry.host}/me/nothing:latest" not found'}]
        # the server still serves
        assert http.get("/api/tags").status_code == 200


def test_the_cli_pushes_pulls_and_runs_a_model_it_lacks(registry, pair, tmp_path):
    a, b = pair
    name = f"{registry.host}/me/terse:latest"
    (tmp_path / "Modelfile").write_text("FROM smollm2:135m\nPARAMETER num_predict 6\nPARAMETER temperature 0\n")

    def cli(server, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "OLLAMA_HOST": server.base_url}
        result = subprocess.run([sys.executable, "-m", "trillama", *args], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        return result

    cli(a, "create", name, "-f", "Modelfile")
    pushed = cli(a, "push", "--insecure", name).stdout.splitlines()
    assert pushed[-4:] == ["", "You can find your model at:", "", f"\t{name}"]  # as ollama ends a push
    pushed = pushed[:-4]
    assert pushed[0] == "retrieving manifest" and pushed[-2:] == ["pushing manifest", "success"]
    assert any(line.startswith("pushing ") and "100%" in line for line in pushed)
    # B lacks the model: `run` pulls it first, as `ollama run` does, then answers
    ran = cli(b, "run", "--insecure", name, "Say hi")
    assert "pulling manifest" in ran.stdout and "success" in ran.stdout
    answer = ran.stdout.split("success\n", 1)[1].strip()
    assert answer
    pulled = cli(b, "pull", "--insecure", name).stdout.splitlines()  # nothing left to download
    assert pulled[0] == "pulling manifest" and pulled[-1] == "success"


def test_the_documented_registry_examples_work(registry, start_server, tmp_path):
    from conftest import REPO, docs_script

    server = start_server({"HOME": str(tmp_path / "home")})
    env = {**os.environ, "REGISTRY": registry.host}
    result = subprocess.run(["bash", "-c", docs_script(server.base_url, "registry")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "200", "200"], (result.stdout, result.stderr)
    assert result.stderr.count('{"status":"success"}') == 2, result.stderr
    assert ("me/smollm2", "135m") in registry.manifests
