"""The model store on disk: blobs, manifests, create/copy/delete, prune and crash recovery."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_store_gguf import write_tiny_gguf

from trillama.actors.prompt.inspector import GoTemplateInspector
from trillama.store import (
    CreateRequest,
    DigestMismatch,
    InvalidDigest,
    InvalidName,
    InvalidRequest,
    ModelNotFound,
    ModelStore,
    NotGGUF,
    parse_modelfile,
    request_from_modelfile,
)
from trillama.store.atomic import TEMP_PREFIX
from trillama.store.manifest import Manifest


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` with its content: the whole observable state of a store."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", templates=GoTemplateInspector())


@pytest.fixture
def gguf_digest(store: ModelStore, tmp_path: Path) -> str:
    data = write_tiny_gguf(tmp_path / "tiny.gguf").read_bytes()
    digest = sha(data)
    assert store.write_blob(digest, [data[:100], data[100:]]) is True
    return digest


def create(store: ModelStore, name: str, **fields) -> list[dict]:
    return list(store.create(name, CreateRequest(**fields)))


# --- blobs ------------------------------------------------------------------------------------


def test_write_blob_names_file_by_digest(store: ModelStore) -> None:
    data = b"some layer"
    assert store.write_blob(sha(data), [data])
    path = store.root / "blobs" / ("sha256-" + hashlib.sha256(data).hexdigest())
    assert path.read_bytes() == data
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert store.write_blob(sha(data), [data]) is False  # already there


def test_digest_mismatch_leaves_nothing(store: ModelStore) -> None:
    before = tree(store.root)
    with pytest.raises(DigestMismatch) as err:
        store.write_blob(sha(b"expected"), [b"something else"])
    assert err.value.got == sha(b"something else")
    assert tree(store.root) == before
    assert not list((store.root / "blobs").iterdir())


def test_failed_write_leaves_no_temp_file(store: ModelStore) -> None:
    def chunks():
        yield b"partial"
        raise OSError("client went away")

    with pytest.raises(OSError):
        store.write_blob(sha(b"x"), chunks())
    assert not list((store.root / "blobs").iterdir())


@pytest.mark.parametrize("digest", ["sha256:abc", "md5:" + "0" * 64, "sha256-" + "g" * 64, ""])
def test_invalid_digest(store: ModelStore, digest: str) -> None:
    with pytest.raises(InvalidDigest, match="invalid digest format"):
        store.write_blob(digest, [b""])


def test_both_digest_spellings_name_one_blob(store: ModelStore) -> None:
    data = b"abc"
    store.write_blob(sha(data).replace(":", "-"), [data])
    assert store.has_blob(sha(data))


# --- create and the on-disk layout ------------------------------------------------------------


def test_create_from_gguf_writes_ollama_layout(store: ModelStore, gguf_digest: str) -> None:
    progress = create(store, "tiny", files={"tiny.gguf": gguf_digest})
    statuses = [p["status"] for p in progress]
    assert statuses[0] == "parsing GGUF"
    assert statuses[1] == f"using existing layer {gguf_digest}"
    assert statuses[2] == "using autodetected template chatml"
    assert statuses[-2:] == ["writing manifest", "success"]

    path = store.root / "manifests/registry.ollama.ai/library/tiny/latest"
    raw = path.read_bytes()
    assert raw.startswith(b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"')
    assert raw.endswith(b"}\n") and b" " not in raw  # Go's compact encoder
    manifest = json.loads(raw)
    media = [layer["mediaType"] for layer in manifest["layers"]]
    assert media == ["application/vnd.ollama.image.model", "application/vnd.ollama.image.template",
                     "application/vnd.ollama.image.params"]
    assert manifest["layers"][0]["from"] == "tiny.gguf"
    for layer in manifest["layers"] + [manifest["config"]]:
        blob = store.root / "blobs" / layer["digest"].replace(":", "-")
        assert blob.stat().st_size == layer["size"]
        assert sha(blob.read_bytes()) == layer["digest"]
    config = (store.root / "blobs" / manifest["config"]["digest"].replace(":", "-")).read_bytes()
    assert config == (b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],'
                      b'"model_type":"104","file_type":"Q4_0","architecture":"amd64","os":"linux"}\n')
    params = (store.root / "blobs" / manifest["layers"][2]["digest"].replace(":", "-")).read_bytes()
    assert params == b'{"stop":["\\u003c|im_start|\\u003e","\\u003c|im_end|\\u003e"]}\n'


def test_resolve_record(store: ModelStore, gguf_digest: str) -> None:
    create(store, "tiny", files={"tiny.gguf": gguf_digest}, system="Be terse.",
           parameters={"temperature": 0.5, "stop": ["<eot>"]}, license=("MIT",),
           messages=({"role": "user", "content": "hi"},))
    record = store.resolve("tiny")
    assert record.name.display == "tiny:latest"
    assert record.model_path == store.blob_path(gguf_digest)
    assert record.system == "Be terse."
    assert record.parameters == {"stop": ["<eot>"], "temperature": 0.5}  # request stop replaces detected
    assert record.messages == [{"role": "user", "content": "hi"}]
    assert record.license == ["MIT"]
    assert record.template is not None and "<|im_start|>" in record.template
    assert record.capabilities == ["completion"]
    assert record.details == {"parent_model": "tiny.gguf", "format": "gguf", "family": "llama",
                              "families": ["llama"], "parameter_size": "104", "quantization_level": "Q4_0"}
    assert record.digest == hashlib.sha256(
        (store.root / "manifests/registry.ollama.ai/library/tiny/latest").read_bytes()).hexdigest()
    assert record.size == sum(layer.size for layer in record.manifest.layers) + record.manifest.config.size
    assert record.gguf_info().context_length == 256
    assert record.config["model_family"] == "llama"


def test_lookup_ignores_case_and_keeps_stored_spelling(store: ModelStore, gguf_digest: str) -> None:
    create(store, "Tiny:Q4", files={"tiny.gguf": gguf_digest})
    assert store.resolve("tiny:q4").name.model == "Tiny"
    create(store, "TINY:other", files={"tiny.gguf": gguf_digest})  # lands in the same directory
    models = sorted(os.listdir(store.root / "manifests/registry.ollama.ai/library"))
    assert models == ["Tiny"]
    with pytest.raises(ModelNotFound, match="model 'tiny:nope' not found"):
        store.resolve("tiny:nope")
    with pytest.raises(InvalidName):
        store.resolve("a:b:c")


def test_create_from_model_inherits_and_replaces(store: ModelStore, gguf_digest: str) -> None:
    create(store, "base", files={"tiny.gguf": gguf_digest}, system="old", parameters={"top_k": 5})
    progress = create(store, "child", from_="base", system="new", parameters={"temperature": 0.1},
                      template="{{ .Prompt }}")
    assert all(p["status"] != "parsing GGUF" for p in progress)
    child = store.resolve("child")
    assert child.system == "new" and child.template == "{{ .Prompt }}"
    assert child.parameters == {"stop": ["<|im_start|>", "<|im_end|>"], "top_k": 5, "temperature": 0.1}
    assert child.parent_model == "base:latest"
    assert child.model_path == store.resolve("base").model_path


def test_a_projector_can_join_an_existing_model(store: ModelStore, gguf_digest: str, tmp_path: Path) -> None:
    from tiny_projector import write_tiny_projector

    def blob(path: Path) -> str:
        data = path.read_bytes()
        store.write_blob(sha(data), [data])
        return sha(data)

    first = blob(write_tiny_projector(tmp_path / "mmproj-a.gguf", text_embd=8, seed=1))
    second = blob(write_tiny_projector(tmp_path / "mmproj-b.gguf", text_embd=8, seed=2))
    create(store, "base", files={"tiny.gguf": gguf_digest})
    assert "vision" not in store.resolve("base").capabilities
    # what `FROM base` + `FROM ./mmproj-a.gguf` sends (Ollama would drop the file)
    create(store, "seeing", from_="base", files={"mmproj-a.gguf": first})
    seeing = store.resolve("seeing")
    assert "vision" in seeing.capabilities
    assert seeing.model_path == store.resolve("base").model_path
    assert [p.name for p in seeing.projector_paths] == ["sha256-" + first.split(":")[1]]
    # a new projector replaces the inherited one rather than adding a second
    create(store, "seeing2", from_="seeing", files={"mmproj-b.gguf": second})
    assert [p.name for p in store.resolve("seeing2").projector_paths] == ["sha256-" + second.split(":")[1]]
    before = tree(store.root)
    with pytest.raises(InvalidRequest, match="a model has one set of weights"):
        create(store, "two-models", from_="base", files={"tiny.gguf": gguf_digest})
    assert tree(store.root) == before


TOOLS_AND_SUFFIX = "{{ if .Tools }}{{ json .Tools }}{{ end }}{{ .Prompt }}{{ .Suffix }}"


def test_template_capabilities_come_from_the_inspector(store: ModelStore, gguf_digest: str) -> None:
    create(store, "coder", files={"tiny.gguf": gguf_digest}, template=TOOLS_AND_SUFFIX)
    assert store.resolve("coder").capabilities == ["completion", "tools", "insert"]
    assert [entry.capabilities for entry in store.list_models()] == [["completion", "tools", "insert"]]


def test_store_without_inspector_trusts_templates(store: ModelStore, gguf_digest: str) -> None:
    """Alone, the store cannot parse Go templates: it takes them as given and reads nothing from them."""
    bare = ModelStore(store.root)
    create(bare, "trusted", files={"tiny.gguf": gguf_digest}, template="{{ if .Tools }}")
    create(bare, "coder", files={"tiny.gguf": gguf_digest}, template=TOOLS_AND_SUFFIX)
    assert bare.resolve("trusted").template == "{{ if .Tools }}"
    assert bare.resolve("coder").capabilities == ["completion"]
    # The same files read through the real parser: the broken one enables nothing, and still lists.
    assert store.resolve("trusted").capabilities == ["completion"]
    assert store.resolve("coder").capabilities == ["completion", "tools", "insert"]


def test_recreate_prunes_layers_only_the_old_manifest_used(store: ModelStore, gguf_digest: str) -> None:
    create(store, "m", files={"tiny.gguf": gguf_digest}, system="first")
    old_system = store.resolve("m").manifest.layers_of("application/vnd.ollama.image.system")[0].digest
    create(store, "m", files={"tiny.gguf": gguf_digest}, system="second")
    assert not store.has_blob(old_system)
    assert store.has_blob(gguf_digest)


def test_recreate_without_prune_keeps_old_layers(store: ModelStore, gguf_digest: str) -> None:
    create(store, "m", files={"tiny.gguf": gguf_digest}, system="first")
    old_system = store.resolve("m").manifest.layers_of("application/vnd.ollama.image.system")[0].digest
    list(store.create("m", CreateRequest(files={"tiny.gguf": gguf_digest}, system="second"), prune=False))
    assert store.has_blob(old_system)


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({}, InvalidRequest, "neither 'from' or 'files' was specified"),
        ({"from_": "missing"}, ModelNotFound, "model 'missing' not found"),
        ({"from_": "a:b:c"}, InvalidRequest, "invalid model name"),
        ({"files": {"../x.gguf": "sha256:" + "0" * 64}}, InvalidRequest, "file path must be relative"),
        ({"files": {"x.gguf": ""}}, InvalidRequest, "invalid digest format"),
        ({"files": {"x.gguf": "sha256:nothex"}}, InvalidRequest, "invalid digest format"),
        ({"files": {"x.gguf": "sha256:" + "0" * 64}}, InvalidRequest, 'blob "sha256:' + "0" * 64 + '" not found'),
        ({"template": "{{ if .System }}"}, InvalidRequest, "template error: template: :1: unexpected EOF"),
        ({"parameters": {"temperature": "hot"}}, InvalidRequest, 'option "temperature" must be of type float32'),
        ({"quantize": "q4_K_M"}, InvalidRequest, "quantization is only supported for F16, BF16 and F32 models"),
        ({"quantize": "q9"}, InvalidRequest, "unsupported quantization type Q9"),
        ({"info": {"context_length": -1}}, InvalidRequest, 'info field "context_length" must be a non-negative integer'),
    ],
)
def test_bad_create_changes_nothing(store: ModelStore, gguf_digest: str, fields: dict, error: type,
                                    message: str) -> None:
    if "template" in fields or "parameters" in fields or "quantize" in fields or "info" in fields:
        fields = {"files": {"tiny.gguf": gguf_digest}, **fields}
    before = tree(store.root)
    with pytest.raises(error) as err:
        create(store, "new", **fields)
    assert str(err.value).startswith(message)
    assert tree(store.root) == before


def test_create_from_a_file_that_is_not_gguf(store: ModelStore) -> None:
    data = b"just some text"
    store.write_blob(sha(data), [data])
    before = tree(store.root)
    with pytest.raises(NotGGUF, match="supplied file was not in GGUF format"):
        create(store, "x", files={"notes.gguf": sha(data)})
    assert tree(store.root) == before


def test_only_one_adapter(store: ModelStore, gguf_digest: str) -> None:
    with pytest.raises(InvalidRequest, match="only one adapter is currently supported"):
        create(store, "x", files={"tiny.gguf": gguf_digest},
               adapters={"a.gguf": gguf_digest, "b.gguf": gguf_digest})


def test_adapter_layer(store: ModelStore, gguf_digest: str, tmp_path: Path) -> None:
    adapter = write_tiny_gguf(tmp_path / "lora.gguf", kind="adapter").read_bytes()
    store.write_blob(sha(adapter), [adapter])
    create(store, "with-lora", files={"tiny.gguf": gguf_digest}, adapters={"lora.gguf": sha(adapter)})
    record = store.resolve("with-lora")
    assert record.adapter_paths == (store.blob_path(sha(adapter)),)


# --- classic Modelfile create -------------------------------------------------------------------


def test_classic_modelfile_from_path(store: ModelStore, tmp_path: Path) -> None:
    model_dir = tmp_path / "work"
    model_dir.mkdir()
    write_tiny_gguf(model_dir / "weights.gguf")
    text = 'FROM ./weights.gguf\nPARAMETER num_ctx 128\nSYSTEM """Line one\nLine two"""\n'
    request = request_from_modelfile(parse_modelfile(text), store, model_dir)
    progress = list(store.create("classic", request))
    assert progress[-1] == {"status": "success"}
    record = store.resolve("classic")
    assert record.system == "Line one\nLine two"
    assert record.parameters["num_ctx"] == 128
    assert record.model_path.read_bytes() == (model_dir / "weights.gguf").read_bytes()


def test_classic_modelfile_from_directory_and_model(store: ModelStore, tmp_path: Path) -> None:
    model_dir = tmp_path / "dir"
    model_dir.mkdir()
    write_tiny_gguf(model_dir / "a.gguf")
    list(store.create("fromdir", request_from_modelfile(parse_modelfile("FROM .\n"), store, model_dir)))
    request = request_from_modelfile(parse_modelfile("FROM FromDir\nPARAMETER top_k 1\n"), store, tmp_path)
    assert request.from_ == "FromDir"
    list(store.create("child", request))
    assert store.resolve("child").parameters["top_k"] == 1


def test_classic_modelfile_bad_reference(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"invalid model reference: \./missing\.gguf"):
        request_from_modelfile(parse_modelfile("FROM ./missing.gguf\n"), store, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidRequest, match="no Modelfile or safetensors files found"):
        request_from_modelfile(parse_modelfile("FROM .\n"), store, empty)


# --- copy, delete, list -----------------------------------------------------------------------


def test_copy_shares_blobs_and_copies_bytes(store: ModelStore, gguf_digest: str) -> None:
    create(store, "src", files={"tiny.gguf": gguf_digest})
    blobs_before = sorted(os.listdir(store.root / "blobs"))
    store.copy("src", "example.com:5000/team/dst:v1")
    src = store.root / "manifests/registry.ollama.ai/library/src/latest"
    dst = store.root / "manifests/example.com:5000/team/dst/v1"
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(os.listdir(store.root / "blobs")) == blobs_before
    with pytest.raises(ModelNotFound, match='model "nope" not found'):
        store.copy("nope", "other")


def test_delete_removes_unshared_blobs_and_empty_dirs(store: ModelStore, gguf_digest: str) -> None:
    create(store, "one", files={"tiny.gguf": gguf_digest}, system="only in one")
    create(store, "two", files={"tiny.gguf": gguf_digest})
    only_one = store.resolve("one").manifest.layers_of("application/vnd.ollama.image.system")[0].digest
    store.delete("ONE")
    assert not (store.root / "manifests/registry.ollama.ai/library/one").exists()
    assert not store.has_blob(only_one)
    assert store.has_blob(gguf_digest)  # still used by "two"
    store.delete("two")
    assert not store.has_blob(gguf_digest)
    assert not any((store.root / "manifests").iterdir())
    with pytest.raises(ModelNotFound, match="model 'two' not found"):
        store.delete("two")


def test_list_models_newest_first(store: ModelStore, gguf_digest: str) -> None:
    create(store, "older", files={"tiny.gguf": gguf_digest})
    older = store.root / "manifests/registry.ollama.ai/library/older/latest"
    os.utime(older, (time.time() - 100, time.time() - 100))
    create(store, "newer", files={"tiny.gguf": gguf_digest})
    entries = store.list_models()
    assert [e.name.display for e in entries] == ["newer:latest", "older:latest"]
    assert entries[0].details["context_length"] == 256
    assert entries[0].details["embedding_length"] == 8


def test_unreadable_manifest_does_not_hide_others(store: ModelStore, gguf_digest: str) -> None:
    create(store, "good", files={"tiny.gguf": gguf_digest})
    bad = store.root / "manifests/registry.ollama.ai/library/bad/latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    assert [e.name.display for e in store.list_models()] == ["good:latest"]


# --- prune and recover ------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_prune_removes_old_unreferenced_blobs_only(store: ModelStore, gguf_digest: str) -> None:
    create(store, "kept", files={"tiny.gguf": gguf_digest})
    fresh = b"uploaded just now"
    stale = b"uploaded long ago"
    store.write_blob(sha(fresh), [fresh])
    store.write_blob(sha(stale), [stale])
    partial = store.root / "blobs" / ("sha256-" + "a" * 64 + "-partial")
    partial.write_bytes(b"x")
    for path in (store.root / "blobs").iterdir():
        _age(path, 7200)
    _age(store.blob_path(sha(fresh)), 10)
    assert store.prune() == 2
    assert store.has_blob(sha(fresh))
    assert not store.has_blob(sha(stale))
    assert not partial.exists()
    store.resolve("kept")  # every referenced blob survived


def test_prune_skipped_when_a_manifest_is_corrupt(store: ModelStore) -> None:
    stale = b"orphan"
    store.write_blob(sha(stale), [stale])
    _age(store.blob_path(sha(stale)), 7200)
    bad = store.root / "manifests/registry.ollama.ai/library/bad/latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{")
    assert store.prune() == 0
    assert store.has_blob(sha(stale))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recover_removes_orphan_temp_files_of_dead_writers(store: ModelStore, gguf_digest: str) -> None:
    create(store, "m", files={"tiny.gguf": gguf_digest})
    dead = _dead_pid()
    orphan_blob = store.root / "blobs" / f"{TEMP_PREFIX}{dead}-abcdef"
    orphan_manifest = store.root / "manifests/registry.ollama.ai/library/m" / f"{TEMP_PREFIX}{dead}-123456"
    orphan_blob.write_bytes(b"half a model")
    orphan_manifest.write_bytes(b'{"schemaVersion":2,')
    ours = store.root / "blobs" / f"{TEMP_PREFIX}{os.getpid()}-live"
    ours.write_bytes(b"being written")
    assert store.recover() == 2
    assert not orphan_blob.exists() and not orphan_manifest.exists()
    assert ours.exists()  # a live writer's file is left alone
    assert [e.name.display for e in store.list_models()] == ["m:latest"]


def test_recover_treats_a_reused_pid_as_dead(store: ModelStore) -> None:
    # Written (by its mtime) long before the process that now has this pid started.
    stale = store.root / "blobs" / f"{TEMP_PREFIX}{os.getpid()}-from-a-previous-life"
    stale.write_bytes(b"x")
    _age(stale, 30 * 24 * 3600)
    assert store.recover() == 1
    assert not stale.exists()


def test_temp_files_are_invisible_to_listing(store: ModelStore, gguf_digest: str) -> None:
    create(store, "m", files={"tiny.gguf": gguf_digest})
    (store.root / "manifests/registry.ollama.ai/library/m" / f"{TEMP_PREFIX}1-x").write_bytes(b"{")
    assert [e.name.display for e in store.list_models()] == ["m:latest"]


def test_recover_renames_legacy_colon_blob_names(store: ModelStore) -> None:
    data = b"legacy"
    legacy = store.root / "blobs" / sha(data)
    legacy.write_bytes(data)
    store.recover()
    assert store.has_blob(sha(data)) and not legacy.exists()


def test_manifest_round_trip() -> None:
    raw = (b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
           b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:c","size":1},'
           b'"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:m","size":2,'
           b'"from":"x:latest"}]}\n')
    assert Manifest.from_bytes(raw).to_bytes() == raw
