"""The model store: names, blobs, manifests, Modelfiles and GGUF metadata in Ollama's layout.

Knows files and names and nothing of HTTP; the API layer turns its errors into statuses by their
``kind``.
"""

from trillama.store.create import CreateRequest, request_from_modelfile
from trillama.store.errors import (
    BlobNotFound,
    CorruptManifest,
    DigestMismatch,
    InvalidDigest,
    InvalidRequest,
    ModelNotFound,
    NotGGUF,
    StoreError,
)
from trillama.store.gguf_info import GGUFInfo, read_gguf_info
from trillama.store.modelfile import Modelfile, ModelfileError, parse_modelfile
from trillama.store.names import InvalidName, ModelName
from trillama.store.options import OptionError, coerce_options
from trillama.store.records import ModelEntry, ModelRecord
from trillama.store.store import ModelStore

__all__ = [
    "BlobNotFound",
    "CorruptManifest",
    "CreateRequest",
    "DigestMismatch",
    "GGUFInfo",
    "InvalidDigest",
    "InvalidName",
    "InvalidRequest",
    "ModelEntry",
    "ModelName",
    "ModelNotFound",
    "ModelRecord",
    "ModelStore",
    "Modelfile",
    "ModelfileError",
    "NotGGUF",
    "OptionError",
    "StoreError",
    "coerce_options",
    "parse_modelfile",
    "read_gguf_info",
    "request_from_modelfile",
]
