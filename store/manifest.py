"""Manifests and the config blob: Docker v2 schema 2 JSON with Ollama's media types.

The bytes matter as much as the structure: a manifest's sha256 is the model ``digest`` clients
see, and Ollama writes manifests (and config blobs) with Go's JSON encoder, fields in struct order.
Writing the same bytes keeps a store that both servers use consistent.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from trillama.store.errors import CorruptManifest
from trillama.gofmt import go_json

__all__ = [
    "MANIFEST_MEDIA_TYPE",
    "CONFIG_MEDIA_TYPE",
    "MEDIA_MODEL",
    "MEDIA_PROJECTOR",
    "MEDIA_ADAPTER",
    "MEDIA_TEMPLATE",
    "MEDIA_PROMPT",
    "MEDIA_SYSTEM",
    "MEDIA_PARAMS",
    "MEDIA_MESSAGES",
    "MEDIA_LICENSE",
    "MEDIA_EMBED",
    "MEDIA_DRAFT",
    "WEIGHT_MEDIA_TYPES",
    "Layer",
    "Manifest",
    "ModelConfig",
]

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_PROMPT = "application/vnd.ollama.image.prompt"  # the template's old name, still read
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_EMBED = "application/vnd.ollama.image.embed"  # deprecated; ignored when reading
MEDIA_DRAFT = "application/vnd.ollama.image.draft"

#: Layers whose blobs are GGUF files.
WEIGHT_MEDIA_TYPES = frozenset({MEDIA_MODEL, MEDIA_PROJECTOR, MEDIA_ADAPTER, MEDIA_DRAFT})


@attrs.frozen
class Layer:
    media_type: str
    digest: str
    size: int
    from_: str = ""
    name: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.from_:
            out["from"] = self.from_
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_json(cls, data: Any) -> "Layer":
        if not isinstance(data, dict):
            raise CorruptManifest("layer is not an object")
        media_type = data.get("mediaType", "")
        digest = data.get("digest", "")
        size = data.get("size", 0)
        if not isinstance(media_type, str) or not isinstance(digest, str) or not isinstance(size, int):
            raise CorruptManifest("layer fields have the wrong type")
        from_ = data.get("from") or ""
        name = data.get("name") or ""
        return cls(media_type=media_type, digest=digest, size=size, from_=str(from_), name=str(name))


@attrs.frozen
class Manifest:
    config: Layer
    layers: tuple[Layer, ...]
    schema_version: int = 2
    media_type: str = MANIFEST_MEDIA_TYPE

    @property
    def size(self) -> int:
        """What ``/api/tags`` reports: every layer plus the config blob."""
        return sum(layer.size for layer in self.layers) + self.config.size

    @property
    def digests(self) -> set[str]:
        found = {layer.digest for layer in self.layers if layer.digest}
        if self.config.digest:
            found.add(self.config.digest)
        return found

    def layers_of(self, media_type: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.media_type == media_type]

    def to_bytes(self) -> bytes:
        return go_json(
            {
                "schemaVersion": self.schema_version,
                "mediaType": self.media_type,
                "config": self.config.to_json(),
                "layers": [layer.to_json() for layer in self.layers],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        try:
            parsed = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptManifest(f"manifest is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise CorruptManifest("manifest is not a JSON object")
        layers = parsed.get("layers") or []
        if not isinstance(layers, list):
            raise CorruptManifest("manifest layers is not a list")
        config = parsed.get("config") or {"mediaType": CONFIG_MEDIA_TYPE, "digest": "", "size": 0}
        schema_version = parsed.get("schemaVersion", 2)
        media_type = parsed.get("mediaType", MANIFEST_MEDIA_TYPE)
        return cls(
            config=Layer.from_json(config),
            layers=tuple(Layer.from_json(layer) for layer in layers),
            schema_version=schema_version if isinstance(schema_version, int) else 2,
            media_type=media_type if isinstance(media_type, str) else MANIFEST_MEDIA_TYPE,
        )


def _str_list(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


@attrs.frozen
class ModelConfig:
    """The config blob (Ollama's ``ConfigV2``): what ``details`` in tags and show come from."""

    model_format: str = ""
    model_family: str = ""
    model_families: tuple[str, ...] = ()
    model_type: str = ""
    file_type: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    remote_host: str = ""
    remote_model: str = ""
    capabilities: tuple[str, ...] = ()
    context_length: int = 0
    embedding_length: int = 0
    base_name: str = ""
    architecture: str = "amd64"
    os: str = "linux"

    def to_bytes(self) -> bytes:
        # Field order and omitempty rules of Ollama's ConfigV2 struct.
        out: dict[str, Any] = {
            "model_format": self.model_format,
            "model_family": self.model_family,
            "model_families": list(self.model_families) or None,
            "model_type": self.model_type,
            "file_type": self.file_type,
        }
        for key in ("renderer", "parser", "requires", "remote_host", "remote_model"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.capabilities:
            out["capabilities"] = list(self.capabilities)
        if self.context_length:
            out["context_length"] = self.context_length
        if self.embedding_length:
            out["embedding_length"] = self.embedding_length
        if self.base_name:
            out["base_name"] = self.base_name
        out["architecture"] = self.architecture
        out["os"] = self.os
        return go_json(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> "ModelConfig":
        try:
            parsed = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptManifest(f"config blob is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise CorruptManifest("config blob is not a JSON object")

        def text(key: str, default: str = "") -> str:
            value = parsed.get(key)
            return value if isinstance(value, str) else default

        def number(key: str) -> int:
            value = parsed.get(key)
            return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

        return cls(
            model_format=text("model_format"),
            model_family=text("model_family"),
            model_families=tuple(_str_list(parsed.get("model_families"))),
            model_type=text("model_type"),
            file_type=text("file_type"),
            renderer=text("renderer"),
            parser=text("parser"),
            requires=text("requires"),
            remote_host=text("remote_host"),
            remote_model=text("remote_model"),
            capabilities=tuple(_str_list(parsed.get("capabilities"))),
            context_length=number("context_length"),
            embedding_length=number("embedding_length"),
            base_name=text("base_name"),
            architecture=text("architecture", "amd64"),
            os=text("os", "linux"),
        )
