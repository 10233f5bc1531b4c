"""End to end: the management routes of a real ``python -m trillama serve`` over HTTP.

Each test starts the server as a user would (hypercorn on a free port, a temporary
``OLLAMA_MODELS``), and the crash tests kill it with SIGKILL in the middle of a blob upload and
of a create, start it again on the same directory, and check that no temp file and no corrupt
manifest survived.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import gguf
import httpx
import numpy as np
import ollama
import pytest
from conftest import ServerProcess, wait_for
from test_api_manage import check_against_expected_tree
from test_store_gguf import write_tiny_gguf
from test_store_store import tree

from trillama.store.atomic import TEMP_PREFIX

DATA = Path(__file__).parent / "data"

pytestmark = pytest.mark.slow


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{TEMP_PREFIX}*")]


def assert_store_sound(root: Path) -> None:
    """No temp file anywhere; every manifest parses and lists blobs that exist with their sizes."""
    assert temp_files(root) == []
    for path in (root / "manifests").rglob("*"):
        if not path.is_file():
            continue
        manifest = json.loads(path.read_bytes())
        for layer in [manifest["config"], *manifest["layers"]]:
            blob = root / "blobs" / layer["digest"].replace(":", "-")
            assert blob.stat().st_size == layer["size"], (path, layer)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


def start(servers: list[ServerProcess], root: Path, bundled: bool = False,
          create_paths: Path | None = None) -> ServerProcess:
    env = {"TRILLAMA_BUNDLED_MODEL": "1" if bundled else "0"}
    if create_paths is not None:  # the classic create forms may read files there
        env["TRILLAMA_CREATE_PATHS"] = str(create_paths)
    server = ServerProcess(root, env=env)
    servers.append(server.start())
    return server


def test_fresh_store_lists_the_bundled_model(servers: list[ServerProcess], root: Path) -> None:
    server = start(servers, root, bundled=True)
    with server.client() as client:
        assert client.get("/").text == "Ollama is running"
        body = client.get("/api/tags").json()
        (model,) = body["models"]
        assert model["name"] == model["model"] == "smollm2:135m"
        assert model["details"]["parameter_size"] == "134.52M"
        assert model["details"]["quantization_level"] == "Q4_1"
        assert model["details"]["family"] == "llama"
        assert len(model["digest"]) == 64 and model["size"] > 98_000_000
        head = client.head("/api/tags")
        assert head.status_code == 200 and head.content == b""
        show = client.post("/api/show", json={"model": "smollm2:135m"}).json()
        assert show["parameters"] == 'stop                           "<|im_start|>"\nstop                           "<|im_end|>"'
        assert show["model_info"]["llama.context_length"] == 8192
        assert "<|im_start|>" in show["template"]
    # A second start on the same store leaves the bundled model as it was.
    before = tree(root)
    server.stop()
    server = start(servers, root, bundled=True)
    assert tree(root) == before


def test_every_route_over_http(servers: list[ServerProcess], root: Path, tmp_path: Path) -> None:
    server = start(servers, root)
    data = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    digest = sha(data)
    with server.client() as client:
        assert client.head(f"/api/blobs/{digest}").status_code == 404
        assert client.post(f"/api/blobs/{digest}", content=data).status_code == 201
        assert client.head(f"/api/blobs/{digest}").status_code == 200
        assert client.post(f"/api/blobs/{digest}", content=b"ignored").status_code == 200

        with client.stream("POST", "/api/create", json={"model": "tiny", "files": {"tiny.gguf": digest}}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert lines[0] == {"status": "parsing GGUF"}
        assert lines[-1] == {"status": "success"}

        r = client.post("/api/create", json={"model": "tiny2", "from": "tiny", "system": "hi", "stream": False})
        assert (r.status_code, r.json()) == (200, {"status": "success"})
        assert client.post("/api/show", json={"model": "tiny2"}).json()["system"] == "hi"

        r = client.post("/api/copy", json={"source": "tiny2", "destination": "me/tiny3:v1"})
        assert (r.status_code, r.content) == (200, b"")
        r = client.request("DELETE", "/api/delete", json={"model": "tiny2"})
        assert (r.status_code, r.content) == (200, b"")
        names = sorted(m["name"] for m in client.get("/api/tags").json()["models"])
        assert names == ["me/tiny3:v1", "tiny:latest"]

        bad_requests: list[tuple[str, str, Any, int, str]] = [
            ("POST", "/api/create", {"model": "../x", "from": "tiny"}, 400, "invalid model name"),
            ("POST", "/api/create", {"model": "a:b:c", "from": "tiny"}, 400, "invalid model name"),
            ("POST", "/api/create", {"model": "", "from": "tiny"}, 400, "invalid model name"),
            ("POST", "/api/create", {"model": "n" * 81, "from": "tiny"}, 400, "invalid model name"),
            ("POST", "/api/create", {"model": "x", "from": "nothere"}, 404, "model 'nothere' not found"),
            ("POST", "/api/create", {"model": "x", "modelfile": "FROM tiny\nNOPE 1\n"}, 400,
             '(line 2): command must be one of "from", "license", "template", "system", "adapter", "draft", '
             '"renderer", "parser", "parameter", "message", or "requires"'),
            ("POST", "/api/create", {"model": "x", "modelfile": "FROM tiny\nPARAMETER temperature hot\n"}, 400,
             "invalid float value [hot]"),
            ("POST", "/api/create", {"model": "x", "modelfile": "PARAMETER top_k 1\n"}, 400, "no FROM line"),
            ("POST", "/api/copy", {"source": "tiny", "destination": "bad/../name"}, 400,
             'destination "bad/../name" is invalid'),
            ("DELETE", "/api/delete", {"model": "nothere"}, 404, "model 'nothere' not found"),
            ("DELETE", "/api/delete", {"model": "a:b:c"}, 400, 'name "a:b:c" is invalid'),
            ("POST", "/api/show", {"model": "nothere"}, 404, "model 'nothere:latest' not found"),
            ("POST", f"/api/blobs/{sha(b'claimed')}", b"actual", 400,
             f'digest mismatch, expected "{sha(b"claimed")}", got "{sha(b"actual")}"'),
            ("POST", "/api/blobs/sha256:123", b"x", 400, "invalid digest format"),
            ("POST", "/api/show", b"{oops", 400, "invalid JSON: Expecting property name enclosed in double "
                                                  "quotes at offset 1"),
            ("POST", "/api/copy", b"", 400, "missing request body"),
        ]
        for method, path, body, status, message in bad_requests:
            before = tree(root)
            if isinstance(body, bytes):
                r = client.request(method, path, content=body)
            else:
                r = client.request(method, path, json=body)
            assert (r.status_code, r.json()) == (status, {"error": message}), (method, path, body)
            assert tree(root) == before, (method, path, body)

        # A blob that is not GGUF: rejected whether streamed or not, nothing written.
        text_digest = sha(b"not weights")
        assert client.post(f"/api/blobs/{text_digest}", content=b"not weights").status_code == 201
        before = tree(root)
        r = client.post("/api/create", json={"model": "x", "files": {"a.gguf": text_digest}})
        assert (r.status_code, r.json()) == (400, {"error": "supplied file was not in GGUF format"})
        assert tree(root) == before


def test_official_python_client(servers: list[ServerProcess], root: Path, tmp_path: Path) -> None:
    """The ``ollama`` package drives create/list/show/copy/delete against this server."""
    server = start(servers, root)
    path = write_tiny_gguf(tmp_path / "tiny.gguf")
    client = ollama.Client(host=server.base_url)
    digest = client.create_blob(path)
    progress = [p.status for p in client.create(model="viaclient", files={"tiny.gguf": digest},
                                                system="Be kind.", parameters={"temperature": 0.3},
                                                stream=True)]
    assert progress[-1] == "success"
    listed = client.list()
    assert [m.model for m in listed.models] == ["viaclient:latest"]
    assert listed.models[0].details.parameter_size == "104"
    shown = client.show("viaclient")
    assert "\nSYSTEM Be kind.\n" in shown.modelfile
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.parameters.startswith("stop ")
    assert shown.capabilities == ["completion"]
    assert client.copy("viaclient", "viaclient:copy").status == "success"
    assert client.delete("viaclient").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        client.show("viaclient")
    assert err.value.status_code == 404


def test_real_server_writes_the_expected_tree(servers: list[ServerProcess], root: Path, tmp_path: Path) -> None:
    server = start(servers, root)
    data = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    model = sha(data)
    with server.client() as client:
        assert client.post(f"/api/blobs/{model}", content=data).status_code == 201
        for method, path, body in [
            ("POST", "/api/create", {"model": "tiny", "files": {"tiny.gguf": model}, "system": "You are terse.",
                                     "parameters": {"temperature": 0.5}, "stream": False}),
            ("POST", "/api/copy", {"source": "tiny", "destination": "example.com:5000/team/tiny-copy:v1"}),
            ("POST", "/api/create", {"name": "tiny-derived:7b", "from": "tiny", "template": "{{ .Prompt }}",
                                     "messages": [{"role": "user", "content": "hi"}], "stream": False}),
            ("POST", "/api/create", {"model": "scratch", "from": "tiny", "stream": False}),
            ("DELETE", "/api/delete", {"model": "scratch"}),
        ]:
            assert client.request(method, path, json=body).status_code == 200, (path, body)
    check_against_expected_tree(root, json.loads((DATA / "expected_tree.json").read_text()), {"$model": model})


# --- crash tests ------------------------------------------------------------------------------




def test_kill_during_blob_upload_leaves_no_trace(servers: list[ServerProcess], root: Path) -> None:
    server = start(servers, root)
    chunk = os.urandom(1 << 20)
    digest = sha(chunk * 64)  # never fully sent
    stop_sending = threading.Event()

    def slow_body() -> Iterator[bytes]:
        for _ in range(64):
            if stop_sending.is_set():
                return
            yield chunk
            time.sleep(0.1)

    def upload() -> None:
        try:
            httpx.post(f"{server.base_url}/api/blobs/{digest}", content=slow_body(), timeout=60)
        except httpx.HTTPError:
            pass  # the server died under us: expected

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    orphan = wait_for(lambda: [p for p in temp_files(root) if p.stat().st_size > 0])
    server.stop(signal.SIGKILL)
    stop_sending.set()
    sender.join(timeout=30)
    assert orphan[0].exists(), "the kill should have left the partial upload behind"

    server = start(servers, root)
    assert_store_sound(root)
    assert not (root / "blobs" / digest.replace(":", "-")).exists()
    with server.client() as client:
        assert client.head(f"/api/blobs/{digest}").status_code == 404
        assert client.get("/api/tags").json() == {"models": []}


def write_big_gguf(path: Path, gigabytes: float = 2.0) -> Path:
    """A valid GGUF header declaring one huge tensor; the data is a sparse hole of zeros."""
    elements = int(gigabytes * (1 << 30)) // 4
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_head_count(1)
    writer.add_file_type(0)
    writer.add_tensor_info("blk.0.big.weight", (elements,), np.dtype(np.float32), elements * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    header = path.stat().st_size
    aligned = (header + 31) // 32 * 32
    os.truncate(path, aligned + elements * 4)
    return path


def test_kill_during_create_leaves_no_trace(servers: list[ServerProcess], root: Path, tmp_path: Path) -> None:
    server = start(servers, root, create_paths=tmp_path)
    small = write_tiny_gguf(tmp_path / "small.gguf").read_bytes()
    with server.client() as client:
        assert client.post(f"/api/blobs/{sha(small)}", content=small).status_code == 201
        r = client.post("/api/create", json={"model": "survivor", "files": {"small.gguf": sha(small)}, "stream": False})
        assert r.status_code == 200
    big = write_big_gguf(tmp_path / "big.gguf")

    def create() -> None:
        try:
            with httpx.stream("POST", f"{server.base_url}/api/create", timeout=120,
                              json={"model": "big", "modelfile": f"FROM {big}\nSYSTEM never finished\n"}) as r:
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError:
            pass

    sender = threading.Thread(target=create, daemon=True)
    sender.start()
    orphan = wait_for(lambda: [p for p in temp_files(root) if p.stat().st_size > 0])
    server.stop(signal.SIGKILL)
    sender.join(timeout=30)
    assert orphan[0].exists(), "the kill should have interrupted the import"

    # Also what a copy or delete killed mid-write would leave: a half-written temp manifest.
    stray = root / "manifests/registry.ollama.ai/library/survivor" / f"{TEMP_PREFIX}999999999-deadbeef"
    stray.write_bytes(b'{"schemaVersion":2,"mediaType":')

    server = start(servers, root)
    assert_store_sound(root)
    assert not (root / "manifests/registry.ollama.ai/library/big").exists()
    with server.client() as client:
        names = [m["name"] for m in client.get("/api/tags").json()["models"]]
        assert names == ["survivor:latest"]
        assert client.post("/api/show", json={"model": "survivor"}).status_code == 200


# --- the documentation's examples -------------------------------------------------------------


def test_docs_curl_examples(servers: list[ServerProcess], root: Path) -> None:
    import subprocess

    from conftest import REPO, docs_script

    server = start(servers, root, bundled=True)
    result = subprocess.run(["bash", "-c", docs_script(server.base_url, "manage")], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    statuses = result.stdout.split()
    assert statuses == [
        "200",  # tags
        "200", "200",  # show, show verbose
        "200",  # copy
        "200", "200", "200",  # create from model (stream), stream false, classic Modelfile
        "200", "200", "200",  # HEAD blob (the bundled GGUF is already a blob), POST blob, create from it
        "400",  # digest mismatch
        "200",  # delete
    ], result.stderr
    with server.client() as client:
        names = sorted(m["name"] for m in client.get("/api/tags").json()["models"])
        assert names == ["classic:latest", "from-file:latest", "pirate:latest", "smollm2:135m", "terse:latest"]
        show = client.post("/api/show", json={"model": "classic"}).json()
        assert show["system"] == "You are\na poet."
        assert 'stop                           "<|im_end|>"' in show["parameters"]
    assert_store_sound(root)
