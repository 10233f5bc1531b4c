"""What the rest of the server gets back from the store about a model.

:class:`ModelRecord` is everything the inference side needs to load and prompt a model (paths of
the GGUF blobs, template, system prompt, parameters, messages) plus what ``/api/show`` prints.
:class:`ModelEntry` is the lighter summary ``/api/tags`` lists.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from trillama.logs import get_logger
from trillama.store.errors import BlobMissing, CorruptManifest, NotGGUF
from trillama.store.gguf_info import GGUFInfo, read_gguf_info
from trillama.store.manifest import (
    MEDIA_ADAPTER,
    MEDIA_DRAFT,
    MEDIA_EMBED,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Manifest,
    ModelConfig,
)
from trillama.store.names import ModelName
from trillama.store.templates import TemplateInspector

__all__ = ["ModelRecord", "ModelEntry", "build_record", "compute_capabilities"]

log = get_logger("trillama.store.records")


def _read_info(path: Path | None) -> GGUFInfo | None:
    if path is None:
        return None
    try:
        return read_gguf_info(path)
    except (NotGGUF, OSError) as exc:
        log.warning("model_file_unreadable", path=str(path), error=str(exc))
        return None


def compute_capabilities(
    info: GGUFInfo | None,
    template: str | None,
    projector_count: int,
    config: ModelConfig,
    *,
    templates: TemplateInspector,
) -> list[str]:
    """What the model can do, by the rules Ollama applies to the same files.

    Embedding models (a pooling type in the GGUF) embed, everything else completes; a vision
    tower or projector adds ``vision``; a Go template that reads ``.Tools``/``.Suffix``/
    ``.Thinking`` adds ``tools``/``insert``/``thinking`` (read by ``templates``, which can parse
    it); without a Go template, the GGUF's own chat template is consulted for tools and
    ``<think>`` tags.
    """
    capabilities: list[str] = []

    def add(capability: str) -> None:
        if capability not in capabilities:
            capabilities.append(capability)

    if info is not None:
        add("embedding" if info.has_pooling else "completion")
        if info.has_vision:
            add("vision")
        if info.has_audio:
            add("audio")
    if projector_count:
        add("vision")
    if template is not None:
        for capability in templates.capabilities(template):
            add(capability)
    elif info is not None and info.chat_template:
        for capability in templates.chat_template_capabilities(info.chat_template):
            add(capability)
    for capability in config.capabilities:
        add(capability)
    return capabilities


@attrs.frozen(eq=False)
class ModelEntry:
    """One line of ``/api/tags``."""

    name: ModelName
    digest: str
    size: int
    modified_at: datetime
    details: dict[str, Any]
    capabilities: list[str]
    #: digests of layers whose blob files are missing (the model is listed, flagged, unusable)
    missing_blobs: tuple[str, ...] = ()


@attrs.frozen(eq=False)
class ModelRecord:
    """A resolved model: its manifest read, its blobs located, its small layers loaded."""

    name: ModelName
    #: sha256 hex of the manifest file (no prefix), what clients see as the model digest.
    digest: str
    manifest: Manifest
    manifest_path: Path
    model_config: ModelConfig
    model_path: Path | None
    projector_paths: tuple[Path, ...]
    adapter_paths: tuple[Path, ...]
    draft_path: Path | None
    #: The Go template layer, or ``None`` when the model has none (then the default applies).
    template: str | None
    system: str | None
    parameters: dict[str, Any]
    messages: list[dict[str, Any]]
    license: list[str]
    parent_model: str
    details: dict[str, Any]
    capabilities: list[str]
    modified_at: datetime
    size: int
    #: digests of the layers whose blob files are missing; a record with any is listed but unusable
    missing_blobs: tuple[str, ...] = ()

    def require_blobs(self) -> "ModelRecord":
        """Self, or :class:`BlobMissing` naming what is gone."""
        if self.missing_blobs:
            raise BlobMissing(self.name.display, self.missing_blobs)
        return self

    @property
    def config(self) -> dict[str, Any]:
        """The config blob as a JSON object."""
        return json.loads(self.model_config.to_bytes())

    @property
    def short_name(self) -> str:
        return self.name.display

    def gguf_info(self) -> GGUFInfo | None:
        """Header of the model's GGUF file (cached); ``None`` for a model without weights."""
        return _read_info(self.model_path)


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", errors="replace")


def build_record(
    name: ModelName,
    manifest: Manifest,
    manifest_path: Path,
    blob_path: Any,
    *,
    digest: str,
    templates: TemplateInspector,
) -> ModelRecord:
    """Read the small layers a manifest lists and assemble the record.

    ``blob_path`` maps a digest to the path of its blob file; ``templates`` reads the
    capabilities the template layer implies.
    """
    missing: list[str] = []

    def read_blob(digest: str) -> bytes | None:
        try:
            return blob_path(digest).read_bytes()
        except FileNotFoundError:
            missing.append(digest)
            return None

    def locate(digest: str) -> Path:
        path = blob_path(digest)
        if not path.exists():
            missing.append(digest)
        return path

    config = ModelConfig()
    if manifest.config.digest:
        raw_config = read_blob(manifest.config.digest)
        if raw_config is not None:
            config = ModelConfig.from_bytes(raw_config)

    model_path: Path | None = None
    draft_path: Path | None = None
    parent_model = ""
    projectors: list[Path] = []
    adapters: list[Path] = []
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = {}
    messages: list[dict[str, Any]] = []
    licenses: list[str] = []

    for layer in manifest.layers:
        media = layer.media_type
        if media == MEDIA_MODEL:
            model_path = locate(layer.digest)
            parent_model = layer.from_
        elif media == MEDIA_PROJECTOR:
            projectors.append(locate(layer.digest))
        elif media == MEDIA_ADAPTER:
            adapters.append(locate(layer.digest))
        elif media == MEDIA_DRAFT:
            draft_path = locate(layer.digest)
        elif media in (MEDIA_TEMPLATE, MEDIA_PROMPT, MEDIA_SYSTEM, MEDIA_LICENSE):
            raw = read_blob(layer.digest)
            if raw is None:
                continue
            text = raw.decode("utf-8", errors="replace")
            if media == MEDIA_SYSTEM:
                system = text
            elif media == MEDIA_LICENSE:
                licenses.append(text)
            else:
                template = text
        elif media == MEDIA_PARAMS:
            raw = read_blob(layer.digest)
            try:
                loaded = json.loads(raw) if raw is not None else None
            except json.JSONDecodeError as exc:
                raise CorruptManifest(f"parameters layer is not JSON: {exc}") from None
            if isinstance(loaded, dict):
                parameters = loaded
        elif media == MEDIA_MESSAGES:
            raw = read_blob(layer.digest)
            try:
                loaded = json.loads(raw) if raw is not None else None
            except json.JSONDecodeError as exc:
                raise CorruptManifest(f"messages layer is not JSON: {exc}") from None
            if isinstance(loaded, list):
                messages = [m for m in loaded if isinstance(m, dict)]
        elif media == MEDIA_EMBED:
            log.info("embed_layer_ignored", model=name.display)

    info = _read_info(model_path) if config.model_format in ("", "gguf") else None
    details = {
        "parent_model": parent_model,
        "format": config.model_format,
        "family": config.model_family,
        "families": list(config.model_families) or None,
        "parameter_size": config.model_type,
        "quantization_level": config.file_type,
    }
    if details["quantization_level"] in ("", "unknown") and info is not None:
        details["quantization_level"] = info.file_type
    stat = manifest_path.stat()
    return ModelRecord(
        name=name,
        digest=digest,
        manifest=manifest,
        manifest_path=manifest_path,
        model_config=config,
        model_path=model_path,
        projector_paths=tuple(projectors),
        adapter_paths=tuple(adapters),
        draft_path=draft_path,
        template=template,
        system=system,
        parameters=parameters,
        messages=messages,
        license=licenses,
        parent_model=parent_model,
        details=details,
        capabilities=compute_capabilities(info, template, len(projectors), config, templates=templates),
        modified_at=datetime.fromtimestamp(stat.st_mtime_ns / 1e9).astimezone(),
        size=manifest.size,
        missing_blobs=tuple(dict.fromkeys(missing)),
    )


def entry_from_record(record: ModelRecord) -> ModelEntry:
    details = dict(record.details)
    info = record.gguf_info()
    context_length = record.model_config.context_length or (info.context_length if info else 0)
    embedding_length = record.model_config.embedding_length or (info.embedding_length if info else 0)
    if context_length:
        details["context_length"] = context_length
    if embedding_length:
        details["embedding_length"] = embedding_length
    return ModelEntry(
        name=record.name,
        digest=record.digest,
        size=record.size,
        modified_at=record.modified_at,
        details=details,
        capabilities=record.capabilities,
        missing_blobs=record.missing_blobs,
    )
