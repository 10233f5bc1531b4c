"""Origin matching as gin-contrib/cors (Ollama's CORS layer) does it, and who is refused."""

from __future__ import annotations

import pytest

from trillama.api.cors import CorsPolicy
from trillama.config import DEFAULT_ORIGINS

POLICY = CorsPolicy(("https://app.example", "https://*.corp.example", "http://[::1]:*") + DEFAULT_ORIGINS)


@pytest.mark.parametrize("origin", [
    "http://localhost", "http://localhost:3000", "https://127.0.0.1:8443", "http://0.0.0.0:11434",
    "app://obsidian.md", "file://", "tauri://localhost", "vscode-webview://abc", "https://app.example",
    "https://wiki.corp.example", "http://[::1]:8080", "chrome-extension://abcdef", "moz-extension://x",
])
def test_allowed_origins(origin):
    assert POLICY.allows(origin) and not POLICY.refuses(origin, "127.0.0.1:11434")


@pytest.mark.parametrize("origin", [
    "http://evil.example", "null", "http://localhost.evil.example", "http://127.0.0.1.evil.example",
    "https://app.example.evil.example", "http://app.example", "https://corp.example", "http://[::2]:8080",
    "HTTP://LOCALHOST", "",
])
def test_foreign_origins_are_refused(origin):
    assert POLICY.refuses(origin, "127.0.0.1:11434") is bool(origin)  # an empty Origin is no Origin


def test_no_origin_and_same_origin_pass():
    assert not POLICY.refuses(None, "127.0.0.1:11434")
    # a page served by the server itself, under whatever name the server was reached by
    assert not POLICY.refuses("http://my-box.lan:11434", "my-box.lan:11434")
    assert not POLICY.refuses("https://my-box.lan", "my-box.lan")
    assert POLICY.refuses("http://my-box.lan:11434", "other.lan:11434")


def test_a_star_allows_everything():
    assert not CorsPolicy(["*"]).refuses("http://evil.example", None)
    assert CorsPolicy(["*"]).headers_for("http://evil.example", preflight=False)["Access-Control-Allow-Origin"] == "*"
