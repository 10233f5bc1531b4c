"""The model store: Ollama's on-disk layout under ``$OLLAMA_MODELS``.

::

    manifests/<host>/<namespace>/<model>/<tag>   one JSON manifest per model name
    blobs/sha256-<hex>                           content-addressed layers and config blobs

Every write is a temp file in the target directory, fsynced and renamed into place, so neither
this server after a crash nor an Ollama sharing the directory ever reads half a file. Temp files
carry :data:`~trillama.store.atomic.TEMP_PREFIX`; :meth:`ModelStore.recover` removes those a killed
process left behind. Methods here block (they hash and copy gigabytes); async callers run them in
a worker thread. A re-entrant lock serialises the steps that decide which blobs are referenced
(manifest writes, deletes, pruning) so that they never race each other.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

from trillama.logs import get_logger
from trillama.store.atomic import (
    HashingWriter,
    ensure_dir,
    fsync_dir,
    is_orphan,
    is_temp_name,
    write_atomic,
)
from trillama.store.create import CreateRequest, plan_create, run_create
from trillama.store.digests import blob_filename, digest_from_filename, normalize_digest, sha256_bytes
from trillama.store.errors import CorruptManifest, DigestMismatch, ModelNotFound
from trillama.store.manifest import Manifest
from trillama.store.names import ModelName
from trillama.store.records import ModelEntry, ModelRecord, build_record, entry_from_record
from trillama.store.templates import NullTemplateInspector, TemplateInspector

__all__ = ["ModelStore"]

log = get_logger("trillama.store")

_COPY_CHUNK = 4 << 20


class ModelStore:
    def __init__(self, root: Path | str, templates: TemplateInspector | None = None) -> None:
        """Open (creating if needed) the store under ``root``.

        ``templates`` checks Go templates on create and reads their capabilities; the store
        cannot parse them itself, so without one every template is accepted and adds no
        capability (see :class:`~trillama.store.templates.NullTemplateInspector`).
        """
        self.root = Path(root).expanduser()
        self.templates: TemplateInspector = templates if templates is not None else NullTemplateInspector()
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"
        ensure_dir(self.blobs_dir)
        ensure_dir(self.manifests_dir)
        self.lock = threading.RLock()

    # --- blobs ------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob for ``digest`` lives (whether or not it exists)."""
        return self.blobs_dir / blob_filename(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def open_blob_writer(self) -> HashingWriter:
        """A temp file in ``blobs/`` that hashes as it is written; finish with :meth:`commit_blob`."""
        return HashingWriter(self.blobs_dir)

    def commit_blob(self, writer: HashingWriter, expected: str | None = None) -> tuple[str, bool]:
        """Seal a writer: check its digest against ``expected`` and rename it into place.

        Returns ``(digest, created)``. On a mismatch the temp file is removed and
        :class:`DigestMismatch` raised, so a corrupt upload leaves nothing behind.
        """
        try:
            digest = writer.finish()
            if expected is not None and digest != normalize_digest(expected):
                raise DigestMismatch(normalize_digest(expected), digest)
            with self.lock:
                created = writer.commit(self.blob_path(digest))
        except BaseException:
            writer.abort()
            raise
        if not created:
            os.utime(self.blob_path(digest))
        log.info("blob_written" if created else "blob_exists", digest=digest, size=writer.size)
        return digest, created

    def write_blob(self, digest: str, chunks: Iterable[bytes]) -> bool:
        """Store the bytes of ``chunks`` as blob ``digest``; ``True`` if it was new.

        Hashes while writing; a mismatch raises :class:`DigestMismatch` and leaves nothing.
        """
        expected = normalize_digest(digest)
        writer = self.open_blob_writer()
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return self.commit_blob(writer, expected)[1]

    def write_blob_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store a small blob by its content; returns ``(digest, created)``."""
        digest = sha256_bytes(data)
        path = self.blob_path(digest)
        with self.lock:
            if path.is_file():
                os.utime(path)
                return digest, False
            write_atomic(path, data)
        return digest, True

    def import_file(self, source: Path) -> tuple[str, bool]:
        """Copy a file from elsewhere on this machine into the store, hashing as it goes."""
        writer = self.open_blob_writer()
        try:
            with source.open("rb") as handle:
                while chunk := handle.read(_COPY_CHUNK):
                    writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return self.commit_blob(writer)

    # --- names and manifests ----------------------------------------------------------------

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir / name.manifest_relpath

    def canonical_name(self, name: ModelName) -> ModelName:
        """Respell ``name`` the way the store already spells it, part by part, ignoring case.

        Two spellings of one name must not become two directories: on a case-insensitive file
        system they would collide, and clients expect ``Llama3`` to find ``llama3``.
        """
        directory = self.manifests_dir
        parts = list(name.parts)
        for index, part in enumerate(parts):
            if not directory.is_dir():
                break
            if not (directory / part).exists():
                lowered = part.lower()
                for entry in sorted(os.listdir(directory)):
                    if entry.lower() == lowered and not is_temp_name(entry):
                        parts[index] = entry
                        break
            directory = directory / parts[index]
        return ModelName(host=parts[0], namespace=parts[1], model=parts[2], tag=parts[3])

    def find_existing(self, name: ModelName) -> ModelName | None:
        """The stored spelling of ``name`` if a model by that name exists, else ``None``."""
        canonical = self.canonical_name(name)
        return canonical if self.manifest_path(canonical).is_file() else None

    def read_manifest(self, name: ModelName) -> tuple[Manifest, bytes]:
        path = self.manifest_path(name)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ModelNotFound(name.display) from None
        return Manifest.from_bytes(data), data

    def read_manifest_or_none(self, name: ModelName) -> Manifest | None:
        existing = self.find_existing(name)
        if existing is None:
            return None
        try:
            return self.read_manifest(existing)[0]
        except (ModelNotFound, CorruptManifest):
            return None

    def write_manifest(self, name: ModelName, manifest: Manifest) -> None:
        write_atomic(self.manifest_path(name), manifest.to_bytes())

    def write_manifest_bytes(self, name: ModelName, data: bytes) -> None:
        """Store a manifest exactly as a registry sent it (its digest is that of these bytes).

        Refused (:class:`CorruptManifest`) unless it parses and every blob it lists is here.
        """
        manifest = Manifest.from_bytes(data)
        with self.lock:
            missing = sorted(d for d in manifest.digests if not self.has_blob(d))
            if missing:
                raise CorruptManifest(f"manifest lists missing blobs: {', '.join(missing)}")
            write_atomic(self.manifest_path(name), data)

    def iter_manifest_names(self) -> Iterator[ModelName]:
        """Every valid name with a manifest file, found the way Ollama finds them (4 levels)."""
        if not self.manifests_dir.is_dir():
            return
        for path in sorted(self.manifests_dir.glob("*/*/*/*")):
            if not path.is_file() or is_temp_name(path.name):
                continue
            name = ModelName.from_relpath(path.relative_to(self.manifests_dir).as_posix())
            if name is None:
                log.warning("bad_manifest_name", path=str(path))
                continue
            yield name

    def _manifests(self) -> tuple[dict[ModelName, Manifest], int]:
        found: dict[ModelName, Manifest] = {}
        corrupt = 0
        for name in self.iter_manifest_names():
            try:
                found[name] = self.read_manifest(name)[0]
            except CorruptManifest as exc:
                corrupt += 1
                log.warning("bad_manifest", model=name.full, error=str(exc))
            except ModelNotFound:
                continue
        return found, corrupt

    def referenced_digests(self) -> set[str]:
        digests: set[str] = set()
        for manifest in self._manifests()[0].values():
            digests |= manifest.digests
        return digests

    # --- reading models ---------------------------------------------------------------------

    def resolve(self, name: str | ModelName) -> ModelRecord:
        """Everything about the model called ``name`` (any letter case).

        Raises :class:`~trillama.store.names.InvalidName` for text that is not a model name and
        :class:`ModelNotFound` (message ``model 'NAME' not found``, NAME as given) when absent.
        """
        parsed = ModelName.parse(name) if isinstance(name, str) else name
        shown = name if isinstance(name, str) else name.display
        existing = self.find_existing(parsed)
        if existing is None:
            raise ModelNotFound(shown)
        try:
            manifest, data = self.read_manifest(existing)
        except ModelNotFound:
            raise ModelNotFound(shown) from None
        return build_record(existing, manifest, self.manifest_path(existing), self.blob_path,
                            digest=hashlib.sha256(data).hexdigest(), templates=self.templates)

    def list_models(self) -> list[ModelEntry]:
        """All models, most recently modified first (``/api/tags`` order)."""
        entries: list[ModelEntry] = []
        for name in self.iter_manifest_names():
            try:
                entries.append(entry_from_record(self.resolve(name)))
            except Exception as exc:  # one broken model must not hide the others
                log.warning("model_unreadable", model=name.full, error=str(exc))
        entries.sort(key=lambda e: e.modified_at.timestamp(), reverse=True)
        return entries

    # --- changing models --------------------------------------------------------------------

    def create(self, name: str | ModelName, request: CreateRequest, *, prune: bool = True
               ) -> Iterator[dict]:
        """Create (or replace) a model, yielding Ollama's progress objects.

        Every check happens before the first object is produced: a request that fails, fails
        before anything on disk changes.
        """
        parsed = ModelName.parse(name) if isinstance(name, str) else name
        target = self.canonical_name(parsed)
        plan = plan_create(self, target, request)
        yield from run_create(self, plan, prune=prune)

    def copy(self, source: str | ModelName, destination: str | ModelName) -> ModelName:
        """Give a model a second name: the manifest bytes are copied, the blobs are shared."""
        src = ModelName.parse(source) if isinstance(source, str) else source
        dst = ModelName.parse(destination) if isinstance(destination, str) else destination
        shown = source if isinstance(source, str) else src.display
        with self.lock:
            existing = self.find_existing(src)
            if existing is None:
                raise ModelNotFound(shown, f'model "{shown}" not found')
            dst = self.canonical_name(dst)
            if existing.parts == dst.parts:
                return dst
            data = self.manifest_path(existing).read_bytes()
            write_atomic(self.manifest_path(dst), data)
        log.info("model_copied", source=existing.display, destination=dst.display)
        return dst

    def delete(self, name: str | ModelName) -> ModelName:
        """Remove a model's manifest, then the blobs no other manifest needs."""
        parsed = ModelName.parse(name) if isinstance(name, str) else name
        shown = name if isinstance(name, str) else parsed.display
        with self.lock:
            existing = self.find_existing(parsed)
            if existing is None:
                raise ModelNotFound(shown)
            path = self.manifest_path(existing)
            try:
                manifest = self.read_manifest(existing)[0]
                candidates = manifest.digests
            except CorruptManifest:
                candidates = set()
            path.unlink()
            fsync_dir(path.parent)
            self._prune_empty_dirs()
            removed = self.remove_unreferenced(candidates)
        log.info("model_deleted", model=existing.display, blobs_removed=removed)
        return existing

    def remove_unreferenced(self, candidates: Iterable[str]) -> int:
        """Delete those of ``candidates`` that no manifest lists any more."""
        with self.lock:
            in_use = self.referenced_digests()
            removed = 0
            for digest in set(candidates) - in_use:
                try:
                    self.blob_path(digest).unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
                except ValueError:
                    continue
            if removed:
                fsync_dir(self.blobs_dir)
            return removed

    # --- housekeeping -----------------------------------------------------------------------

    def recover(self) -> int:
        """Remove what a killed process left: orphan temp files anywhere in the store.

        Also renames blobs an old Ollama stored as ``sha256:<hex>`` to today's ``sha256-<hex>``.
        Returns the number of temp files removed.
        """
        removed = 0
        with self.lock:
            for directory, _, files in os.walk(self.root):
                for filename in files:
                    path = Path(directory) / filename
                    if is_temp_name(filename) and is_orphan(path):
                        path.unlink(missing_ok=True)
                        removed += 1
                        log.info("orphan_removed", path=str(path))
            for path in self.blobs_dir.iterdir():
                if path.name.startswith("sha256:") and digest_from_filename(
                        path.name.replace(":", "-", 1)):
                    target = self.blobs_dir / path.name.replace(":", "-", 1)
                    if not target.exists():
                        os.replace(path, target)
            self._prune_empty_dirs()
        return removed

    def prune(self, min_age_s: float = 3600) -> int:
        """Delete blobs no manifest references (and stray non-blob files), if old enough.

        The age limit protects blobs that a client uploaded moments ago and is about to
        reference in a create. Skipped entirely when a manifest cannot be read: its blobs would
        look unreferenced. Returns the number of files removed.
        """
        with self.lock:
            manifests, corrupt = self._manifests()
            if corrupt:
                log.warning("prune_skipped", reason="corrupt manifest", corrupt=corrupt)
                return 0
            in_use: set[str] = set()
            for manifest in manifests.values():
                in_use |= manifest.digests
            now = time.time()
            removed = 0
            for path in list(self.blobs_dir.iterdir()):
                if not path.is_file() or is_temp_name(path.name):
                    continue
                try:
                    age = now - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < min_age_s:
                    continue
                digest = digest_from_filename(path.name)
                if digest is None or digest not in in_use:
                    path.unlink(missing_ok=True)
                    removed += 1
            self._prune_empty_dirs()
        log.info("prune_done", blobs_removed=removed, blobs_in_use=len(in_use))
        return removed

    def _prune_empty_dirs(self) -> None:
        """Remove empty directories below ``manifests/`` (left by deletes), deepest first."""
        for directory, subdirs, files in os.walk(self.manifests_dir, topdown=False):
            path = Path(directory)
            if path == self.manifests_dir:
                continue
            try:
                if not any(path.iterdir()):
                    path.rmdir()
            except OSError:
                pass
