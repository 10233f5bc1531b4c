"""A small Docker Registry v2 for the pull and push tests: real HTTP on a free port, in a thread.

It speaks the parts of the protocol trillama uses (manifests, blobs with ``Range``, redirects to
a storage path, chunked uploads, and Ollama-style Bearer tokens whose request must be signed by an
ed25519 key) and can misbehave on purpose: cut a blob's connection after some bytes, serve a
blob's bytes wrong, or refuse a key. It counts the blob bytes it serves, so tests can tell a
resumed download from a repeated one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

_EMPTY = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()
_REPO = r"/v2/(?P<repo>[^/]+/[^/]+)"


class FakeRegistry:
    def __init__(self, *, redirect_blobs: bool = False, require_auth: bool = False,
                 allowed_keys: set[str] | None = None, chunk: int = 64 * 1024,
                 chunk_delay: float = 0.0) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.uploads: dict[str, bytearray] = {}
        self.part_md5s: dict[str, list[bytes]] = {}  # upload -> MD5 of each PATCH, for the etag
        self.redirect_blobs = redirect_blobs
        self.require_auth = require_auth
        self.allowed_keys = allowed_keys  # None: any correctly signed key gets a token
        self.chunk = chunk
        self.chunk_delay = chunk_delay
        self.cut_after: dict[str, int] = {}  # digest -> bytes to send before dropping, once
        self.corrupt: set[str] = set()
        self.served: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        self.token_requests: list[str] = []
        self.realm_host: str | None = None
        self._tokens: set[str] = set()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeRegistry":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    def add_model(self, repo: str, tag: str, layers: list[tuple[str, bytes]],
                  config: bytes = b'{"model_format":"gguf"}') -> bytes:
        """Publish a manifest of ``(media type, bytes)`` layers; returns the manifest bytes."""
        def entry(media_type: str, data: bytes) -> dict:
            return {"mediaType": media_type, "digest": self.add_blob(data), "size": len(data)}
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": entry("application/vnd.docker.container.image.v1+json", config),
            "layers": [entry(media_type, data) for media_type, data in layers],
        }
        body = json.dumps(manifest).encode()
        self.manifests[(repo, tag)] = body
        return body

    def check_token_request(self, url: str, authorization: str) -> bool:
        key_text, _, signature = authorization.partition(":")
        try:
            key = load_ssh_public_key(f"ssh-ed25519 {key_text}".encode())
            key.verify(base64.b64decode(signature), f"GET,{url},{_EMPTY}".encode())
        except (ValueError, InvalidSignature, TypeError):
            return False
        return self.allowed_keys is None or key_text in self.allowed_keys

    def issue_token(self) -> str:
        token = secrets.token_hex(8)
        self._tokens.add(token)
        return token

    def authorized(self, header: str) -> bool:
        return not self.require_auth or (header.startswith("Bearer ") and header[7:] in self._tokens)


def _handler(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        # --- helpers ---------------------------------------------------------------------------

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _route(self, method: str) -> None:
            registry.requests.append((method, self.path))
            path = urlsplit(self.path).path
            if path == "/token":
                return self._token()
            if path.startswith("/storage/"):
                return self._serve_blob(path[len("/storage/"):])
            if path.startswith("/v2/") and not registry.authorized(self.headers.get("Authorization", "")):
                scope = "push,pull" if method in ("POST", "PATCH", "PUT") else "pull"
                repo = re.match(_REPO, path)
                realm_host = registry.realm_host or self.headers["Host"]
                challenge = (f'Bearer realm="http://{realm_host}/token",service="fake",'
                             f'scope="repository:{repo["repo"] if repo else ""}:{scope}"')
                self._body()
                return self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                                   {"WWW-Authenticate": challenge})
            for pattern, handler in self._routes(method):
                match = re.fullmatch(pattern, path)
                if match:
                    return handler(**match.groupdict())
            self._body()
            self._reply(404, b'{"errors":[{"code":"NOT_FOUND"}]}')

        def _routes(self, method: str):
            if method in ("GET", "HEAD"):
                yield _REPO + r"/manifests/(?P<tag>[^/]+)", self._get_manifest
                yield _REPO + r"/blobs/(?P<digest>sha256:[0-9a-f]{64})", self._get_blob
            elif method == "PUT":
                yield _REPO + r"/manifests/(?P<tag>[^/]+)", self._put_manifest
                yield _REPO + r"/blobs/uploads/(?P<upload>[0-9a-f]+)", self._finish_upload
            elif method == "POST":
                yield _REPO + r"/blobs/uploads/", self._start_upload
            elif method == "PATCH":
                yield _REPO + r"/blobs/uploads/(?P<upload>[0-9a-f]+)", self._patch_upload

        # --- routes ----------------------------------------------------------------------------

        def _token(self) -> None:
            url = f"http://{self.headers['Host']}{self.path}"
            registry.token_requests.append(url)
            if not registry.check_token_request(url, self.headers.get("Authorization", "")):
                return self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            self._reply(200, json.dumps({"token": registry.issue_token()}).encode())

        def _get_manifest(self, repo: str, tag: str) -> None:
            body = registry.manifests.get((repo, tag))
            if body is None:
                return self._reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            self._reply(200, body, {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})

        def _get_blob(self, repo: str, digest: str) -> None:
            if digest not in registry.blobs:
                return self._reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            if self.command == "HEAD":
                return self._head_blob(digest)
            if registry.redirect_blobs:
                return self._reply(307, headers={"Location": f"/storage/{digest}"})
            self._serve_blob(digest)

        def _head_blob(self, digest: str) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(registry.blobs[digest])))
            self.end_headers()

        def _serve_blob(self, digest: str) -> None:
            data = registry.blobs.get(digest)
            if data is None:
                return self._reply(404)
            if digest in registry.corrupt:
                data = bytes(b ^ 0xFF for b in data[:16]) + data[16:]
            start, stop, status = 0, len(data), 200
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if match:
                start = int(match[1])
                stop = int(match[2]) + 1 if match[2] else len(data)
                status = 206
            body = data[start:stop]
            with registry.lock:
                cut = registry.cut_after.pop(digest, None)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
            self.end_headers()
            if cut is not None:
                body = body[:cut]
            for offset in range(0, len(body), registry.chunk):
                piece = body[offset:offset + registry.chunk]
                self.wfile.write(piece)
                self.wfile.flush()
                with registry.lock:
                    registry.served[digest] += len(piece)
                if registry.chunk_delay:
                    time.sleep(registry.chunk_delay)
            if cut is not None:
                self.close_connection = True

        def _start_upload(self, repo: str) -> None:
            self._body()
            upload = secrets.token_hex(8)
            registry.uploads[upload] = bytearray()
            self._reply(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{upload}?_state=s{upload}",
                                      "Docker-Upload-UUID": upload})

        def _patch_upload(self, repo: str, upload: str) -> None:
            data = self._body()
            buffer = registry.uploads.get(upload)
            if buffer is None:
                return self._reply(404)
            match = re.fullmatch(r"(\d+)-(\d+)", self.headers.get("Content-Range", ""))
            if match and int(match[1]) != len(buffer):
                return self._reply(416)
            buffer += data
            registry.part_md5s.setdefault(upload, []).append(hashlib.md5(data).digest())
            self._reply(202, headers={"Location": f"/v2/{repo}/blobs/uploads/{upload}?_state=n{len(buffer)}",
                                      "Range": f"0-{len(buffer) - 1}"})

        def _finish_upload(self, repo: str, upload: str) -> None:
            self._body()
            query = parse_qs(urlsplit(self.path).query)
            digest = query.get("digest", [""])[0]
            buffer = registry.uploads.pop(upload, None)
            if buffer is None:
                return self._reply(404)
            if "sha256:" + hashlib.sha256(buffer).hexdigest() != digest:
                return self._reply(400, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
            md5s = registry.part_md5s.pop(upload, [])
            if "etag" in query and query["etag"][0] != f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}":
                return self._reply(400, b'{"errors":[{"code":"ETAG_INVALID"}]}')
            registry.blobs[digest] = bytes(buffer)
            self._reply(201, headers={"Location": f"/v2/{repo}/blobs/{digest}"})

        def _put_manifest(self, repo: str, tag: str) -> None:
            body = self._body()
            manifest = json.loads(body)
            for layer in [manifest["config"], *manifest["layers"]]:
                if layer["digest"] not in registry.blobs:
                    return self._reply(400, b'{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN"}]}')
            registry.manifests[(repo, tag)] = body
            self._reply(201)

        def do_GET(self) -> None:
            self._route("GET")

        def do_HEAD(self) -> None:
            self._route("HEAD")

        def do_POST(self) -> None:
            self._route("POST")

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_PATCH(self) -> None:
            self._route("PATCH")

    return Handler
