"""TLS end to end: a certificate made by Debian's ``openssl`` in the test, a server started with
``TRILLAMA_TLS_CERT``/``TRILLAMA_TLS_KEY`` and an API key, reached by curl (``--cacert``, HTTP/1.1
and HTTP/2 by ALPN), by the ollama, openai and anthropic Python clients, by httpx over HTTP/2,
and by the ``trillama`` CLI with ``https://`` in ``OLLAMA_HOST`` and ``OLLAMA_API_KEY``.

Streams are read to their end over both protocols: the HTTP/1.1 chunk shortcut
(``trillama/http.py``) must hand TLS connections to hypercorn's own path, and HTTP/2 streams must
not go near it.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import anthropic
import attrs
import httpx
import ollama
import openai
import pytest

from conftest import REPO, ServerProcess, debian_packages

SMOL = "smollm2:135m"
KEY = "trk_tls-test-key-0123456789abcdefghijklmnop"


def _tool(name: str) -> str:
    """A Debian tool the test needs (its package has the same name), installed when missing."""
    debian_packages({name: name})
    return shutil.which(name)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signs for localhost and 127.0.0.1: (ca, cert, key)."""
    openssl = _tool("openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=trillama test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (folder / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


@attrs.frozen
class TLSServer:
    server: ServerProcess
    url: str
    ca: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def tls(seeded_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    root = tmp_path_factory.mktemp("tls")
    models = root / "models"
    shutil.copytree(seeded_models_dir, models, copy_function=os.link)
    ca, cert, key = make_certificates(root)
    server = ServerProcess(models, env={"TRILLAMA_BUNDLED_MODEL": "0", "TRILLAMA_TLS_CERT": str(cert),
                                        "TRILLAMA_TLS_KEY": str(key), "TRILLAMA_API_KEY": KEY})
    server.base_url = f"https://127.0.0.1:{server.port}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(ca))  # the fixture's readiness probe trusts the test CA
        server.start()
    try:
        yield TLSServer(server, server.base_url, ca)
    finally:
        server.stop()


def _curl(tls: TLSServer, path: str, *args: str, url: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("curl"), "-sS", "--cacert", str(tls.ca), "-H", f"Authorization: Bearer {KEY}",
                           *args, (url or tls.url) + path], capture_output=True, text=True, timeout=300)


GENERATE = json.dumps({"model": SMOL, "prompt": "Count: 1, 2, 3,", "options": {"num_predict": 12}})


@pytest.mark.parametrize("version, flag", [("1.1", "--http1.1"), ("2", "--http2")])
def test_curl_with_cacert(tls: TLSServer, version: str, flag: str) -> None:
    tags = _curl(tls, "/api/tags", flag, "-w", "\n%{http_version} %{http_code}")
    assert tags.returncode == 0, tags.stderr
    body, status = tags.stdout.rsplit("\n", 1)
    assert status == f"{version} 200" and SMOL in body
    # a streamed generation read to its last chunk
    stream = _curl(tls, "/api/generate", flag, "-d", GENERATE, "-w", "\n%{http_version}")
    lines = [line for line in stream.stdout.splitlines() if line.strip()]
    assert lines[-1] == version
    chunks = [json.loads(line) for line in lines[:-1]]
    assert len(chunks) > 2 and chunks[-1]["done"] and chunks[-1]["eval_count"] >= 1
    assert "".join(c["response"] for c in chunks)
    # by name too (the certificate names localhost and 127.0.0.1)
    assert _curl(tls, "/api/version", flag, url=f"https://localhost:{tls.server.port}").returncode == 0


def test_the_certificate_is_checked_and_keys_still_asked(tls: TLSServer) -> None:
    untrusted = subprocess.run([_tool("curl"), "-sS", tls.url + "/api/tags"], capture_output=True, text=True,
                               timeout=60)
    assert untrusted.returncode == 60  # curl: peer certificate cannot be authenticated
    plain = subprocess.run([_tool("curl"), "-sS", f"http://127.0.0.1:{tls.server.port}/"], capture_output=True,
                           text=True, timeout=60)
    assert "Ollama is running" not in plain.stdout
    no_key = subprocess.run([_tool("curl"), "-sS", "--cacert", str(tls.ca), "-w", "%{http_code}",
                             tls.url + "/api/tags"], capture_output=True, text=True, timeout=60)
    assert no_key.stdout.endswith("401")


def test_python_clients_over_tls(tls: TLSServer) -> None:
    client = ollama.Client(host=tls.url, headers={"Authorization": f"Bearer {KEY}"}, verify=tls.context(),
                           timeout=120)
    parts = list(client.generate(model=SMOL, prompt="Count: 1, 2, 3,", options={"num_predict": 8}, stream=True))
    assert parts[-1].done and "".join(p.response for p in parts)
    oai = openai.OpenAI(base_url=tls.url + "/v1", api_key=KEY, max_retries=0, timeout=120,
                        http_client=openai.DefaultHttpxClient(verify=tls.context()))
    streamed = oai.chat.completions.create(model=SMOL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                           stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    claude = anthropic.Anthropic(base_url=tls.url, api_key=KEY, max_retries=0, timeout=120,
                                 http_client=anthropic.DefaultHttpxClient(verify=tls.context()))
    message = claude.messages.create(model=SMOL, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
    assert message.usage.output_tokens >= 1
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=tls.url, api_key="wrong", max_retries=0,
                            http_client=anthropic.DefaultHttpxClient(verify=tls.context())).messages.count_tokens(
            model=SMOL, messages=[{"role": "user", "content": "Hi"}])


def test_http2_streams(tls: TLSServer) -> None:
    with httpx.Client(base_url=tls.url, http2=True, verify=tls.context(), timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as http:
        assert http.get("/api/tags").http_version == "HTTP/2"
        with http.stream("POST", "/api/chat", json={
                "model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 8}}) as r:
            assert r.http_version == "HTTP/2" and r.status_code == 200
            chunks = [json.loads(line) for line in r.iter_lines() if line]
        assert chunks[-1]["done"] and len(chunks) > 2
        refused = http.get("/metrics", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")


def test_cli_reaches_https_with_ollama_api_key(tls: TLSServer) -> None:
    env = {**os.environ, "OLLAMA_HOST": tls.url, "SSL_CERT_FILE": str(tls.ca), "OLLAMA_API_KEY": KEY}
    listed = subprocess.run([sys.executable, "-m", "trillama", "list"], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert SMOL in listed.stdout
    ran = subprocess.run([sys.executable, "-m", "trillama", "show", SMOL], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=120)
    assert ran.returncode == 0 and "parameters" in ran.stdout.lower()
    del env["OLLAMA_API_KEY"]
    refused = subprocess.run([sys.executable, "-m", "trillama", "list"], capture_output=True, text=True, env=env,
                             cwd=REPO, timeout=120)
    assert refused.returncode != 0 and "missing API key" in refused.stderr
