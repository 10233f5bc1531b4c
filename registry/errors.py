"""What can go wrong talking to a registry, with the messages Ollama's clients show."""

from __future__ import annotations

__all__ = ["RegistryError", "NotFound", "Unauthorized", "InsecureProtocol", "DigestMismatch"]


class RegistryError(Exception):
    """A pull or push failed; ``str(exc)`` is the text for the client's ``{"error": …}``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class NotFound(RegistryError):
    """The registry answered 404: Go's ``os.ErrNotExist``, whose text clients match on."""

    def __init__(self) -> None:
        super().__init__("file does not exist")


class Unauthorized(RegistryError):
    """Still 401 after fetching a token: the key is not allowed in this namespace."""

    def __init__(self) -> None:
        super().__init__("unauthorized: access denied")


class InsecureProtocol(RegistryError):
    """An ``http://`` name without ``insecure: true``."""

    def __init__(self) -> None:
        super().__init__("insecure protocol http")


class DigestMismatch(RegistryError):
    """A downloaded blob hashed to something else; the file is gone and must come down again."""

    def __init__(self, want: str, got: str) -> None:
        super().__init__(f"digest mismatch, file must be downloaded again: want {want}, got {got}")
        self.want = want
        self.got = got
