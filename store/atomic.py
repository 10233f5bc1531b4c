"""Crash-safe file writes: temp file in the target directory, fsync, rename, fsync the directory.

A reader (this server after a restart, or Ollama itself sharing the directory) must only ever see
a missing file or a complete one. ``rename`` within one directory gives that on POSIX, and the
fsyncs make sure the complete version is what survives a power cut rather than an empty file.

Temp files carry :data:`TEMP_PREFIX` and the writer's process id, so :func:`is_orphan` can tell a
leftover of a killed process (delete it) from a file another live process is still writing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import psutil

__all__ = ["TEMP_PREFIX", "temp_path", "write_atomic", "fsync_dir", "HashingWriter", "is_temp_name",
           "is_orphan"]

TEMP_PREFIX = ".trillama-tmp-"
FILE_MODE = 0o644
DIR_MODE = 0o755


def is_temp_name(filename: str) -> bool:
    return filename.startswith(TEMP_PREFIX)


def temp_path(directory: Path, hint: str = "") -> Path:
    token = secrets.token_hex(6)
    suffix = f"-{hint}" if hint else ""
    return directory / f"{TEMP_PREFIX}{os.getpid()}-{token}{suffix}"


def _writer_pid(filename: str) -> int | None:
    rest = filename[len(TEMP_PREFIX):]
    pid_text = rest.split("-", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def is_orphan(path: Path) -> bool:
    """Was this temp file left behind by a process that no longer writes it?

    True when its writer is gone, or when the process now holding that pid (this one included)
    started after the file was last written: the pid was reused, so it is not the writer.
    """
    pid = _writer_pid(path.name)
    if pid is None:
        return True
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        started = process.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:
        return False
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return False
    return started > mtime + 1.0


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse; the rename still happened
        pass
    finally:
        os.close(fd)


def ensure_dir(directory: Path) -> None:
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so that readers never see a partial file."""
    ensure_dir(path.parent)
    tmp = temp_path(path.parent)
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class HashingWriter:
    """A temp file that hashes what is written to it and is renamed into place on commit.

    Used for blobs, whose name *is* the hash of their content: the digest is only known (or
    checked) once the last byte is in, so the bytes go to a temp file first.
    """

    def __init__(self, directory: Path) -> None:
        ensure_dir(directory)
        self.directory = directory
        self.path = temp_path(directory)
        self._file = open(self.path, "xb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def finish(self) -> str:
        """Flush to disk and return the digest of everything written."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self.path, FILE_MODE)
        return self.digest

    def commit(self, final: Path) -> bool:
        """Rename into place; ``False`` when ``final`` already existed (the temp is dropped)."""
        try:
            if final.exists():
                return False
            os.replace(self.path, final)
            fsync_dir(self.directory)
            return True
        finally:
            self.closed = True
            self.path.unlink(missing_ok=True)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self.path.unlink(missing_ok=True)
        self.closed = True

    def __enter__(self) -> "HashingWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.closed:
            self.abort()
