"""Registry tokens: the Bearer challenge, and the ed25519-signed token request Ollama makes.

A registry that wants a token answers 401 with ``WWW-Authenticate: Bearer realm=…,service=…,
scope=…``. The client then GETs the realm with the service, each scope, a timestamp and a nonce,
and proves who it is by signing ``"GET,<that URL>,<base64 of the hex SHA-256 of an empty body>"``
with its ed25519 key (``~/.ollama/id_ed25519``, an OpenSSH private key, created on first need as
Ollama creates it). The ``Authorization`` header of that request is ``<public key>:<signature>``,
the public key being the base64 field of the ``.pub`` line. Using the same key file as Ollama means
a key already registered with a registry account works for trillama too.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trillama.registry.errors import RegistryError

__all__ = ["Challenge", "Keypair", "signed_request_text"]

_PARAM = re.compile(r'(\w+)="([^"]*)"')
_EMPTY_BODY_HASH = base64.b64encode(hashlib.sha256(b"").hexdigest().encode()).decode()


@attrs.frozen
class Challenge:
    """A parsed ``WWW-Authenticate: Bearer`` header."""

    realm: str
    service: str = ""
    scope: str = ""

    @classmethod
    def parse(cls, header: str) -> "Challenge | None":
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        params = dict(_PARAM.findall(rest))
        if not params.get("realm"):
            return None
        return cls(realm=params["realm"], service=params.get("service", ""),
                   scope=params.get("scope", ""))

    def token_url(self, *, now: float | None = None, nonce: str | None = None) -> str:
        """The realm with its query, keys in sorted order (how Go's ``url.Values`` encodes)."""
        query: list[tuple[str, str]] = [
            ("nonce", nonce if nonce is not None else
             base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()),
        ]
        query += [("scope", scope) for scope in self.scope.split() if scope]
        query += [("service", self.service), ("ts", str(int(now if now is not None else time.time())))]
        separator = "&" if "?" in self.realm else "?"
        return f"{self.realm}{separator}{urlencode(query)}"

    def check_host(self, request_url: str) -> None:
        """The realm must be on the host we asked: a token is never fetched from elsewhere."""
        realm_host = urlsplit(self.realm).netloc
        request_host = urlsplit(request_url).netloc
        if realm_host != request_host:
            raise RegistryError(
                f'realm host "{realm_host}" does not match original host "{request_host}"')


def signed_request_text(url: str) -> bytes:
    """What the key signs for a bodiless ``GET url``."""
    return f"GET,{url},{_EMPTY_BODY_HASH}".encode()


class Keypair:
    """The ed25519 identity at ``path`` (OpenSSH format, with ``path.pub`` beside it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: Ed25519PrivateKey | None = None

    def _load(self) -> Ed25519PrivateKey:
        if self._key is None:
            if not self.path.exists():
                self._create()
            key = serialization.load_ssh_private_key(self.path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise RegistryError(f"{self.path} is not an ed25519 key")
            self._key = key
        return self._key

    def _create(self) -> None:
        """Write a new key pair the way ``ssh-keygen -t ed25519`` would (mode 0600, ``.pub``)."""
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private)
        self.path.with_name(self.path.name + ".pub").write_bytes(self._public_line(key) + b"\n")

    @staticmethod
    def _public_line(key: Ed25519PrivateKey) -> bytes:
        return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH)

    @property
    def public_key(self) -> str:
        """The base64 field of the ``ssh-ed25519 AAAA…`` line: how registries know this key."""
        return self._public_line(self._load()).split()[1].decode()

    def authorization(self, data: bytes) -> str:
        """``<public key>:<base64 signature of data>``."""
        signature = self._load().sign(data)
        return f"{self.public_key}:{base64.b64encode(signature).decode()}"
