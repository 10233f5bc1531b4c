"""Creating a model: from another model, from uploaded GGUF blobs, or from a classic Modelfile.

Create runs in two phases. :func:`plan_create` checks everything that can be wrong with the
request (names, digests, files that are not GGUF, bad templates, parameters of the wrong type, a
``from`` model that does not exist) and touches nothing on disk, so a bad request changes nothing
and its error can still carry a proper HTTP status. :func:`run_create` then does the work and
reports progress in Ollama's words (``parsing GGUF``, ``using existing layer sha256:…``,
``writing manifest``, ``success``), writing blobs first and the manifest last, each atomically:
a process killed half-way leaves at most unreferenced blobs, never a manifest that points at
missing or partial files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import attrs

from trillama.logs import get_logger
from trillama.store.digests import normalize_digest
from trillama.store.errors import InvalidRequest, ModelNotFound, NotGGUF, StoreError
from trillama.store.gguf_info import GGUFInfo, is_gguf, read_gguf_info
from trillama.gofmt import go_json
from trillama.store.manifest import (
    CONFIG_MEDIA_TYPE,
    MEDIA_ADAPTER,
    MEDIA_DRAFT,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
    ModelConfig,
)
from trillama.store.modelfile import Modelfile
from trillama.store.names import InvalidName, ModelName
from trillama.store.options import OPTION_TYPES, OptionError, coerce_options
from trillama.store.templates import ChatFormat, detect_chat_format

if TYPE_CHECKING:
    from trillama.store.store import ModelStore

__all__ = ["CreateRequest", "request_from_modelfile", "plan_create", "run_create", "CreatePlan"]

log = get_logger("trillama.store.create")

_QUANT_TYPES = {"F32": "F32", "F16": "F16", "Q8_0": "Q8_0", "Q4_K_S": "Q4_K_S", "Q4_K_M": "Q4_K_M",
                "Q4_K": "Q4_K_M", "BF16": "BF16"}
_MESSAGE_FIELDS = ("role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id")


@attrs.frozen
class CreateRequest:
    """The structured create request (Ollama ≥ 0.5.5), plus server-side files for the classic form.

    ``local_files``/``local_adapters`` map a display name to a file on this machine; they come
    from a classic Modelfile whose ``FROM``/``ADAPTER`` names a path, and are imported into the
    blob store as part of the create.
    """

    from_: str = ""
    files: Mapping[str, str] = attrs.field(factory=dict)
    adapters: Mapping[str, str] = attrs.field(factory=dict)
    template: str = ""
    system: str = ""
    license: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    messages: tuple[Mapping[str, Any], ...] = ()
    quantize: str = ""
    renderer: str = ""
    parser: str = ""
    requires: str = ""
    info: Mapping[str, Any] | None = None
    local_files: Mapping[str, Path] = attrs.field(factory=dict)
    local_adapters: Mapping[str, Path] = attrs.field(factory=dict)


def _valid_relative_path(path: str) -> bool:
    """Go's ``fs.ValidPath``: unrooted, slash-separated, no empty, ``.`` or ``..`` elements."""
    if path == ".":
        return True
    if not path or path.startswith("/") or path.endswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


#: The one answer for any server-side path a create request may not read: the same text whether
#: the path exists or not, so the error reveals nothing about the server's files.
SERVER_PATHS_REFUSED = ("server-side paths are not allowed in create requests; upload the file with "
                        "POST /api/blobs/<digest> and name it in \"files\" (or FROM @<digest>)")


def _expand_path(arg: str, base_dir: Path | None) -> Path:
    path = Path(arg).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path


def _looks_like_path(arg: str) -> bool:
    return arg.startswith(("/", "~", ".", "\\")) or ":\\" in arg


def path_allowed(path: Path, allowed: tuple[Path, ...] | None) -> bool:
    """Is ``path`` (symlinks resolved) inside one of the ``allowed`` directories?

    ``None`` means no restriction (library callers and tests that build stores directly).
    """
    if allowed is None:
        return True
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        return False
    return any(resolved == root or resolved.is_relative_to(root) for root in allowed)


def _gguf_files_in(directory: Path) -> list[Path]:
    """The GGUF files of a model directory (``*.gguf``, else ``*.bin`` holding GGUF)."""
    found = sorted(p for p in directory.glob("*.gguf") if p.is_file())
    if not found:
        found = sorted(p for p in directory.glob("*.bin") if p.is_file() and is_gguf(p))
    return found


def request_from_modelfile(modelfile: Modelfile, store: "ModelStore", base_dir: Path | None = None,
                           quantize: str = "", allowed_dirs: tuple[Path, ...] | None = None) -> CreateRequest:
    """Turn a parsed classic Modelfile into a create request, resolving what ``FROM`` names.

    ``FROM`` may name a local model, a blob (``@sha256:…``), a GGUF file on this machine
    (absolute, ``~``, or relative to ``base_dir``) or a directory holding GGUF files, tried in
    that order; a valid name that matches nothing is kept as a model name so the error says the
    model is missing. With ``allowed_dirs``, only files inside those directories are read; any
    other path gets :data:`SERVER_PATHS_REFUSED`, before the file system is looked at.
    """
    from_ = ""
    files: dict[str, str] = {}
    local_files: dict[str, Path] = {}
    adapters: dict[str, str] = {}
    local_adapters: dict[str, Path] = {}

    for command in modelfile.commands:
        if command.name not in ("model", "adapter"):
            continue
        arg = command.args
        is_model = command.name == "model"
        if is_model:
            try:
                existing = store.find_existing(ModelName.parse(arg))
            except InvalidName:
                existing = None
            if existing is not None:
                from_ = arg
                continue
        if arg.startswith("@"):
            digest = normalize_digest(arg[1:])
            (files if is_model else adapters)[digest] = digest
            continue
        path = _expand_path(arg, base_dir)
        if not path_allowed(path, allowed_dirs):
            if is_model and not _looks_like_path(arg) and ModelName.parse_lenient(arg).is_valid:
                from_ = arg
                continue
            raise InvalidRequest(SERVER_PATHS_REFUSED)
        if path.is_file():
            (local_files if is_model else local_adapters)[path.name] = path
            continue
        if path.is_dir():
            found = _gguf_files_in(path)
            if not found:
                raise InvalidRequest("no Modelfile or safetensors files found")
            target = local_files if is_model else local_adapters
            target.update({p.name: p for p in found})
            continue
        if is_model and ModelName.parse_lenient(arg).is_valid:
            from_ = arg
            continue
        raise InvalidRequest(f"invalid model reference: {arg}")

    return CreateRequest(
        from_=from_,
        files=files,
        adapters=adapters,
        local_files=local_files,
        local_adapters=local_adapters,
        template=(modelfile.values("template") or [""])[-1],
        system=(modelfile.values("system") or [""])[-1],
        license=tuple(modelfile.values("license")),
        parameters=modelfile.parameters,
        messages=tuple(modelfile.messages),
        requires=modelfile.requires,
        renderer=(modelfile.values("renderer") or [""])[-1],
        parser=(modelfile.values("parser") or [""])[-1],
        quantize=quantize,
    )


@attrs.frozen
class _Base:
    """A weights layer the new model will list."""

    media_type: str
    from_: str
    digest: str = ""  # empty until a local file has been imported
    local_path: Path | None = None
    info: GGUFInfo | None = None
    parse_status: bool = False  # announce "parsing GGUF" for it


@attrs.frozen
class _Text:
    """A small layer whose content is known up front (template, system, params…)."""

    media_type: str
    data: bytes
    status: str = ""


@attrs.frozen
class CreatePlan:
    name: ModelName
    bases: tuple[_Base, ...]
    #: Layers in their final order: ``_Base`` entries for weights (and copied small layers,
    #: which carry a digest), ``_Text`` for new small layers.
    layers: tuple[Any, ...]
    config: ModelConfig
    previous: Manifest | None


def _gguf_base(store: "ModelStore", digest: str, key: str, forced_media: str | None) -> _Base:
    if key.endswith(".safetensors"):
        raise InvalidRequest("converting safetensors models is not supported; supply a GGUF file")
    path = store.blob_path(digest)
    if not path.is_file():
        raise InvalidRequest(f'blob "{digest}" not found')
    if not is_gguf(path):
        raise NotGGUF()
    info = read_gguf_info(path)
    return _Base(media_type=forced_media or _media_for(info), from_=key, digest=digest, info=info,
                 parse_status=True)


def _media_for(info: GGUFInfo) -> str:
    if info.is_adapter:
        return MEDIA_ADAPTER
    if info.is_projector:
        return MEDIA_PROJECTOR
    return MEDIA_MODEL


def _local_base(path: Path, key: str, forced_media: str | None) -> _Base:
    if not is_gguf(path):
        raise NotGGUF()
    info = read_gguf_info(path)
    return _Base(media_type=forced_media or _media_for(info), from_=key, local_path=path, info=info,
                 parse_status=True)


def _add_projectors(store: "ModelStore", req: CreateRequest, bases: list[_Base], layers: list[Any]) -> None:
    """GGUF files next to ``from``: a projector (or adapter) added to an existing model.

    Ollama ignores files when ``from`` is set, so ``FROM llama3\nFROM ./mmproj.gguf`` silently
    loses the projector there. Here such files join the base model's layers; a new projector
    replaces the one the base had. Whole models cannot be added: a model has one set of weights.
    """
    extra = [_gguf_base(store, normalize_digest(req.files[key]), key, None) for key in sorted(req.files)]
    extra += [_local_base(req.local_files[key], key, None) for key in sorted(req.local_files)]
    if not extra:
        return
    if any(base.media_type == MEDIA_MODEL for base in extra):
        raise InvalidRequest("a model has one set of weights: 'from' names a model, so the files may "
                             "only add a projector or an adapter")
    if any(base.media_type == MEDIA_PROJECTOR for base in extra):
        kept = [b for b in bases if b.media_type != MEDIA_PROJECTOR]
        layers[:] = [layer for layer in layers if not (isinstance(layer, _Base) and layer.media_type == MEDIA_PROJECTOR)]
        bases[:] = kept
    bases.extend(extra)
    layers.extend(extra)


def _check_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Known options must have their type (a bad one would fail every later request); unknown
    keys are kept as given, as Ollama keeps them."""
    known = {k: v for k, v in parameters.items() if k in OPTION_TYPES}
    try:
        coerce_options(known)
    except OptionError as exc:
        raise InvalidRequest(exc.message) from None
    return {k: v for k, v in parameters.items() if v is not None}


def _message_json(message: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise InvalidRequest("messages must be objects with a role and content")
    out: dict[str, Any] = {}
    for key in _MESSAGE_FIELDS:
        value = message.get(key)
        if key in ("role", "content"):
            if value is not None and not isinstance(value, str):
                raise InvalidRequest(f"message {key} must be a string")
            out[key] = value or ""
        elif value:
            out[key] = value
    return out


def _info_overrides(info: Mapping[str, Any], config: dict[str, Any]) -> None:
    def text(key: str) -> str | None:
        if key not in info:
            return None
        value = info[key]
        if not isinstance(value, str):
            raise InvalidRequest(f'info field "{key}" must be a string')
        return value

    def number(key: str) -> int | None:
        if key not in info:
            return None
        value = info[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f'info field "{key}" must be a number')
        if value < 0 or int(value) != value:
            raise InvalidRequest(f'info field "{key}" must be a non-negative integer')
        return int(value)

    caps = info.get("capabilities")
    if isinstance(caps, list):
        config["capabilities"] = tuple(config["capabilities"]) + tuple(c for c in caps if isinstance(c, str))
    family = text("model_family")
    if family:
        config["model_family"] = family
        config["model_families"] = (family,)
    for key, field in (("base_name", "base_name"), ("quantization_level", "file_type"),
                       ("parameter_size", "model_type")):
        value = text(key)
        if value:
            config[field] = value
    for key in ("context_length", "embedding_length"):
        value = number(key)
        if value:
            config[key] = value


def _replace(layers: list[Any], media_types: tuple[str, ...], new: Any | None) -> list[Any]:
    """Drop layers of these media types and append ``new``: Ollama's set-or-replace rule."""
    kept = [layer for layer in layers if layer.media_type not in media_types]
    if new is not None:
        kept.append(new)
    return kept


def plan_create(store: "ModelStore", name: ModelName, req: CreateRequest) -> CreatePlan:
    """Validate ``req`` completely and decide the new manifest's layers. Touches nothing."""
    for key, digest in list(req.files.items()) + list(req.adapters.items()):
        if not isinstance(key, str) or not _valid_relative_path(key):
            raise InvalidRequest("file path must be relative")
        if not digest:
            raise InvalidRequest("invalid digest format")
        normalize_digest(digest)
    if len(req.adapters) + len(req.local_adapters) > 1:
        raise InvalidRequest("only one adapter is currently supported")

    config: dict[str, Any] = {"renderer": req.renderer, "parser": req.parser, "requires": req.requires,
                              "model_format": "", "capabilities": ()}
    layers: list[Any] = []
    bases: list[_Base] = []
    previous = store.read_manifest_or_none(name)

    if req.from_:
        try:
            from_name = ModelName.parse(req.from_)
        except InvalidName:
            raise InvalidRequest("invalid model name") from None
        existing = store.find_existing(from_name)
        if existing is None:
            raise ModelNotFound(req.from_)
        source = store.resolve(existing)
        source_config = source.model_config
        for key in ("renderer", "parser", "requires"):
            config[key] = config[key] or getattr(source_config, key)
        config["model_format"] = source_config.model_format
        config["capabilities"] = source_config.capabilities
        for layer in source.manifest.layers:
            info = None
            if layer.media_type in (MEDIA_MODEL, MEDIA_PROJECTOR, MEDIA_ADAPTER, MEDIA_DRAFT):
                path = store.blob_path(layer.digest)
                info = read_gguf_info(path) if is_gguf(path) else None
            base = _Base(media_type=layer.media_type, from_=source.name.display, digest=layer.digest,
                         info=info)
            bases.append(base)
            layers.append(base)
        _add_projectors(store, req, bases, layers)
    elif req.files or req.local_files:
        for key in sorted(req.files):
            bases.append(_gguf_base(store, normalize_digest(req.files[key]), key, None))
        for key in sorted(req.local_files):
            bases.append(_local_base(req.local_files[key], key, None))
        layers.extend(bases)
        # Template autodetection, from the first model file whose chat format is recognised.
        detected: ChatFormat | None = None
        for base in bases:
            if base.info is not None and base.media_type == MEDIA_MODEL:
                detected = detect_chat_format(base.info.chat_template, base.info.architecture)
                if detected is not None:
                    break
        if detected is not None:
            layers.append(_Text(MEDIA_TEMPLATE, detected.template.encode(),
                                status=f"using autodetected template {detected.name}"))
            layers.append(_Text(MEDIA_PARAMS, go_json({"stop": list(detected.stop)}, sort_keys=True)))
    else:
        raise InvalidRequest("neither 'from' or 'files' was specified")

    for key in sorted(req.adapters):
        base = _gguf_base(store, normalize_digest(req.adapters[key]), key, MEDIA_ADAPTER)
        bases.append(base)
        layers.append(base)
    for key in sorted(req.local_adapters):
        base = _local_base(req.local_adapters[key], key, MEDIA_ADAPTER)
        bases.append(base)
        layers.append(base)

    # Config values come from the (first) model layer's GGUF header.
    families: list[str] = []
    for base in bases:
        if base.media_type == MEDIA_MODEL and base.info is not None:
            info = base.info
            config["model_format"] = config["model_format"] or "gguf"
            config.setdefault("model_family", info.architecture)
            config.setdefault("model_type", info.parameter_size)
            config.setdefault("file_type", info.file_type)
            families.append(info.architecture)
    config["model_families"] = tuple(families)

    if req.quantize:
        _check_quantize(req.quantize, bases)
    if req.info:
        _info_overrides(req.info, config)

    if req.template:
        try:
            store.templates.check(req.template)
        except ValueError as exc:
            raise InvalidRequest(f"template error: {exc}") from None
        layers = _replace(layers, (MEDIA_TEMPLATE, MEDIA_PROMPT), _Text(MEDIA_TEMPLATE, req.template.encode()))
    if req.system:
        layers = _replace(layers, (MEDIA_SYSTEM,), _Text(MEDIA_SYSTEM, req.system.encode()))
    for text in req.license:
        if not isinstance(text, str):
            raise InvalidRequest("license must be a string or a list of strings")
        if text:
            layers.append(_Text(MEDIA_LICENSE, text.encode()))

    # Parameters merge: new keys win, inherited keys stay.
    parameters = _check_parameters(dict(req.parameters))
    inherited: dict[str, Any] = {}
    for layer in layers:
        if layer.media_type == MEDIA_PARAMS:
            inherited.update(_load_params(store, layer))
    merged = {**inherited, **parameters}
    if merged:
        layers = _replace(layers, (MEDIA_PARAMS,), _Text(MEDIA_PARAMS, go_json(merged, sort_keys=True)))

    if req.messages:
        encoded = [_message_json(m) for m in req.messages]
        layers = _replace(layers, (MEDIA_MESSAGES,), _Text(MEDIA_MESSAGES, go_json(encoded)))

    model_config = ModelConfig(
        model_format=config.get("model_format", ""),
        model_family=config.get("model_family", ""),
        model_families=tuple(config.get("model_families", ())),
        model_type=config.get("model_type", ""),
        file_type=config.get("file_type", ""),
        renderer=config.get("renderer", ""),
        parser=config.get("parser", ""),
        requires=config.get("requires", ""),
        capabilities=tuple(config.get("capabilities", ())),
        context_length=config.get("context_length", 0),
        embedding_length=config.get("embedding_length", 0),
        base_name=config.get("base_name", ""),
    )
    return CreatePlan(name=name, bases=tuple(bases), layers=tuple(layers), config=model_config,
                      previous=previous)


def _load_params(store: "ModelStore", layer: Any) -> dict[str, Any]:
    if isinstance(layer, _Text):
        data = layer.data
    else:
        data = store.blob_path(layer.digest).read_bytes()
    try:
        loaded = json.loads(data)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _check_quantize(quantize: str, bases: list[_Base]) -> None:
    want = _QUANT_TYPES.get(quantize.upper())
    if want is None:
        raise InvalidRequest(
            f"unsupported quantization type {quantize.upper()} - supported types are F32, F16, "
            "Q4_K_S, Q4_K_M, Q8_0")
    for base in bases:
        if base.media_type != MEDIA_MODEL or base.info is None:
            continue
        current = base.info.file_type
        if current == want:
            continue
        if current not in ("F16", "BF16", "F32"):
            raise InvalidRequest("quantization is only supported for F16, BF16 and F32 models")
        raise InvalidRequest(f"quantizing {current} model to {want} is not supported by this server")


def run_create(store: "ModelStore", plan: CreatePlan, *, prune: bool = True) -> Iterator[dict[str, Any]]:
    """Carry out a plan, yielding Ollama's progress objects; the last one is ``success``.

    The slow part, importing files from this machine's disk, happens first and outside the
    store lock. Writing the small blobs, the config and the manifest, and pruning what the
    replaced manifest no longer needs, happen under the lock in one go, so a concurrent delete
    cannot remove a blob between the moment it is written and the moment a manifest lists it.
    """
    imported: dict[int, str] = {}
    for index, base in enumerate(plan.bases):
        if base.parse_status:
            yield {"status": "parsing GGUF"}
        if base.local_path is not None:
            imported[index], _ = store.import_file(base.local_path)

    base_index = {id(base): index for index, base in enumerate(plan.bases)}
    final: list[Layer] = []
    statuses: list[str] = []
    with store.lock:
        for item in plan.layers:
            if isinstance(item, _Base):
                digest = imported.get(base_index.get(id(item), -1), item.digest)
                path = store.blob_path(digest)
                if not path.is_file():
                    raise StoreError(f"blob {digest} is missing; was the source model deleted?")
                os.utime(path)  # fresh mtime: the startup prune spares recently used blobs
                final.append(Layer(media_type=item.media_type, digest=digest,
                                   size=path.stat().st_size, from_=item.from_))
                statuses.append(f"using existing layer {digest}")
            else:
                digest, created = store.write_blob_bytes(item.data)
                final.append(Layer(media_type=item.media_type, digest=digest, size=len(item.data)))
                verb = "creating new" if created else "using existing"
                statuses.append(item.status or f"{verb} layer {digest}")
        config_bytes = plan.config.to_bytes()
        config_digest, _ = store.write_blob_bytes(config_bytes)
        manifest = Manifest(
            config=Layer(media_type=CONFIG_MEDIA_TYPE, digest=config_digest, size=len(config_bytes)),
            layers=tuple(final),
        )
        store.write_manifest(plan.name, manifest)
        if prune and plan.previous is not None:
            store.remove_unreferenced(plan.previous.digests)
    log.info("model_created", model=plan.name.display, layers=len(final))
    for status in statuses:
        yield {"status": status}
    yield {"status": "writing manifest"}
    yield {"status": "success"}
