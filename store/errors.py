"""What can go wrong in the store, worded the way Ollama words it.

The store knows nothing of HTTP, but callers need to tell a client's mistake from a missing model
from a broken disk. Each error therefore carries a ``kind`` (``invalid``, ``not_found``,
``internal``) that the API layer maps to a status; the message is the exact text clients see.
"""

from __future__ import annotations

__all__ = [
    "StoreError",
    "InvalidRequest",
    "ModelNotFound",
    "BlobNotFound",
    "InvalidDigest",
    "DigestMismatch",
    "NotGGUF",
    "CorruptManifest",
    "BlobMissing",
]


class StoreError(Exception):
    kind = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(StoreError):
    """The caller asked for something that can never work (bad Modelfile, bad parameter…)."""

    kind = "invalid"


class ModelNotFound(StoreError):
    kind = "not_found"

    def __init__(self, name: str, message: str | None = None) -> None:
        super().__init__(message or f"model '{name}' not found")
        self.name = name


class BlobNotFound(StoreError):
    kind = "not_found"

    def __init__(self, digest: str) -> None:
        super().__init__(f'blob "{digest}" not found')
        self.digest = digest


class InvalidDigest(InvalidRequest):
    def __init__(self, digest: str = "") -> None:
        super().__init__("invalid digest format")
        self.digest = digest


class DigestMismatch(InvalidRequest):
    def __init__(self, expected: str, got: str) -> None:
        super().__init__(f'digest mismatch, expected "{expected}", got "{got}"')
        self.expected = expected
        self.got = got


class NotGGUF(InvalidRequest):
    """A file that was supposed to hold GGUF weights does not start with the GGUF magic."""

    def __init__(self, message: str = "supplied file was not in GGUF format") -> None:
        super().__init__(message)


class CorruptManifest(StoreError):
    """A manifest file exists but cannot be read as a manifest."""


class BlobMissing(StoreError):
    """A manifest names a blob whose file is gone (deleted by hand, a disk fault).

    The model stays listed — hiding it would make it look deleted — but using it says which blob
    is missing and how to repair it.
    """

    #: A 404, not a 500: the server works, a part of the model is not there (and a client that
    #: pulls on 404, as ``ollama run`` does, repairs a model that came from a registry).
    kind = "not_found"

    def __init__(self, model: str, digests: tuple[str, ...]) -> None:
        listed = ", ".join(digests)
        super().__init__(f'model "{model}" cannot be used: blob {listed} is missing from the model store; '
                         "pull or create the model again")
        self.model = model
        self.digests = digests
