"""The real coding agents for the end-to-end tests: pinned npm releases, installed once per machine,
a tools template for the test model, and a recording proxy between an agent and the server.

* :func:`install` puts one pinned release of Claude Code, Codex CLI or opencode under
  ``$TRILLAMA_TEST_CACHE/npm`` (default ``~/.cache/trillama-tests/npm``) with ``npm install`` and
  returns its ``node_modules/.bin``; a machine pays the download once per version. It skips the test,
  with the reason, only when the install cannot work here (no npm, or npm cannot fetch the package).
* :data:`GEMMA_TOOLS_TEMPLATE` is a Gemma chat template that shows tools and reads calls back as
  ``<tool_call>`` (gemma3:270m's own template declares no tools, and every agent sends tools).
* :class:`RecordingProxy` forwards every request to the server unchanged, streams the answer back
  unchanged, and keeps each request (method, path, headers, JSON body) and the answer's status.
  The recordings stay in the test's temporary directory: their prompt text is the vendors'.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest

from conftest import cache_dir

__all__ = ["AGENTS", "Agent", "install", "GEMMA_TOOLS_TEMPLATE", "RecordingProxy", "Exchange"]


@attrs.frozen
class Agent:
    package: str
    version: str
    binary: str


#: The releases the tests drive, pinned (``npm view <package> version`` when they were last raised).
AGENTS = {
    "claude": Agent("@anthropic-ai/claude-code", "2.1.332", "claude"),
    "codex": Agent("@openai/codex", "0.171.0", "codex"),
    "opencode": Agent("opencode-ai", "1.18.33", "opencode"),
}




def install(name: str) -> Path:
    """The ``bin`` folder of the pinned release of agent ``name``, installing it on first use.

    One folder per package and version, so raising a pin installs beside the old one; a lock file
    keeps two test processes from installing into the same folder at once; a stamp written last
    marks a complete install (an interrupted one is simply redone).
    """
    agent = AGENTS[name]
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed, so {agent.package} cannot be installed")
    prefix = cache_dir() / "npm" / f"{agent.package.replace('@', '').replace('/', '-')}-{agent.version}"
    binary = prefix / "node_modules" / ".bin" / agent.binary
    stamp = prefix / ".installed"
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.is_file() and binary.exists()):
            done = subprocess.run(
                [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save",
                 "--loglevel=error", f"{agent.package}@{agent.version}"],
                capture_output=True, text=True, timeout=900)
            if done.returncode != 0:  # e.g. no route to the registry: the agent cannot be had here
                pytest.skip(f"npm install {agent.package}@{agent.version} failed: {done.stderr[-1500:]}")
            stamp.write_text(agent.version)
    return binary.parent


#: Gemma's turn format with tools: the system prompt and the tool list open the first user turn
#: (Gemma has no system role), calls are ``<tool_call>{json}</tool_call>`` lines, results come back
#: as a user turn. Written for these tests; any tools-capable template would do.
GEMMA_TOOLS_TEMPLATE = """\
{{- $first := true }}
{{- range .Messages }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ if $first }}{{ if $.Tools }}You can call these functions (one JSON object per line):
{{ range $.Tools }}{{ . }}
{{ end }}To call one, answer with <tool_call>{"name": "<function name>", "arguments": {<arguments>}}</tool_call>

{{ end }}{{ $first = false }}{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "tool" }}<start_of_turn>user
<tool_response>{{ .Content }}</tool_response><end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}</tool_call>
{{ end }}{{ else }}{{ .Content }}{{ end }}<end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
"""


@attrs.define
class Exchange:
    """One request as the client sent it, and the status the server answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    #: the answer's bytes as streamed (the first :data:`ANSWER_LIMIT` of them)
    answer: bytes = b""

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def route(self) -> str:
        return urlsplit(self.path).path


class RecordingProxy:
    """A transparent HTTP proxy in a thread that records what a client sends.

    Bodies are forwarded byte for byte and answers streamed back as they arrive (SSE and NDJSON
    stay live), so the client cannot tell it from the server.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "RecordingProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def take(self) -> list[Exchange]:
        """The exchanges recorded since the last call."""
        with self.lock:
            out, self.exchanges = self.exchanges, []
        return out

    def save(self, path: Path, exchanges: list[Exchange]) -> None:
        """Keep a run's requests as JSON lines (in the test's temporary directory only)."""
        with path.open("w") as f:
            for ex in exchanges:
                f.write(json.dumps({"method": ex.method, "path": ex.path, "status": ex.status,
                                    "headers": ex.headers, "body": ex.json}) + "\n")


ANSWER_LIMIT = 4 << 20

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "content-length", "host"}


def _handler(proxy: RecordingProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            body = self._body()
            exchange = Exchange(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with proxy.lock:
                proxy.exchanges.append(exchange)
            upstream = http.client.HTTPConnection(*proxy.upstream, timeout=900)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            try:
                upstream.request(self.command, self.path, body=body if body or self.command != "GET" else None,
                                 headers=headers)
                answer = upstream.getresponse()
                exchange.status = answer.status
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                if self.command == "HEAD":
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while True:
                    data = answer.read1(65536)
                    if not data:
                        break
                    if len(exchange.answer) < ANSWER_LIMIT:
                        exchange.answer += data
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            finally:
                upstream.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

    return Handler
