"""Server configuration, read once from the environment with Ollama's variable names.

Every knob a user knows from Ollama (``OLLAMA_HOST``, ``OLLAMA_MODELS``, ``OLLAMA_NUM_PARALLEL``…)
means the same thing here, with the same default. Unlike Ollama, a value that does not parse stops
the server with a message naming the variable: a typo in a unit file should not silently fall back
to a default and leave the operator guessing why a setting "does nothing".

trillama's own additions use the ``TRILLAMA_`` prefix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Mapping, TypeVar
from urllib.parse import urlsplit

import attrs

from trillama.durations import FOREVER, DurationError, parse_go_duration

__all__ = ["ConfigError", "Settings", "PreloadSpec", "parse_byte_size", "parse_preload", "DEFAULT_ORIGINS"]

T = TypeVar("T")


class ConfigError(ValueError):
    """An environment variable holds a value that cannot be used."""


#: Origins Ollama always allows, before ``OLLAMA_ORIGINS`` adds more.
DEFAULT_ORIGINS: tuple[str, ...] = tuple(
    [
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for scheme in ("http", "https")
        for port in ("", ":*")
    ]
    + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]
)

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
}


def parse_byte_size(text: str) -> int:
    """Parse ``"2GiB"``, ``"500MB"``, ``"1.5g"`` or a plain byte count."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"not a byte size: {text!r}")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])


def _parse_bool(text: str) -> bool:
    # Go's strconv.ParseBool, which Ollama uses.
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_uint(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _parse_duration(text: str) -> float:
    try:
        seconds = float(text)  # Ollama also accepts integer seconds here
    except ValueError:
        try:
            seconds = parse_go_duration(text)
        except DurationError as exc:
            raise ValueError(str(exc)) from None
    return FOREVER if seconds < 0 else seconds


def parse_host(text: str) -> tuple[str, int]:
    """Ollama's OLLAMA_HOST grammar: ``[scheme://]host[:port][/path]``."""
    default_port = 11434
    if "://" not in text:
        text = "http://" + text
    else:
        scheme = text.split("://", 1)[0]
        if scheme == "https":
            default_port = 443
        elif scheme == "http":
            default_port = 80
    parts = urlsplit(text)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or default_port
    except ValueError:
        port = 11434
    return host, port


def _parse_origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


def _parse_kv_type(text: str) -> str:
    if text not in ("f16", "q8_0", "q4_0"):
        raise ValueError('must be one of "f16", "q8_0", "q4_0"')
    return text


def _parse_debug(text: str) -> int:
    if text in ("1", "2"):
        return int(text)
    return 1 if _parse_bool(text) else 0


def _parse_log_format(text: str) -> str:
    if text not in ("console", "json"):
        raise ValueError('must be "console" or "json"')
    return text


@attrs.frozen
class PreloadSpec:
    """One model to pull (when missing) and load before the server reports ready."""

    name: str
    #: seconds; ``FOREVER`` keeps it loaded (the default: a preloaded model is there to stay).
    keep_alive: float = FOREVER


def parse_preload(text: str) -> tuple[PreloadSpec, ...]:
    """``TRILLAMA_PRELOAD``: ``name[=keep_alive],…``, e.g. ``smollm2:135m,host:5000/lib/m:q4=30m``.

    ``=`` cannot occur in a model name, so it separates the optional keep-alive (Ollama's duration
    grammar: ``30m``, ``3600``, ``-1`` for forever) without clashing with a registry's ``host:port``.
    """
    out: list[PreloadSpec] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, keep = item.partition("=")
        name = name.strip()
        if not name:
            raise ValueError(f"no model name in {item!r}")
        try:
            from trillama.store.names import ModelName

            ModelName.parse(name)
        except Exception:
            raise ValueError(f"invalid model name {name!r}") from None
        out.append(PreloadSpec(name, _parse_duration(keep.strip()) if sep else FOREVER))
    return tuple(out)


def _parse_seconds(text: str) -> float:
    seconds = _parse_duration(text)
    if seconds == FOREVER:
        raise ValueError("must not be negative")
    return seconds


def _parse_timeout(text: str) -> float:
    """Seconds or a Go duration; must be positive (a timeout of zero would refuse everything)."""
    seconds = _parse_duration(text)
    if not seconds > 0:
        raise ValueError("must be a positive duration")
    return seconds


def _parse_paths(text: str) -> tuple[Path, ...]:
    """Directories separated by ``os.pathsep``; each must be absolute."""
    paths = tuple(Path(p).expanduser() for p in text.split(os.pathsep) if p.strip())
    for path in paths:
        if not path.is_absolute():
            raise ValueError(f"{str(path)!r} is not an absolute path")
    return tuple(p.resolve() for p in paths)


def _parse_file_path(text: str) -> Path:
    return Path(text).expanduser().absolute()


def _parse_api_key(text: str) -> str:
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in text):
        raise ValueError("an API key is printable ASCII without spaces (it travels in an HTTP header)")
    return text


def _default_threads() -> int:
    # Lazily: actors/ imports this module. Physical cores within CPU affinity and cgroup quota.
    from trillama.actors.cpu import default_threads

    return default_threads()


@attrs.frozen
class Settings:
    """The effective configuration of one server process."""

    host: str = "127.0.0.1"
    port: int = 11434
    models_dir: Path = attrs.field(factory=lambda: Path.home() / ".ollama" / "models")
    keep_alive: float = 300.0
    num_parallel: int = 1
    max_loaded_models: int = 0
    max_queue: int = 512
    origins: tuple[str, ...] = ()
    noprune: bool = False
    debug: int = 0
    context_length: int = 0
    gpu_overhead: int = 0
    load_timeout: float = 300.0
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"
    #: trillama: cap on the memory the scheduler may hand out (bytes); 0 = what the machine has.
    memory_limit: int = 0
    #: trillama: bytes of saved prompt states all runners together keep in RAM (``TRILLAMA_PROMPT_CACHE``);
    #: -1 = an eighth of the machine's memory, at most 8 GiB; 0 = none, and no prefix taken from another
    #: slot either (each slot reuses only its own tokens, as before issue 22).
    prompt_cache: int = -1
    #: trillama: bytes of saved prompt states kept on disk under ``OLLAMA_MODELS/cache/prompts``
    #: (``TRILLAMA_PROMPT_CACHE_DISK``), surviving reloads and restarts; 0 = no disk tier.
    prompt_cache_disk: int = 0
    #: trillama: threads each runner decodes with; 0 = physical cores within the CPU affinity and
    #: cgroup quota, lowered while busy neighbours use cores (actors/cpu.py). A number pins it.
    num_threads: int = 0
    #: trillama: create the bundled ``smollm2:135m`` on start when the store lacks it.
    bundled_model: bool = True
    #: trillama: ``console`` (human) or ``json`` log lines.
    log_format: str = "console"
    #: trillama: models to pull when missing and load before readiness turns 200 (``TRILLAMA_PRELOAD``).
    preload: tuple[PreloadSpec, ...] = ()
    #: trillama: preload pulls may use plain HTTP / unverified TLS (a local registry).
    preload_insecure: bool = False
    #: trillama: on SIGTERM, how long streams in flight may run before the runners stop.
    drain_seconds: float = 30.0
    #: trillama: memory for stored ``/v1/responses`` replies (``previous_response_id``); 0 = keep none.
    responses_store_size: int = 64 * 2**20
    #: trillama: how long a stored response can be retrieved or continued, in seconds.
    responses_store_ttl: float = 3600.0
    #: trillama: largest request body (bytes) a route reads into memory; 0 = no cap. Blob uploads
    #: stream to disk and are exempt. The default admits a chat with a dozen large base64 images.
    max_body_size: int = 64 * 2**20
    #: trillama: seconds a client may take to send a request's headers, from their first byte.
    header_timeout: float = 30.0
    #: trillama: seconds a request body may stall (no byte arriving) before the connection closes.
    body_timeout: float = 60.0
    #: trillama: after ``body_timeout`` seconds of grace, the least average rate (bytes a second)
    #: a request body must arrive at; 0 = no rate (a trickling body is then only cut if it stalls).
    body_min_rate: int = 1024
    #: trillama: directories whose files the classic create forms (``FROM /path``, ``ADAPTER /path``,
    #: ``"path"``) may read. Empty (the default): server-side paths outside the store are refused.
    create_paths: tuple[Path, ...] = ()
    #: trillama: the API key file (hashed keys with ids, scopes, model allow-lists, limits; reloaded
    #: when it changes). Unset, and without ``api_key``: no keys are asked for (docs/security.md).
    api_keys_file: Path | None = None
    #: trillama: one API key with every scope (``TRILLAMA_API_KEY``); never logged.
    api_key: str = attrs.field(default="", repr=False)
    #: trillama: refuse to start listening beyond loopback without keys.
    require_keys: bool = False
    #: trillama: wrong keys one client address may present per minute before it must wait (0 = no brake).
    auth_failures_per_minute: int = 10
    #: trillama: TLS certificate chain and private key (PEM); both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: The ed25519 key that signs registry token requests (Ollama's, so a registered key works).
    keypair: Path = attrs.field(factory=lambda: Path.home() / ".ollama" / "id_ed25519")

    @property
    def allowed_origins(self) -> tuple[str, ...]:
        return self.origins + DEFAULT_ORIGINS

    @property
    def effective_max_loaded_models(self) -> int:
        return self.max_loaded_models or 3

    @property
    def default_num_ctx(self) -> int:
        # Ollama's lowest VRAM tier; this machine class has no large GPU.
        return self.context_length or 4096

    @property
    def effective_num_threads(self) -> int:
        return self.num_threads or _default_threads()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read the configuration; raise ``ConfigError`` naming the first bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}

        def read(name: str, field: str, parse: Callable[[str], T]) -> None:
            raw = env.get(name)
            if raw is None:
                return
            raw = raw.strip().strip("\"'")  # Ollama's Var() trims spaces and quotes
            if raw == "":
                return
            try:
                values[field] = parse(raw)
            except (ValueError, TypeError) as exc:
                shown = "(hidden)" if name == "TRILLAMA_API_KEY" else repr(raw)  # never echo a secret
                raise ConfigError(f"invalid value for {name}: {shown} ({exc})") from None

        raw_host = env.get("OLLAMA_HOST", "").strip().strip("\"'")
        if raw_host:
            values["host"], values["port"] = parse_host(raw_host)
        read("OLLAMA_MODELS", "models_dir", lambda s: Path(s).expanduser())
        read("OLLAMA_KEEP_ALIVE", "keep_alive", _parse_duration)
        read("OLLAMA_NUM_PARALLEL", "num_parallel", lambda s: max(1, _parse_uint(s)))
        read("OLLAMA_MAX_LOADED_MODELS", "max_loaded_models", _parse_uint)
        read("OLLAMA_MAX_QUEUE", "max_queue", _parse_uint)
        read("OLLAMA_ORIGINS", "origins", _parse_origins)
        read("OLLAMA_NOPRUNE", "noprune", _parse_bool)
        read("OLLAMA_DEBUG", "debug", _parse_debug)
        read("OLLAMA_CONTEXT_LENGTH", "context_length", _parse_uint)
        read("OLLAMA_GPU_OVERHEAD", "gpu_overhead", parse_byte_size)
        read("OLLAMA_LOAD_TIMEOUT", "load_timeout", _parse_duration)
        read("OLLAMA_FLASH_ATTENTION", "flash_attention", _parse_bool)
        read("OLLAMA_KV_CACHE_TYPE", "kv_cache_type", _parse_kv_type)
        read("TRILLAMA_MEMORY_LIMIT", "memory_limit", parse_byte_size)
        read("TRILLAMA_NUM_THREADS", "num_threads", _parse_uint)
        read("TRILLAMA_PROMPT_CACHE", "prompt_cache", parse_byte_size)
        read("TRILLAMA_PROMPT_CACHE_DISK", "prompt_cache_disk", parse_byte_size)
        read("TRILLAMA_BUNDLED_MODEL", "bundled_model", _parse_bool)
        read("TRILLAMA_LOG_FORMAT", "log_format", _parse_log_format)
        read("TRILLAMA_PRELOAD", "preload", parse_preload)
        read("TRILLAMA_PRELOAD_INSECURE", "preload_insecure", _parse_bool)
        read("TRILLAMA_DRAIN_SECONDS", "drain_seconds", _parse_seconds)
        read("TRILLAMA_RESPONSES_STORE_SIZE", "responses_store_size", parse_byte_size)
        read("TRILLAMA_RESPONSES_STORE_TTL", "responses_store_ttl", _parse_duration)
        read("TRILLAMA_MAX_BODY_SIZE", "max_body_size", parse_byte_size)
        read("TRILLAMA_HEADER_TIMEOUT", "header_timeout", _parse_timeout)
        read("TRILLAMA_BODY_TIMEOUT", "body_timeout", _parse_timeout)
        read("TRILLAMA_BODY_MIN_RATE", "body_min_rate", parse_byte_size)
        read("TRILLAMA_CREATE_PATHS", "create_paths", _parse_paths)
        read("TRILLAMA_API_KEYS_FILE", "api_keys_file", _parse_file_path)
        read("TRILLAMA_API_KEY", "api_key", _parse_api_key)
        read("TRILLAMA_REQUIRE_KEYS", "require_keys", _parse_bool)
        read("TRILLAMA_AUTH_FAILURES_PER_MINUTE", "auth_failures_per_minute", _parse_uint)
        read("TRILLAMA_TLS_CERT", "tls_cert", _parse_file_path)
        read("TRILLAMA_TLS_KEY", "tls_key", _parse_file_path)
        if ("tls_cert" in values) != ("tls_key" in values):
            missing = "TRILLAMA_TLS_KEY" if "tls_cert" in values else "TRILLAMA_TLS_CERT"
            raise ConfigError(f"TLS needs both TRILLAMA_TLS_CERT and TRILLAMA_TLS_KEY; {missing} is not set")
        return cls(**values)  # type: ignore[arg-type]

    def as_log_fields(self) -> dict[str, object]:
        """Flat key/values for the one startup log event."""
        fields = attrs.asdict(self)
        fields["models_dir"] = str(self.models_dir)
        fields["keypair"] = str(self.keypair)
        fields["origins"] = list(self.allowed_origins)
        fields["keep_alive"] = "forever" if self.keep_alive == FOREVER else self.keep_alive
        fields["preload"] = [p.name if p.keep_alive == FOREVER else f"{p.name}={p.keep_alive}"
                             for p in self.preload]
        fields["create_paths"] = [str(p) for p in self.create_paths]
        fields["api_key"] = "set" if self.api_key else None  # the key itself is never logged
        for name in ("api_keys_file", "tls_cert", "tls_key"):
            fields[name] = None if fields[name] is None else str(fields[name])
        for name in ("header_timeout", "body_timeout"):
            if fields[name] == FOREVER:
                fields[name] = "forever"
        return fields
