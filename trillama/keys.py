"""API keys: the key file, hashing, lookup in constant time, and reloading while serving.

A key is a random secret handed to one client (``trk_`` and 43 URL-safe characters: 256 bits).
The server never stores it: the key file (``TRILLAMA_API_KEYS_FILE``) holds its SHA-256, an id
that logs and metrics may show, its scopes, an optional model allow-list and its limits. A fast
hash is the right one here — a slow password hash protects guessable secrets, and these are not
guessable. ``TRILLAMA_API_KEY`` is the one-key shortcut: a key with every scope, id ``default``.

The file is TOML, one table per key, so it is easy to read, edit and diff by hand, and TOML
itself refuses a duplicate id::

    [keys.alice]
    hash = "sha256:9f86d0…"           # trillama keys add prints the key once and stores this
    scopes = ["inference"]              # inference, manage, admin
    models = ["smollm2:*", "gemma3:270m"]   # optional allow-list (shell patterns)
    max_concurrent = 4                  # optional limits; 0 or absent = none
    requests_per_minute = 60
    tokens_per_minute = 20000

It is validated strictly (unknown fields, wrong types and unknown scopes are errors naming the
key and field): a typo must not silently widen or drop a restriction. :class:`KeySource` reloads
the file when it changes, checked on each request (one ``stat``), so an edit or a revocation
takes effect at the next request; a file that fails to load leaves the keys in force as they
were, and says why in the log.

:func:`add_key` and :func:`revoke_key` (``trillama keys``) edit the file with tomlkit, which keeps
the operator's comments and layout, and replace it atomically.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
import tomllib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import attrs
import cattrs

from trillama.logs import get_logger
from trillama.store.atomic import write_atomic

__all__ = ["SCOPES", "KeyFileError", "KeyLimits", "ApiKey", "KeyRing", "KeySource", "hash_key", "new_secret",
           "parse_key_file", "load_key_file", "add_key", "revoke_key", "ENV_KEY_ID"]

log = get_logger("trillama.keys")

#: What a key may do: ``inference`` (generate, chat, embed, ``/v1/*``, tags, show, ps), ``manage``
#: (create, copy, delete, pull, push, blobs), ``admin`` (metrics, runners, keys).
SCOPES = ("inference", "manage", "admin")
#: The id of the key given by ``TRILLAMA_API_KEY``.
ENV_KEY_ID = "default"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_PREFIX = "trk_"


class KeyFileError(ValueError):
    """The key file (or ``TRILLAMA_API_KEY``) cannot be used; the message says where and why."""


@attrs.frozen
class KeyLimits:
    """Per-key limits; 0 means none."""

    max_concurrent: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0

    @property
    def any(self) -> bool:
        return bool(self.max_concurrent or self.requests_per_minute or self.tokens_per_minute)


@attrs.frozen
class ApiKey:
    id: str
    digest: bytes = attrs.field(repr=False)
    scopes: frozenset[str]
    models: tuple[str, ...] = ()
    limits: KeyLimits = KeyLimits()
    created: str = ""

    def allows_model(self, name: str) -> bool:
        """Is ``name`` within this key's allow-list (always, without one)?

        Names are compared as Ollama resolves them — ``smollm2`` is ``smollm2:latest``, the
        default registry and namespace may be left out — and case-insensitively; a pattern may
        use shell wildcards (``gemma3:*``).
        """
        if not self.models:
            return True
        wanted = {name.lower(), _canonical(name)}
        return any(fnmatch.fnmatchcase(candidate, pattern) for pattern in self.models for candidate in wanted)


def _canonical(name: str) -> str:
    """The short display form of a model name, lower case (the name itself if it does not parse)."""
    from trillama.store.names import InvalidName, ModelName

    try:
        return ModelName.parse(name.strip()).display.lower()
    except (InvalidName, ValueError):
        return name.strip().lower()


def _pattern(text: str) -> str:
    """A model pattern as :meth:`ApiKey.allows_model` matches it: canonical unless it has wildcards."""
    return text.strip().lower() if any(c in text for c in "*?[") else _canonical(text)


def hash_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


def new_secret() -> str:
    return _PREFIX + secrets.token_urlsafe(32)


class KeyRing:
    """The keys in force, found by the secret a client presents, in constant time."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self.keys: tuple[ApiKey, ...] = tuple(keys)
        self.by_id = {key.id: key for key in self.keys}

    def find(self, presented: str) -> ApiKey | None:
        """The key whose hash matches ``presented``, comparing with every key in constant time.

        Every stored digest is compared (no early exit) with ``hmac.compare_digest``, so the time
        taken says nothing about which key, or which bytes of a key, came close.
        """
        digest = hash_key(presented)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def __len__(self) -> int:
        return len(self.keys)


# ----------------------------------------------------------------------------- the file's shape
@attrs.frozen
class _Entry:
    """One ``[keys.<id>]`` table as written in the file."""

    hash: str
    scopes: list[str] = attrs.Factory(lambda: ["inference"])
    models: list[str] = attrs.Factory(list)
    max_concurrent: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    created: str = ""


def _strict(kind: type, check: Any = None) -> Any:
    def structure(value: Any, _: type) -> Any:
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        if check is not None:
            check(value)
        return value
    return structure


def _non_negative(value: int) -> None:
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")


_converter = cattrs.Converter(forbid_extra_keys=True)
_converter.register_structure_hook(str, _strict(str))
_converter.register_structure_hook(int, _strict(int, _non_negative))


def _string_list(value: Any, _: type) -> list[str]:
    if type(value) is not list or any(type(v) is not str for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return value


_converter.register_structure_hook_func(lambda kind: kind == list[str], _string_list)


def _say(exc: BaseException, kind: Any) -> str:
    """One validation problem in words (ours say what was expected and what came)."""
    from cattrs.errors import ForbiddenExtraKeysError
    from cattrs.v import format_exception

    if isinstance(exc, ForbiddenExtraKeysError):
        return f"unknown field {sorted(exc.extra_fields)[0]!r}"
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return format_exception(exc, kind)


def _entry_to_key(key_id: str, entry: _Entry) -> ApiKey:
    where = f"keys.{key_id}"
    if not _ID.fullmatch(key_id):
        raise KeyFileError(f"{where}: an id is 1-64 letters, digits, '.', '_' or '-', starting with a letter "
                           "or digit")
    if not _HASH.fullmatch(entry.hash):
        raise KeyFileError(f"{where}.hash: expected \"sha256:\" and 64 lower-case hex digits (the key itself "
                           "is never stored: `trillama keys add` writes this)")
    unknown = [s for s in entry.scopes if s not in SCOPES]
    if unknown:
        raise KeyFileError(f"{where}.scopes: unknown scope {unknown[0]!r} (scopes are {', '.join(SCOPES)})")
    if not entry.scopes:
        raise KeyFileError(f"{where}.scopes: a key needs at least one scope ({', '.join(SCOPES)})")
    if any(not m.strip() for m in entry.models):
        raise KeyFileError(f"{where}.models: an empty model pattern")
    return ApiKey(
        id=key_id, digest=bytes.fromhex(entry.hash.split(":", 1)[1]), scopes=frozenset(entry.scopes),
        models=tuple(_pattern(m) for m in entry.models),
        limits=KeyLimits(entry.max_concurrent, entry.requests_per_minute, entry.tokens_per_minute),
        created=entry.created)


def parse_key_file(text: str, source: str = "key file") -> list[ApiKey]:
    """The keys in the TOML ``text``; :class:`KeyFileError` naming the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KeyFileError(f"{source}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"keys"})
    if extra:
        raise KeyFileError(f"{source}: unknown top-level entry {extra[0]!r} (keys go in [keys.<id>] tables)")
    tables = data.get("keys", {})
    if not isinstance(tables, dict):
        raise KeyFileError(f"{source}: 'keys' must be a table of [keys.<id>] tables")
    keys: list[ApiKey] = []
    seen: dict[bytes, str] = {}
    for key_id, table in tables.items():
        if not isinstance(table, dict):
            raise KeyFileError(f"{source}: keys.{key_id} must be a table ([keys.{key_id}])")
        try:
            entry = _converter.structure(table, _Entry)
        except Exception as exc:  # cattrs' validation errors, made readable
            problems = cattrs.transform_error(exc, path=f"keys.{key_id}", format_exception=_say) if isinstance(
                exc, cattrs.BaseValidationError) else [str(exc)]
            raise KeyFileError(f"{source}: {problems[0]}") from None
        try:
            key = _entry_to_key(key_id, entry)
        except KeyFileError as exc:
            raise KeyFileError(f"{source}: {exc}") from None
        if key.digest in seen:
            raise KeyFileError(f"{source}: keys.{key_id} and keys.{seen[key.digest]} hold the same key")
        seen[key.digest] = key_id
        keys.append(key)
    return keys


def load_key_file(path: Path) -> list[ApiKey]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file (create it with `trillama keys add NAME`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot be read: {exc}") from None
    return parse_key_file(text, str(path))


def env_key(secret: str) -> ApiKey:
    """The key given by ``TRILLAMA_API_KEY``: every scope, no limits."""
    return ApiKey(id=ENV_KEY_ID, digest=hash_key(secret), scopes=frozenset(SCOPES))


# ----------------------------------------------------------------------------- keys in force
def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KeySource:
    """The keys in force: ``TRILLAMA_API_KEY`` plus the key file, reloaded when the file changes."""

    def __init__(self, path: Path | None = None, secret: str = "") -> None:
        self.path = path
        self._env = [env_key(secret)] if secret else []
        self._signature: tuple[int, int, int, int] | None = None
        self._failed: tuple[int, int, int, int] | None = None
        self.ring = KeyRing(self._env)
        self.reloads = 0
        if path is not None:
            self._signature = _signature(path)
            self.ring = self._combine(load_key_file(path))

    @classmethod
    def from_settings(cls, settings: Any) -> "KeySource | None":
        """The configured keys, ``None`` when none are (access is then open); raises
        :class:`KeyFileError` for a key file that cannot be used."""
        path, secret = settings.api_keys_file, settings.api_key
        if path is None and not secret:
            return None
        return cls(path, secret)

    def _combine(self, keys: list[ApiKey]) -> KeyRing:
        if self._env and any(k.id == ENV_KEY_ID for k in keys):
            raise KeyFileError(f"{self.path}: the id {ENV_KEY_ID!r} is TRILLAMA_API_KEY's; use another")
        if self._env and any(k.digest == self._env[0].digest for k in keys):
            raise KeyFileError(f"{self.path}: holds the same key as TRILLAMA_API_KEY")
        return KeyRing([*self._env, *keys])

    def current(self) -> KeyRing:
        """The keys in force now, after reloading the file if it changed since the last look."""
        if self.path is None:
            return self.ring
        signature = _signature(self.path)
        if signature == self._signature or signature is None and self._signature is None:
            return self.ring
        if signature is None:
            # Gone (or being replaced): keep the keys in force rather than open or shut the door.
            if self._failed != (0, 0, 0, 0):
                log.warning("api_keys_file_missing", path=str(self.path), keeping=len(self.ring))
                self._failed = (0, 0, 0, 0)
            return self.ring
        if signature == self._failed:
            return self.ring
        try:
            ring = self._combine(load_key_file(self.path))
        except KeyFileError as exc:
            self._failed = signature
            log.error("api_keys_reload_failed", path=str(self.path), error=str(exc),
                      keeping=[k.id for k in self.ring.keys])
            return self.ring
        self._signature, self._failed = signature, None
        before = set(self.ring.by_id)
        self.ring = ring
        self.reloads += 1
        log.info("api_keys_reloaded", path=str(self.path), keys=len(ring),
                 added=sorted(set(ring.by_id) - before), removed=sorted(before - set(ring.by_id)))
        return ring


# ----------------------------------------------------------------------------- editing the file
_HEADER = """\
trillama API keys (TRILLAMA_API_KEYS_FILE). The server reloads this file when it changes.
Each [keys.<id>] table: hash (never the key), scopes (inference, manage, admin), optional
models (allow-list, shell patterns) and limits (max_concurrent, requests_per_minute,
tokens_per_minute; 0 = none). Manage it with `trillama keys add|list|revoke`, or edit it."""


def _read_document(path: Path) -> Any:
    import tomlkit

    if not path.exists():
        doc = tomlkit.document()
        for line in _HEADER.splitlines():
            doc.add(tomlkit.comment(line))
        doc.add(tomlkit.nl())
        return doc
    load_key_file(path)  # never add to (or write back) a file that does not load
    return tomlkit.parse(path.read_text(encoding="utf-8"))


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step (the server never sees half a file), owner-only by default."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    write_atomic(path, text.encode("utf-8"), mode=mode)


def add_key(path: Path, key_id: str, scopes: Iterable[str] = ("inference",), models: Iterable[str] = (),
            limits: KeyLimits = KeyLimits()) -> str:
    """Add a key ``key_id`` to the file (created if missing); returns the new secret, which is
    stored nowhere (only its hash is)."""
    import tomlkit

    doc = _read_document(path)
    keys = doc.get("keys")
    if keys is None:
        keys = tomlkit.table(is_super_table=True)
        doc["keys"] = keys
    if key_id in keys:
        raise KeyFileError(f"{path}: a key {key_id!r} exists already (revoke it first, or pick another id)")
    secret = new_secret()
    table = tomlkit.table()
    table["hash"] = "sha256:" + hash_key(secret).hex()
    table["scopes"] = list(dict.fromkeys(scopes))
    if models:
        table["models"] = list(models)
    for field in attrs.fields(KeyLimits):
        value = getattr(limits, field.name)
        if value:
            table[field.name] = value
    table["created"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    keys[key_id] = table
    text = tomlkit.dumps(doc)
    parse_key_file(text, str(path))  # what is written must load: an invalid id or scope stops here
    _write_atomically(path, text)
    return secret


def revoke_key(path: Path, key_id: str) -> None:
    """Remove ``key_id`` from the file; the server refuses it from the next request on."""
    import tomlkit

    if not path.exists():
        raise KeyFileError(f"{path}: no such file")
    doc = _read_document(path)
    keys = doc.get("keys")
    if keys is None or key_id not in keys:
        raise KeyFileError(f"{path}: no key {key_id!r}")
    del keys[key_id]
    _write_atomically(path, tomlkit.dumps(doc))
