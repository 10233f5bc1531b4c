"""Blob digests: the ``sha256:<hex>`` names that tie manifests to the files they list."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import BinaryIO

from trillama.store.errors import InvalidDigest

__all__ = ["DIGEST_RE", "normalize_digest", "blob_filename", "digest_from_filename", "sha256_file",
           "sha256_bytes", "short_digest"]

#: What Ollama accepts in a URL or a request: ``sha256:`` or ``sha256-`` then 64 hex digits.
DIGEST_RE = re.compile(r"sha256[:-][0-9a-fA-F]{64}")

_CHUNK = 1 << 20


def normalize_digest(text: str) -> str:
    """``sha256:<hex>`` from either accepted spelling; raise :class:`InvalidDigest` otherwise.

    The hex part keeps its case: Ollama compares digests as strings, and a blob's file name holds
    the digest as written, so an upper-case digest is a different blob (and will not match any
    content hash, which is lower case).
    """
    if not isinstance(text, str) or not DIGEST_RE.fullmatch(text):
        raise InvalidDigest(text if isinstance(text, str) else "")
    return "sha256:" + text[7:]


def blob_filename(digest: str) -> str:
    """File name of a blob below ``blobs/``: the colon becomes a dash (colons upset Windows)."""
    return normalize_digest(digest).replace(":", "-")


def digest_from_filename(filename: str) -> str | None:
    """The digest a file in ``blobs/`` stands for, or ``None`` for anything else (partials…)."""
    if DIGEST_RE.fullmatch(filename):
        return "sha256:" + filename[7:]
    return None


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | BinaryIO) -> str:
    """Hash a whole file without reading it into memory (model files run to many gigabytes)."""
    digest = hashlib.sha256()
    if isinstance(path, Path):
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    else:
        while chunk := path.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def short_digest(digest: str) -> str:
    """The 12 hex digits Ollama shows for a layer (``pulling 6a0746a1ec1a``)."""
    return digest.split(":", 1)[-1][:12]
