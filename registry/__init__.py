"""Registries: pulling models into the store and pushing them out (Docker Registry HTTP API v2).

Knows the registry protocol, Ollama's token signing and the store's files; nothing of the
server's own HTTP routes, which turn :class:`Progress` lines into NDJSON.
"""

from trillama.registry.errors import (
    DigestMismatch,
    InsecureProtocol,
    NotFound,
    RegistryError,
    Unauthorized,
)
from trillama.registry.service import Progress, Registry
from trillama.registry.transfer import TransferPolicy

__all__ = [
    "DigestMismatch",
    "InsecureProtocol",
    "NotFound",
    "Progress",
    "Registry",
    "RegistryError",
    "TransferPolicy",
    "Unauthorized",
]
