"""The management routes over HTTP (Quart's test client against the real app and a real store).

Every bad input is checked twice: the status and message Ollama gives, and that the files under
``OLLAMA_MODELS`` are byte-for-byte what they were before the request.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from test_store_gguf import write_tiny_gguf
from test_store_store import tree

from trillama.actors.prompt.inspector import GoTemplateInspector
from trillama.api.app import create_app
from trillama.api.context import Services
from trillama.config import Settings
from trillama.store import ModelStore
from trillama.store.create import SERVER_PATHS_REFUSED

DATA = Path(__file__).parent / "data"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Client:
    """Quart's test client with JSON helpers."""

    def __init__(self, app: Any, root: Path) -> None:
        self.client = app.test_client()
        self.root = root

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        response = await self.client.open(path, method=method, **kwargs)
        data = await response.get_data()
        self.last = response
        if not data:
            return response.status_code, None
        if response.mimetype == "application/x-ndjson":
            return response.status_code, [json.loads(line) for line in data.splitlines() if line]
        if response.mimetype == "application/json":
            return response.status_code, json.loads(data)
        return response.status_code, data.decode()

    async def unchanged(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        """Make a request that must fail without touching the store."""
        before = tree(self.root)
        status, data = await self.call(method, path, body, raw)
        assert tree(self.root) == before, f"{method} {path} changed the store"
        return status, data


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def settings(root: Path) -> Settings:
    return Settings(models_dir=root, bundled_model=False)


@pytest.fixture
def api(settings: Settings, root: Path) -> Client:
    store = ModelStore(root, templates=GoTemplateInspector())
    return Client(create_app(Services(settings=settings, store=store)), root)


@pytest.fixture
def tiny(tmp_path: Path) -> bytes:
    return write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()


async def upload(api: Client, data: bytes) -> str:
    digest = sha(data)
    status, _ = await api.call("POST", f"/api/blobs/{digest}", raw=data)
    assert status == 201
    return digest


async def make_tiny(api: Client, tiny: bytes, name: str = "tiny", **extra: Any) -> str:
    digest = await upload(api, tiny)
    status, body = await api.call("POST", "/api/create",
                                  {"model": name, "files": {"tiny.gguf": digest}, "stream": False, **extra})
    assert (status, body) == (200, {"status": "success"})
    return digest


# --- / tags ------------------------------------------------------------------------------------


async def test_tags_empty_and_head(api: Client) -> None:
    assert await api.call("GET", "/api/tags") == (200, {"models": []})
    status, body = await api.call("HEAD", "/api/tags")
    assert status == 200 and body is None
    assert api.last.mimetype == "application/json"


async def test_tags_lists_model_with_ollama_fields(api: Client, tiny: bytes) -> None:
    await make_tiny(api, tiny)
    status, body = await api.call("GET", "/api/tags")
    assert status == 200
    (model,) = body["models"]
    assert model["name"] == model["model"] == "tiny:latest"
    assert model["size"] > len(tiny)
    manifest = (api.root / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
    assert model["digest"] == hashlib.sha256(manifest).hexdigest()
    assert model["details"] == {"parent_model": "tiny.gguf", "format": "gguf", "family": "llama",
                                "families": ["llama"], "parameter_size": "104", "quantization_level": "Q4_0",
                                "context_length": 256, "embedding_length": 8}
    assert model["capabilities"] == ["completion"]
    assert model["modified_at"][:4].isdigit() and "T" in model["modified_at"]


# --- create -----------------------------------------------------------------------------------


async def test_create_streams_ndjson_progress(api: Client, tiny: bytes) -> None:
    digest = await upload(api, tiny)
    status, lines = await api.call("POST", "/api/create", {"model": "tiny", "files": {"tiny.gguf": digest}})
    assert status == 200 and api.last.mimetype == "application/x-ndjson"
    statuses = [line["status"] for line in lines]
    assert statuses[:3] == ["parsing GGUF", f"using existing layer {digest}", "using autodetected template chatml"]
    assert statuses[-2:] == ["writing manifest", "success"]


async def test_create_classic_modelfile_and_deprecated_name(api: Client, tiny: bytes) -> None:
    await make_tiny(api, tiny)
    text = 'FROM tiny\nPARAMETER temperature 0.25\nPARAMETER stop "###"\nSYSTEM """multi\nline"""\n'
    status, body = await api.call("POST", "/api/create", {"name": "classic", "modelfile": text, "stream": False})
    assert (status, body) == (200, {"status": "success"})
    status, shown = await api.call("POST", "/api/show", {"name": "classic"})
    assert shown["system"] == "multi\nline"
    assert 'temperature                    0.25' in shown["parameters"]
    assert 'stop                           "###"' in shown["parameters"]


async def test_create_classic_modelfile_from_server_path(root: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # Server-side paths are read only inside directories the operator opted into.
    settings = Settings(models_dir=root, bundled_model=False, create_paths=(work.resolve(),))
    api = Client(create_app(Services(settings=settings, store=ModelStore(root, templates=GoTemplateInspector()))), root)
    write_tiny_gguf(work / "weights.gguf")
    (work / "Modelfile").write_text("FROM ./weights.gguf\nPARAMETER num_ctx 64\n")
    status, body = await api.call("POST", "/api/create",
                                  {"model": "frompath", "path": str(work / "Modelfile"), "stream": False})
    assert (status, body) == (200, {"status": "success"})
    assert (await api.call("POST", "/api/show", {"model": "frompath"}))[1]["parameters"].startswith("num_ctx")


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"model": "../x", "from": "tiny"}, 400, "invalid model name"),
        ({"model": "a:b:c", "from": "tiny"}, 400, "invalid model name"),
        ({"model": "", "from": "tiny"}, 400, "invalid model name"),
        ({"model": "x" * 81, "from": "tiny"}, 400, "invalid model name"),
        ({"model": "bad name", "from": "tiny"}, 400, "invalid model name"),
        ({"model": "new"}, 400, "neither 'from' or 'files' was specified"),
        ({"model": "new", "from": "missing"}, 404, "model 'missing' not found"),
        ({"model": "new", "from": "bad:name:x"}, 400, "invalid model name"),
        ({"model": "new", "files": {"/abs.gguf": "sha256:" + "0" * 64}}, 400, "file path must be relative"),
        ({"model": "new", "files": {"x.gguf": ""}}, 400, "invalid digest format"),
        ({"model": "new", "files": {"x.gguf": "sha256:" + "0" * 64}}, 400, 'blob "sha256:' + "0" * 64 + '" not found'),
        ({"model": "new", "from": "tiny", "template": "{{ if .Prompt }}"}, 400,
         "template error: template: :1: unexpected EOF"),
        ({"model": "new", "from": "tiny", "parameters": {"num_ctx": "big"}}, 400,
         'option "num_ctx" must be of type integer'),
        ({"model": "new", "modelfile": "FROM tiny\nBOGUS x\n"}, 400,
         '(line 2): command must be one of "from", "license", "template", "system", "adapter", "draft", '
         '"renderer", "parser", "parameter", "message", or "requires"'),
        ({"model": "new", "modelfile": "FROM tiny\nPARAMETER top_k many\n"}, 400, "invalid int value [many]"),
        ({"model": "new", "modelfile": "SYSTEM hi\n"}, 400, "no FROM line"),
        ({"model": "new", "modelfile": "FROM /nonexistent/dir/model.gguf\n"}, 400, SERVER_PATHS_REFUSED),
        ({"model": "new", "modelfile": "FROM /etc/hostname\n"}, 400, SERVER_PATHS_REFUSED),
        ({"model": "new", "modelfile": "FROM tiny\nADAPTER /etc/hostname\n"}, 400, SERVER_PATHS_REFUSED),
        ({"model": "new", "path": "/etc/hostname"}, 400, SERVER_PATHS_REFUSED),
        ({"model": "new", "path": "/nonexistent/Modelfile"}, 400, SERVER_PATHS_REFUSED),
        ({"model": "new", "modelfile": "FROM nothere\n"}, 404, "model 'nothere' not found"),
        ({"model": 5, "from": "tiny"}, 400,
         "json: cannot unmarshal number into Go struct field CreateBody.model of type string"),
        ({"model": "new", "from": "tiny", "license": 5}, 400,
         "json: cannot unmarshal license: must be a string or an array of strings"),
        ({"model": "new", "from": "tiny", "stream": False, "quantize": "q4_K_M"}, 400,
         "quantization is only supported for F16, BF16 and F32 models"),
    ],
)
async def test_create_bad_input(api: Client, tiny: bytes, body: dict, status: int, message: str) -> None:
    await make_tiny(api, tiny)
    got_status, got = await api.unchanged("POST", "/api/create", body)
    assert (got_status, got) == (status, {"error": message})


async def test_create_from_non_gguf_blob(api: Client) -> None:
    digest = await upload(api, b"plain text, not weights")
    for stream in (True, False):
        status, body = await api.unchanged("POST", "/api/create",
                                           {"model": "x", "files": {"x.gguf": digest}, "stream": stream})
        assert (status, body) == (400, {"error": "supplied file was not in GGUF format"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "missing request body"), (b"{not json", "invalid JSON: Expecting property name enclosed in "
                                                    "double quotes at offset 1"),
     (b"[1, 2]", "json: cannot unmarshal array into Go value of type CreateBody")],
)
async def test_create_malformed_body(api: Client, raw: bytes, message: str) -> None:
    assert await api.unchanged("POST", "/api/create", raw=raw) == (400, {"error": message})


# --- show -------------------------------------------------------------------------------------


async def test_show_fields(api: Client, tiny: bytes) -> None:
    await make_tiny(api, tiny, system="Be brief.", parameters={"temperature": 0.5, "num_ctx": 128},
                    license=["MIT", "second license"], messages=[{"role": "user", "content": "hello"}])
    status, body = await api.call("POST", "/api/show", {"model": "TINY"})
    assert status == 200
    assert body["license"] == "MIT\nsecond license"
    assert body["system"] == "Be brief."
    assert body["template"].startswith("{{- if .System }}<|im_start|>system")
    assert body["details"]["quantization_level"] == "Q4_0"
    assert body["messages"] == [{"role": "user", "content": "hello"}]
    assert body["capabilities"] == ["completion"]
    assert body["model_info"]["general.architecture"] == "llama"
    assert body["model_info"]["llama.context_length"] == 256
    assert body["model_info"]["tokenizer.ggml.tokens"] == []
    assert "general.name" not in body["model_info"]
    assert body["tensors"][0] == {"name": "token_embd.weight", "type": "F32", "shape": [8, 12]}
    lines = body["parameters"].split("\n")
    assert 'stop                           "<|im_start|>"' in lines
    assert "temperature                    0.5" in lines
    assert "num_ctx                        128" in lines
    modelfile = body["modelfile"]
    blob = api.root / "blobs" / ("sha256-" + hashlib.sha256(tiny).hexdigest())
    assert modelfile.startswith('# Modelfile generated by "ollama show"\n'
                                "# To build a new Modelfile based on this, replace FROM with:\n"
                                "# FROM tiny:latest\n\n"
                                f"FROM {blob}\nTEMPLATE \"\"\"{{{{- if .System }}")
    assert "\nSYSTEM Be brief.\n" in modelfile
    assert "\nPARAMETER stop <|im_start|>\nPARAMETER stop <|im_end|>\n" in modelfile
    assert "\nLICENSE MIT\nLICENSE second license\n" in modelfile  # no quotes needed
    assert modelfile.endswith("\nMESSAGE user hello\n")


async def test_show_verbose_system_override_and_options(api: Client, tiny: bytes) -> None:
    await make_tiny(api, tiny)
    _, body = await api.call("POST", "/api/show", {"model": "tiny", "verbose": True, "system": "override",
                                                   "options": {"top_k": 3}})
    assert body["model_info"]["tokenizer.ggml.tokens"][:2] == ["<s>", "</s>"]
    assert body["system"] == "override"
    assert "\nPARAMETER top_k 3\n" in body["modelfile"]
    assert "top_k" not in body["parameters"]  # options only show in the printed Modelfile


async def test_show_uses_name_when_model_is_empty(api: Client, tiny: bytes) -> None:
    await make_tiny(api, tiny)
    status, body = await api.call("POST", "/api/show", {"model": "", "name": "tiny"})
    assert status == 200 and body["details"]["family"] == "llama"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({}, 400, "model is required"),
        ({"model": "a:b:c"}, 400, "invalid model name"),
        ({"model": "missing"}, 404, "model 'missing:latest' not found"),
        ({"model": "me/missing:v1"}, 404, "model 'me/missing:v1' not found"),
        ({"model": "tiny", "verbose": "yes"}, 400,
         "json: cannot unmarshal string into Go struct field ShowRequest.verbose of type bool"),
    ],
)
async def test_show_errors(api: Client, body: dict, status: int, message: str) -> None:
    assert await api.unchanged("POST", "/api/show", body) == (status, {"error": message})


# --- copy -------------------------------------------------------------------------------------


async def test_copy(api: Client, tiny: bytes) -> None:
    await make_tiny(api, tiny)
    assert await api.call("POST", "/api/copy", {"source": "tiny", "destination": "me/tiny2:v2"}) == (200, None)
    src = (api.root / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()
    assert (api.root / "manifests/registry.ollama.ai/me/tiny2/v2").read_bytes() == src
    names = [m["name"] for m in (await api.call("GET", "/api/tags"))[1]["models"]]
    assert sorted(names) == ["me/tiny2:v2", "tiny:latest"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"source": "a:b:c", "destination": "ok"}, 400, 'source "a:b:c" is invalid'),
        ({"source": "tiny", "destination": "../evil"}, 400, 'destination "../evil" is invalid'),
        ({"source": "tiny", "destination": ""}, 400, 'destination "" is invalid'),
        ({"source": "tiny", "destination": "x" * 81}, 400, f'destination "{"x" * 81}" is invalid'),
        ({"source": "missing", "destination": "ok"}, 404, 'model "missing" not found'),
    ],
)
async def test_copy_errors(api: Client, tiny: bytes, body: dict, status: int, message: str) -> None:
    await make_tiny(api, tiny)
    assert await api.unchanged("POST", "/api/copy", body) == (status, {"error": message})


# --- delete -----------------------------------------------------------------------------------


async def test_delete(api: Client, tiny: bytes) -> None:
    await make_tiny(api, tiny)
    assert await api.call("DELETE", "/api/delete", {"model": "tiny"}) == (200, None)
    assert await api.call("GET", "/api/tags") == (200, {"models": []})
    assert list((api.root / "blobs").iterdir()) == []  # nothing else referenced them
    assert list((api.root / "manifests").iterdir()) == []


async def test_delete_with_deprecated_name(api: Client, tiny: bytes) -> None:
    await make_tiny(api, tiny)
    assert await api.call("DELETE", "/api/delete", {"name": "Tiny:Latest"}) == (200, None)


@pytest.mark.parametrize(
    ("body", "raw", "status", "message"),
    [
        ({"model": "missing"}, None, 404, "model 'missing' not found"),
        ({"model": "a:b:c"}, None, 400, 'name "a:b:c" is invalid'),
        ({"model": "../x"}, None, 400, 'name "../x" is invalid'),
        ({}, None, 400, "model is required"),
        (None, b"", 400, "missing request body"),
        ({"model": ["tiny"]}, None, 400,
         "json: cannot unmarshal array into Go struct field DeleteRequest.model of type string"),
    ],
)
async def test_delete_errors(api: Client, tiny: bytes, body: Any, raw: bytes | None, status: int,
                             message: str) -> None:
    await make_tiny(api, tiny)
    assert await api.unchanged("DELETE", "/api/delete", body, raw) == (status, {"error": message})


# --- blobs ------------------------------------------------------------------------------------


async def test_blob_upload_and_head(api: Client) -> None:
    data = b"layer bytes"
    digest = sha(data)
    assert (await api.call("HEAD", f"/api/blobs/{digest}"))[0] == 404
    assert await api.call("POST", f"/api/blobs/{digest}", raw=data) == (201, None)
    assert (await api.call("HEAD", f"/api/blobs/{digest}"))[0] == 200
    assert (await api.call("HEAD", f"/api/blobs/{digest.replace(':', '-')}"))[0] == 200
    assert await api.call("POST", f"/api/blobs/{digest}", raw=b"not read") == (200, None)
    assert (api.root / "blobs" / digest.replace(":", "-")).read_bytes() == data


async def test_blob_upload_with_dash_digest(api: Client) -> None:
    data = b"dash form"
    assert await api.call("POST", f"/api/blobs/{sha(data).replace(':', '-')}", raw=data) == (201, None)
    assert (api.root / "blobs" / sha(data).replace(":", "-")).is_file()


async def test_blob_digest_mismatch_leaves_nothing(api: Client) -> None:
    expected = sha(b"what the client claims")
    status, body = await api.unchanged("POST", f"/api/blobs/{expected}", raw=b"what it sent")
    assert status == 400
    assert body == {"error": f'digest mismatch, expected "{expected}", got "{sha(b"what it sent")}"'}
    assert list((api.root / "blobs").iterdir()) == []


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "0" * 64, "sha256:" + "z" * 64, "sha256" + "0" * 64])
async def test_blob_invalid_digest(api: Client, digest: str) -> None:
    assert await api.unchanged("POST", f"/api/blobs/{digest}", raw=b"x") == (400, {"error": "invalid digest format"})
    assert (await api.unchanged("HEAD", f"/api/blobs/{digest}"))[0] == 400


# --- wrong methods and paths ------------------------------------------------------------------


async def test_wrong_method_and_unknown_path(api: Client) -> None:
    assert await api.call("GET", "/api/delete") == (405, "405 method not allowed")
    assert await api.call("GET", "/api/nothing") == (404, "404 page not found")


# --- the whole tree against a hand-written expectation ---------------------------------------


def check_against_expected_tree(root: Path, expected: dict, bindings: dict[str, str]) -> None:
    def bind(placeholder: str, digest: str) -> None:
        if placeholder in bindings:
            assert bindings[placeholder] == digest, f"{placeholder} bound to two digests"
        else:
            assert digest not in bindings.values(), f"{digest} bound to two placeholders"
            bindings[placeholder] = digest

    manifests_dir = root / "manifests"
    found = sorted(p.relative_to(manifests_dir).as_posix() for p in manifests_dir.rglob("*") if p.is_file())
    assert found == sorted(expected["manifests"])
    for relpath, want in expected["manifests"].items():
        raw = (manifests_dir / relpath).read_bytes()
        if "same_bytes_as" in want:
            assert raw == (manifests_dir / want["same_bytes_as"]).read_bytes()
            continue
        got = json.loads(raw)
        for got_layer, want_layer in zip([got["config"], *got["layers"]], [want["config"], *want["layers"]]):
            bind(want_layer["digest"], got_layer["digest"])
            blob = root / "blobs" / got_layer["digest"].replace(":", "-")
            assert got_layer.pop("size") == blob.stat().st_size
        normalized = json.loads(json.dumps(want))
        for layer in [normalized["config"], *normalized["layers"]]:
            layer["digest"] = bindings[layer["digest"]]
        assert got == normalized, relpath
    blobs = sorted(p.name for p in (root / "blobs").iterdir())
    assert blobs == sorted(d.replace(":", "-") for d in bindings.values())
    assert set(bindings) == set(expected["blobs"])
    for placeholder, content in expected["blobs"].items():
        data = (root / "blobs" / bindings[placeholder].replace(":", "-")).read_bytes()
        assert sha(data) == bindings[placeholder]
        if content is not None:
            assert data.decode() == content, placeholder


async def test_store_written_through_api_matches_expected_tree(api: Client, tiny: bytes) -> None:
    expected = json.loads((DATA / "expected_tree.json").read_text())
    model = await upload(api, tiny)
    steps = [
        ("POST", "/api/create", {"model": "tiny", "files": {"tiny.gguf": model}, "system": "You are terse.",
                                 "parameters": {"temperature": 0.5}, "stream": False}),
        ("POST", "/api/copy", {"source": "tiny", "destination": "example.com:5000/team/tiny-copy:v1"}),
        ("POST", "/api/create", {"name": "tiny-derived:7b", "from": "tiny", "template": "{{ .Prompt }}",
                                 "messages": [{"role": "user", "content": "hi"}], "stream": False}),
        ("POST", "/api/create", {"model": "scratch", "from": "tiny", "stream": False}),
        ("DELETE", "/api/delete", {"model": "scratch"}),
    ]
    for method, path, body in steps:
        status, _ = await api.call(method, path, body)
        assert status == 200, (path, body)
    check_against_expected_tree(api.root, expected, {"$model": model})
