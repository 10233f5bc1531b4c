"""The Host-header guard a loopback-bound server applies (DNS-rebinding protection)."""

import pytest

from trillama.api.hosts import host_allowed, is_loopback_bind


@pytest.mark.parametrize("header", ["localhost:11434", "127.0.0.1:11434", "[::1]:11434", "10.0.0.5",
                                    "192.168.1.2:80", "0.0.0.0", "box.local", "app.localhost", "svc.internal", None])
def test_allowed_hosts(header):
    assert host_allowed(header)


@pytest.mark.parametrize("header", ["evil.example", "evil.example:11434", "8.8.8.8", "localhost.evil.com"])
def test_refused_hosts(header):
    assert not host_allowed(header)


def test_only_loopback_binds_are_guarded():
    assert is_loopback_bind("127.0.0.1") and is_loopback_bind("::1") and is_loopback_bind("localhost")
    assert not is_loopback_bind("0.0.0.0")


@pytest.fixture
def server(shared_server):
    return shared_server


def test_server_refuses_a_rebound_host(server):
    with server.client() as client:
        assert client.get("/", headers={"Host": "evil.example"}).status_code == 403
        assert client.get("/", headers={"Host": f"localhost:{server.port}"}).text == "Ollama is running"


def test_keep_alive_survives_bodyless_requests_and_unread_bodies_close(server):
    with server.client() as client:
        for _ in range(3):
            r = client.get("/api/version")
            assert r.status_code == 200 and r.headers.get("connection") != "close"
        r = client.post("/api/no-such-route", content=b"x" * 1_000_000)
        assert r.status_code == 404 and r.headers.get("connection") == "close"
        assert client.get("/").status_code == 200  # a fresh connection, no hang
