"""Pull and push against a real (fake) registry over HTTP, with the store on disk."""

from __future__ import annotations

import json
import os
import stat

import pytest
import trio

from fake_registry import FakeRegistry
from trillama.registry import Registry, RegistryError, TransferPolicy
from trillama.store import ModelStore
from trillama.store.names import ModelName

MODEL = "application/vnd.ollama.image.model"
PARAMS = "application/vnd.ollama.image.params"
POLICY = TransferPolicy(min_part_size=16 * 1024, max_part_size=1 << 20, backoff_base=0.01,
                        state_interval=0.01)


def weights(n: int, seed: int = 0) -> bytes:
    return bytes((i * 131 + seed * 7 + (i >> 9)) % 251 for i in range(n))


@pytest.fixture
def fake():
    with FakeRegistry() as registry:
        yield registry


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "models")


@pytest.fixture
async def service(store, tmp_path, nursery):
    registry = Registry(store, tmp_path / "home" / ".ollama" / "id_ed25519", policy=POLICY, tick=0.005)
    await nursery.start(registry.run)
    return registry


async def collect(lines) -> list[dict]:
    return [line.to_json() async for line in lines]


def name(fake: FakeRegistry, repo: str = "library/tiny", tag: str = "latest") -> ModelName:
    return ModelName.parse(f"{fake.host}/{repo}:{tag}")


def leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.blobs_dir.iterdir() if "partial" in p.name or p.name.startswith("."))


async def test_pull_writes_blobs_and_the_manifest_bytes_as_sent(fake, store, service):
    data = weights(100_000)
    manifest = fake.add_model("library/tiny", "latest", [(MODEL, data), (PARAMS, b'{"temperature":0}')])
    lines = await collect(service.pull(name(fake), insecure=True))
    statuses = [line["status"] for line in lines]
    layer = json.loads(manifest)["layers"][0]
    assert statuses[0] == "pulling manifest"
    config = json.loads(manifest)["config"]["digest"]
    assert statuses[-4:] == [f"pulling {config[7:19]}", "verifying sha256 digest", "writing manifest",
                             "success"]
    model_lines = [line for line in lines if line.get("digest") == layer["digest"]]
    assert model_lines[0]["status"] == "pulling " + layer["digest"][7:19]
    assert model_lines[-1]["completed"] == model_lines[-1]["total"] == len(data)
    assert all("completed" not in line or line["completed"] <= line["total"] for line in lines)
    assert store.blob_path(layer["digest"]).read_bytes() == data
    written = store.manifest_path(name(fake)).read_bytes()
    assert written == manifest
    assert leftovers(store) == []
    # one pass in several parts, and the one byte that asked where the blob is served
    assert fake.served[layer["digest"]] == len(data) + 1


async def test_parts_cut_mid_transfer_resume_where_they_stopped(fake, store, service):
    fake.redirect_blobs = True
    data = weights(200_000, seed=3)
    manifest = fake.add_model("library/tiny", "latest", [(MODEL, data)])
    digest = json.loads(manifest)["layers"][0]["digest"]
    fake.cut_after[digest] = 5_000
    await collect(service.pull(name(fake), insecure=True))
    assert store.blob_path(digest).read_bytes() == data
    # the cut part was asked again only from where it stopped
    assert fake.served[digest] == len(data)
    assert any(path.startswith("/storage/") for _, path in fake.requests)


async def test_a_cancelled_pull_keeps_its_partial_file_and_the_next_resumes_it(fake, store, service):
    fake.chunk, fake.chunk_delay, fake.redirect_blobs = 1024, 0.02, True
    data = weights(300_000, seed=5)
    manifest = fake.add_model("library/tiny", "latest", [(MODEL, data)])
    digest = json.loads(manifest)["layers"][0]["digest"]
    pulling = service.pull(name(fake), insecure=True)
    async for line in pulling:  # the client goes away once some bytes have come
        if line.completed:
            break
    await pulling.aclose()
    while fake.served[digest] == 0 or service._downloads:  # the download stops: nobody follows it
        await trio.sleep(0.01)
    partial = store.blob_path(digest).with_name(store.blob_path(digest).name + "-partial")
    assert partial.exists() and not store.has_blob(digest)
    first = fake.served[digest]
    assert 0 < first < len(data)
    fake.chunk_delay = 0
    lines = await collect(service.pull(name(fake), insecure=True))
    assert lines[-1] == {"status": "success"}
    assert store.blob_path(digest).read_bytes() == data
    # only the missing ranges came again (a part may repeat what was in flight when it stopped)
    assert fake.served[digest] <= len(data) + 16 * 1024 * 2
    assert leftovers(store) == []


async def test_two_pulls_of_one_blob_share_one_download(fake, store, service):
    fake.chunk, fake.chunk_delay = 1024, 0.02  # the download lasts ~0.2 s: both pulls see it running
    data = weights(150_000, seed=7)
    first = fake.add_model("library/one", "latest", [(MODEL, data)])
    fake.add_model("library/two", "latest", [(MODEL, data), (PARAMS, b'{"top_k":5}')])
    results = {}

    async def pull(repo: str) -> None:
        results[repo] = await collect(service.pull(name(fake, repo), insecure=True))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull, "library/one")
        nursery.start_soon(pull, "library/two")
    assert results["library/one"][-1] == results["library/two"][-1] == {"status": "success"}
    digest = json.loads(first)["layers"][0]["digest"]
    for lines in results.values():  # each followed the download while it ran...
        assert any(0 < line.get("completed", 0) < len(data) for line in lines if line.get("digest") == digest)
    assert fake.served[digest] == len(data) + 1  # ...and it ran once


async def test_a_corrupt_blob_is_deleted_and_the_pull_fails(fake, store, service):
    data = weights(50_000, seed=9)
    manifest = fake.add_model("library/tiny", "latest", [(MODEL, data)])
    digest = json.loads(manifest)["layers"][0]["digest"]
    fake.corrupt.add(digest)
    with pytest.raises(RegistryError, match=f"digest mismatch, file must be downloaded again: want {digest}, got sha256:"):
        await collect(service.pull(name(fake), insecure=True))
    assert not store.has_blob(digest) and leftovers(store) == []
    assert store.find_existing(name(fake)) is None


async def test_registry_errors_read_as_ollamas(fake, store, service):
    with pytest.raises(RegistryError, match="^pull model manifest: file does not exist$"):
        await collect(service.pull(name(fake, "library/missing"), insecure=True))
    with pytest.raises(RegistryError, match="^insecure protocol http$"):
        await collect(service.pull(ModelName.parse(f"http://{fake.host}/library/tiny:latest")))
    fake.manifests[("library/bad", "latest")] = b'{"schemaVersion":2,"layers":[{"digest":"../../etc","size":1}]}'
    with pytest.raises(RegistryError, match="invalid digest"):
        await collect(service.pull(name(fake, "library/bad"), insecure=True))
    assert list(store.manifests_dir.iterdir()) == []


async def test_tokens_are_requested_with_a_signed_key_as_ollama_does(fake, store, service, tmp_path):
    fake.require_auth = True
    fake.add_model("library/tiny", "latest", [(MODEL, weights(20_000))])
    lines = await collect(service.pull(name(fake), insecure=True))
    assert lines[-1] == {"status": "success"}
    assert len(fake.token_requests) == 1  # one token serves the whole pull
    url = fake.token_requests[0]
    assert "scope=repository%3Alibrary%2Ftiny%3Apull" in url and "service=fake" in url and "nonce=" in url
    key = tmp_path / "home" / ".ollama" / "id_ed25519"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert key.with_name("id_ed25519.pub").read_text().startswith("ssh-ed25519 AAAA")


async def test_a_key_the_registry_refuses_is_unauthorized(fake, store, service):
    fake.require_auth, fake.allowed_keys = True, {"someone-else"}
    fake.add_model("library/tiny", "latest", [(MODEL, b"x")])
    with pytest.raises(RegistryError, match="unauthorized"):
        await collect(service.pull(name(fake), insecure=True))


async def test_a_realm_on_another_host_is_refused(fake, store, service):
    fake.require_auth, fake.realm_host = True, "evil.example:80"
    fake.add_model("library/tiny", "latest", [(MODEL, b"x")])
    with pytest.raises(RegistryError, match='realm host "evil.example:80" does not match original host'):
        await collect(service.pull(name(fake), insecure=True))
    assert fake.token_requests == []


async def test_pulling_a_new_version_removes_layers_nothing_uses(fake, store, service):
    old = fake.add_model("library/tiny", "latest", [(MODEL, weights(10_000, seed=1))])
    await collect(service.pull(name(fake), insecure=True))
    old_digest = json.loads(old)["layers"][0]["digest"]
    assert store.has_blob(old_digest)
    fake.add_model("library/tiny", "latest", [(MODEL, weights(10_000, seed=2))])
    statuses = [line["status"] for line in await collect(service.pull(name(fake), insecure=True))]
    assert "removing unused layers" in statuses
    assert not store.has_blob(old_digest)


async def test_an_unchanged_pull_downloads_nothing(fake, store, service):
    manifest = fake.add_model("library/tiny", "latest", [(MODEL, weights(10_000))])
    await collect(service.pull(name(fake), insecure=True))
    served = sum(fake.served.values())
    lines = await collect(service.pull(name(fake), insecure=True))
    assert sum(fake.served.values()) == served
    layer = json.loads(manifest)["layers"][0]
    assert {"status": f"pulling {layer['digest'][7:19]}", "digest": layer["digest"],
            "total": layer["size"], "completed": layer["size"]} in lines
    assert "removing unused layers" not in [line["status"] for line in lines]


async def test_push_sends_every_blob_in_parts_then_the_manifest(fake, store, service, tmp_path):
    data = weights(70_000, seed=11)
    source = tmp_path / "w.bin"
    source.write_bytes(data)
    digest, _ = store.import_file(source)
    config_digest, _ = store.write_blob_bytes(b'{"model_format":"gguf"}')
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": config_digest, "size": 23},
                "layers": [{"mediaType": MODEL, "digest": digest, "size": len(data)}]}
    body = json.dumps(manifest).encode()
    target = name(fake, "me/tiny", "v1")
    store.write_manifest_bytes(target, body)
    lines = await collect(service.push(target, insecure=True))
    assert lines[0] == {"status": "retrieving manifest"}
    assert lines[-2:] == [{"status": "pushing manifest"}, {"status": "success"}]
    assert {"status": f"pushing {digest[7:19]}", "digest": digest, "total": len(data),
            "completed": len(data)} in lines
    assert fake.blobs[digest] == data
    assert fake.manifests[("me/tiny", "v1")] == body
    patches = [path for method, path in fake.requests if method == "PATCH"]
    assert len(patches) == 5 + 1  # 70 000 bytes in 16 KiB parts, and the config in one
    # a second push finds every blob there and sends none
    fake.requests.clear()
    await collect(service.push(target, insecure=True))
    assert not [m for m, _ in fake.requests if m in ("POST", "PATCH")]


async def test_push_of_a_missing_model_says_so(fake, service):
    lines = []
    with pytest.raises(RegistryError, match='model ".*nothing:latest" not found'):
        async for line in service.push(name(fake, "me/nothing"), insecure=True):
            lines.append(line.to_json())
    assert lines == [{"status": "retrieving manifest"}, {"status": "couldn't retrieve manifest"}]


async def test_push_without_a_token_for_the_namespace_is_unauthorized(fake, store, service):
    fake.require_auth, fake.allowed_keys = True, set()
    config_digest, _ = store.write_blob_bytes(b"{}")
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                       "config": {"mediaType": "x", "digest": config_digest, "size": 2}, "layers": []}).encode()
    store.write_manifest_bytes(name(fake, "me/tiny"), body)
    with pytest.raises(RegistryError, match="unauthorized: access denied"):
        await collect(service.push(name(fake, "me/tiny"), insecure=True))
    assert os.path.exists(store.manifest_path(name(fake, "me/tiny")))


def test_a_challenge_becomes_the_token_url_ollama_builds():
    from trillama.registry.auth import Challenge

    challenge = Challenge.parse('Bearer realm="https://r.example/token",service="r.example",'
                                'scope="repository:me/m:pull repository:me/n:pull"')
    assert challenge == Challenge("https://r.example/token", "r.example",
                                  "repository:me/m:pull repository:me/n:pull")
    assert challenge.token_url(now=1700000000, nonce="abc") == (
        "https://r.example/token?nonce=abc&scope=repository%3Ame%2Fm%3Apull"
        "&scope=repository%3Ame%2Fn%3Apull&service=r.example&ts=1700000000")
    assert Challenge.parse('Basic realm="x"') is None
    assert Challenge.parse("Bearer service=x") is None


def test_the_key_signs_what_the_registry_verifies(tmp_path):
    import base64

    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    from trillama.registry.auth import Keypair, signed_request_text

    key = Keypair(tmp_path / "id_ed25519")
    header = key.authorization(signed_request_text("https://r.example/token?nonce=1"))
    public, signature = header.split(":")
    assert (tmp_path / "id_ed25519.pub").read_text().split()[1] == public
    verifier = load_ssh_public_key(f"ssh-ed25519 {public}".encode())
    verifier.verify(base64.b64decode(signature), signed_request_text("https://r.example/token?nonce=1"))
    # the same file is read back, not replaced
    assert Keypair(tmp_path / "id_ed25519").public_key == public


async def test_an_unreachable_registry_is_a_clear_error(store, service):
    with pytest.raises(RegistryError, match=r"^pull model manifest: GET http://127\.0\.0\.1:9/v2/library/x/manifests/latest: "):
        await collect(service.pull(ModelName.parse("127.0.0.1:9/library/x"), insecure=True))
