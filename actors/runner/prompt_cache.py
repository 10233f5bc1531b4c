"""The prompt cache: saved sequence states, keyed by their tokens, that any slot can restore.

Why: a slot keeps only its own last sequence, so when another session takes the slot, the
20k-token system-and-tools prefix of a coding agent is gone and its next turn pays the whole
prefill again. Before the engine overwrites a slot's tokens it saves the sequence's state
(``llama_state_seq_get_data``) here; a later job whose prompt starts with those tokens restores
it into whatever slot it gets (``llama_state_seq_set_data``) and evaluates only the rest.

* **RAM tier** — bounded in bytes (``TRILLAMA_PROMPT_CACHE``; the scheduler may lower the bound of
  a running runner under memory pressure, see :meth:`PromptCache.set_limit`), least recently used
  out. An entry whose tokens are a prefix of a newer entry's is dropped: the newer one serves
  every prompt the old one could.
* **Disk tier** (optional, ``TRILLAMA_PROMPT_CACHE_DISK``) — every saved entry is also written, on a
  thread of its own, to a file under ``OLLAMA_MODELS/cache/prompts/<namespace>/``, so it survives
  an unload, a reload and a restart. The namespace is a digest of what the state depends on (the
  weights, the adapters, the KV type, flash attention, llama.cpp's state version): a file is only
  ever restored into a context that can read it. Each file carries the SHA-256 of its contents; a
  file that does not check out (torn by a crash mid-write, truncated, edited) is deleted, never
  loaded. Files are written under a temporary name and renamed, so a reader never sees half a file
  under a real name in the first place.

Lookups compare the prompt with each entry's tokens (slice compares in C); the number of entries
is small (a state is megabytes), so a scan is cheaper than keeping a trie in step with evictions.
Everything here is plain Python over bytes, so it is tested without a model.
"""

from __future__ import annotations

import collections
import hashlib
import os
import queue
import struct
import threading
from array import array
from pathlib import Path
from typing import Iterable

import attrs

from trillama.actors.runner.slots import common_prefix
from trillama.logs import get_logger

__all__ = ["Entry", "PromptCache", "DiskTier", "ParkedStreams", "namespace", "MIN_ENTRY_TOKENS", "default_limit"]

log = get_logger("trillama.runner.prompt_cache")

#: Sequences shorter than this are not worth a saved state: they prefill in a step or two.
MIN_ENTRY_TOKENS = 128

_MAGIC = b"TRLPC01\n"
_HEADER = struct.Struct("<8sIQ32s")  # magic, token count, state bytes, sha256(tokens ‖ state)


def default_limit(total_ram: int) -> int:
    """The RAM tier's default bound: an eighth of the machine's memory, at most 8 GiB.

    llama-server keeps 8 GiB by default whatever the machine; on a 24 GiB machine that is a third
    of it, beside the models. An eighth leaves the models their room and still holds several
    agent-sized prefixes of a small model (a 20k-token state of SmolLM2 is ~450 MiB).
    """
    return max(0, min(8 * 2**30, total_ram // 8))


def namespace(*parts: object) -> str:
    """A short digest of what a saved state depends on; states only restore within one."""
    h = hashlib.sha256()
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _token_bytes(tokens: Iterable[int]) -> bytes:
    return array("i", tokens).tobytes()


def tokens_key(tokens: list[int]) -> str:
    """The entry's name: the SHA-256 of its tokens."""
    return hashlib.sha256(_token_bytes(tokens)).hexdigest()


@attrs.define(eq=False)
class Entry:
    """One saved sequence: its tokens (position by position) and llama.cpp's state of it."""

    key: str
    tokens: list[int]
    state: bytes | None  # None for a disk entry not read yet
    tier: str = "ram"

    @property
    def nbytes(self) -> int:
        return (len(self.state) if self.state is not None else 0) + 4 * len(self.tokens)


class PromptCache:
    """The RAM tier, LRU within ``limit`` bytes, with an optional disk tier behind it.

    Used by the decode thread only (the disk tier's writer thread gets immutable bytes).
    """

    def __init__(self, limit: int, disk: "DiskTier | None" = None) -> None:
        self.limit = max(0, int(limit))
        self.disk = disk
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()  # LRU first
        self.bytes = 0
        self.hits = {"ram": 0, "disk": 0}
        self.saved = 0
        self.evicted = 0

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens: list[int]) -> bool:
        return tokens_key(tokens) in self._entries

    def entries(self) -> list[Entry]:
        """RAM entries, least recently used first."""
        return list(self._entries.values())

    def covers(self, tokens: list[int]) -> bool:
        """Does an entry (RAM or disk) already hold ``tokens`` or a continuation of them?"""
        n = len(tokens)
        for entry in self._entries.values():
            if len(entry.tokens) >= n and entry.tokens[:n] == tokens:
                return True
        return self.disk is not None and self.disk.covers(tokens)

    def best(self, prompt: list[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``prompt`` and that length (RAM first at equal
        length: it needs no read). A disk entry comes back with ``state`` None: :meth:`load` it."""
        best, best_k = None, 0
        for entry in self._entries.values():
            k = common_prefix(entry.tokens, prompt)
            if k > best_k:
                best, best_k = entry, k
        if self.disk is not None:
            entry, k = self.disk.best(prompt)
            if entry is not None and k > best_k:
                best, best_k = entry, k
        return best, best_k

    def load(self, entry: Entry) -> Entry | None:
        """A usable entry (its state read and verified), recorded as a hit; None if it is gone."""
        if entry.tier == "disk":
            assert self.disk is not None
            loaded = self.disk.read(entry.key)
            if loaded is None:
                return None
            self.hits["disk"] += 1
            self._insert(loaded, write=False)  # a disk hit is likely to be asked again soon
            return loaded
        if entry.key in self._entries:
            self._entries.move_to_end(entry.key)
            self.hits["ram"] += 1
            return entry
        return None

    # ------------------------------------------------------------------ changes
    def put(self, tokens: list[int], state: bytes) -> bool:
        """Keep ``state`` as the state of ``tokens``; False when it cannot fit or is too short."""
        if len(tokens) < MIN_ENTRY_TOKENS:
            return False
        entry = Entry(key=tokens_key(tokens), tokens=list(tokens), state=state)
        if entry.nbytes > self.limit:
            if self.disk is not None:
                self.disk.write(entry)  # still worth keeping where there is room
                self.saved += 1
                return True
            return False
        self._insert(entry, write=True)
        self.saved += 1
        return True

    def _insert(self, entry: Entry, *, write: bool) -> None:
        entry.tier = "ram"
        old = self._entries.pop(entry.key, None)
        if old is not None:
            self.bytes -= old.nbytes
        # An entry whose tokens start the new one's serves nothing the new one does not.
        for key in [k for k, e in self._entries.items()
                    if len(e.tokens) <= len(entry.tokens) and entry.tokens[: len(e.tokens)] == e.tokens]:
            self.bytes -= self._entries.pop(key).nbytes
        if entry.nbytes > self.limit:
            return
        self._entries[entry.key] = entry
        self.bytes += entry.nbytes
        self._shrink(self.limit)
        if write and self.disk is not None:
            self.disk.write(entry)

    def set_limit(self, limit: int) -> int:
        """A new bound (the scheduler lowers it under memory pressure); returns the bytes kept."""
        self.limit = max(0, int(limit))
        self._shrink(self.limit)
        return self.bytes

    def _shrink(self, limit: int) -> None:
        while self.bytes > limit and self._entries:
            _, entry = self._entries.popitem(last=False)
            self.bytes -= entry.nbytes
            self.evicted += 1

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def stats(self) -> dict:
        out = {"entries": len(self._entries), "bytes": self.bytes, "limit": self.limit,
               "hits_ram": self.hits["ram"], "hits_disk": self.hits["disk"], "saved": self.saved,
               "evicted": self.evicted}
        if self.disk is not None:
            out.update(self.disk.stats())
        return out


class DiskTier:
    """Saved states as checksummed files in one directory (one namespace), bounded in bytes.

    The index (name → tokens) is read at start from the files' headers and token arrays, not their
    states; a file whose sizes do not add up is removed then, one whose checksum fails is removed
    when it is read. Writes happen on a thread of its own, oldest files out beyond ``limit``.
    """

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = Path(directory)
        self.limit = max(0, int(limit))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the index, shared by the decode thread and the writer
        self._index: dict[str, tuple[list[int], int]] = {}  # key -> (tokens, file bytes)
        self.torn = 0
        self.written = 0
        self._queue: queue.Queue[Entry | None] = queue.Queue(maxsize=4)
        self._scan()
        self._writer = threading.Thread(target=self._write_loop, name="prompt-cache-writer", daemon=True)
        self._writer.start()

    # ------------------------------------------------------------------ index
    def _scan(self) -> None:
        for path in sorted(self.directory.glob("*.tmp")):
            path.unlink(missing_ok=True)  # a write that never finished
        for path in self.directory.glob("*.bin"):
            tokens = self._read_tokens(path)
            if tokens is None:
                self._discard(path, "bad_header")
                continue
            self._index[path.stem] = (tokens, path.stat().st_size)

    def _read_tokens(self, path: Path) -> list[int] | None:
        try:
            with open(path, "rb") as fh:
                head = fh.read(_HEADER.size)
                if len(head) != _HEADER.size:
                    return None
                magic, n_tokens, n_state, _ = _HEADER.unpack(head)
                if magic != _MAGIC or path.stat().st_size != _HEADER.size + 4 * n_tokens + n_state:
                    return None
                raw = fh.read(4 * n_tokens)
        except OSError:
            return None
        tokens = array("i")
        tokens.frombytes(raw)
        return tokens.tolist()

    def _discard(self, path: Path, reason: str) -> None:
        self.torn += 1
        log.warning("prompt_cache_file_discarded", file=path.name, reason=reason)
        try:
            path.unlink()
        except OSError:
            pass
        with self._lock:
            self._index.pop(path.stem, None)

    def covers(self, tokens: list[int]) -> bool:
        n = len(tokens)
        with self._lock:
            return any(len(t) >= n and t[:n] == tokens for t, _ in self._index.values())

    def best(self, prompt: list[int]) -> tuple[Entry | None, int]:
        best, best_k = None, 0
        with self._lock:
            items = list(self._index.items())
        for key, (tokens, _) in items:
            k = common_prefix(tokens, prompt)
            if k > best_k:
                best, best_k = Entry(key=key, tokens=tokens, state=None, tier="disk"), k
        return best, best_k

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._index.values())

    def stats(self) -> dict:
        with self._lock:
            return {"disk_entries": len(self._index), "disk_bytes": sum(s for _, s in self._index.values()),
                    "disk_limit": self.limit, "disk_torn": self.torn}

    # ------------------------------------------------------------------ reading
    def read(self, key: str) -> Entry | None:
        """The entry, if its file checks out; a file that does not is deleted, never loaded."""
        path = self.directory / f"{key}.bin"
        try:
            data = path.read_bytes()
        except OSError:
            with self._lock:
                self._index.pop(key, None)
            return None
        if len(data) < _HEADER.size:
            self._discard(path, "short")
            return None
        magic, n_tokens, n_state, digest = _HEADER.unpack_from(data)
        body = memoryview(data)[_HEADER.size:]
        if magic != _MAGIC or len(body) != 4 * n_tokens + n_state or hashlib.sha256(body).digest() != digest:
            self._discard(path, "checksum")
            return None
        tokens = array("i")
        tokens.frombytes(body[: 4 * n_tokens])
        if tokens_key(tokens) != key:
            self._discard(path, "name")
            return None
        try:
            os.utime(path)  # recently used: the last to go
        except OSError:
            pass
        return Entry(key=key, tokens=tokens.tolist(), state=bytes(body[4 * n_tokens:]), tier="disk")

    # ------------------------------------------------------------------ writing
    def write(self, entry: Entry) -> None:
        """Queue ``entry`` for writing; dropped (not waited for) when the writer is behind."""
        if entry.state is None or entry.nbytes > self.limit:
            return
        with self._lock:
            if entry.key in self._index:
                return
        try:
            self._queue.put_nowait(entry)
        except queue.Full:
            log.info("prompt_cache_write_skipped", reason="writer busy", tokens=len(entry.tokens))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until queued writes are on disk (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(_Flush(done), timeout=timeout)  # type: ignore[arg-type]
        done.wait(timeout)

    def _write_loop(self) -> None:
        while True:
            entry = self._queue.get()
            if isinstance(entry, _Flush):
                entry.done.set()
                continue
            try:
                self._write_file(entry)
            except Exception:
                log.exception("prompt_cache_write_failed", tokens=len(entry.tokens))

    def _write_file(self, entry: Entry) -> None:
        token_bytes = _token_bytes(entry.tokens)
        digest = hashlib.sha256(token_bytes + entry.state).digest()
        header = _HEADER.pack(_MAGIC, len(entry.tokens), len(entry.state), digest)
        size = len(header) + len(token_bytes) + len(entry.state)
        self._make_room(size)
        final = self.directory / f"{entry.key}.bin"
        tmp = self.directory / f"{entry.key}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(header)
            fh.write(token_bytes)
            fh.write(entry.state)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        with self._lock:
            self._index[entry.key] = (list(entry.tokens), size)
        self.written += 1

    def _make_room(self, size: int) -> None:
        """Remove the least recently used files until ``size`` more bytes fit."""
        with self._lock:
            total = sum(s for _, s in self._index.values())
            if total + size <= self.limit:
                return
            keys = list(self._index)
        by_age = []
        for key in keys:
            try:
                by_age.append(((self.directory / f"{key}.bin").stat().st_mtime_ns, key))
            except OSError:
                by_age.append((0, key))
        for _, key in sorted(by_age):
            if total + size <= self.limit:
                break
            with self._lock:
                _, old = self._index.pop(key, (None, 0))
            (self.directory / f"{key}.bin").unlink(missing_ok=True)
            total -= old


@attrs.frozen
class _Flush:
    done: threading.Event


class ParkedStreams:
    """Sequences parked in spare KV streams of the context, for models whose states do not restore.

    A model with sliding-window layers cannot use saved states (see the engine), but a copy inside
    the KV cache is exact for it. So its context gets a few streams beyond its slots; before a
    slot's tokens are overwritten they are copied into one of them (``llama_memory_seq_cp``), and a
    later job copies them back into whatever slot it gets. Each stream holds one sequence; the
    least recently used goes when a new one needs the stream. The bound is the number of streams,
    chosen by the scheduler from ``TRILLAMA_PROMPT_CACHE`` and the size of one stream.
    """

    def __init__(self, seqs: Iterable[int]) -> None:
        self._tokens: dict[int, list[int]] = {seq: [] for seq in seqs}
        self._used: dict[int, int] = {seq: 0 for seq in self._tokens}
        self._clock = 0
        self.hits = 0
        self.parked = 0

    def __len__(self) -> int:
        return len(self._tokens)

    def tokens(self, seq: int) -> list[int]:
        return self._tokens[seq]

    def covers(self, tokens: list[int]) -> bool:
        n = len(tokens)
        return any(len(t) >= n and t[:n] == tokens for t in self._tokens.values())

    def best(self, prompt: list[int]) -> tuple[int | None, int]:
        """The stream sharing the longest prefix with ``prompt``, and that length."""
        best, best_k = None, 0
        for seq, tokens in self._tokens.items():
            k = common_prefix(tokens, prompt)
            if k > best_k:
                best, best_k = seq, k
        return best, best_k

    def stream_for(self, tokens: list[int], busy: set[int]) -> int | None:
        """The stream a new sequence goes into: one whose tokens it extends (replaced, it serves
        nothing more), else an empty one, else the least recently used; None if all are ``busy``."""
        free = [seq for seq in self._tokens if seq not in busy]
        if not free:
            return None
        for seq in free:
            old = self._tokens[seq]
            if old and len(old) <= len(tokens) and tokens[: len(old)] == old:
                return seq
        return min(free, key=lambda seq: (bool(self._tokens[seq]), self._used[seq]))

    def record(self, seq: int, tokens: list[int]) -> None:
        self._tokens[seq] = list(tokens)
        self.touch(seq)
        self.parked += 1

    def touch(self, seq: int) -> None:
        self._clock += 1
        self._used[seq] = self._clock

    def hit(self, seq: int) -> None:
        self.hits += 1
        self.touch(seq)

    def clear(self) -> None:
        for seq in self._tokens:
            self._tokens[seq] = []

    def stats(self) -> dict:
        return {"park_streams": len(self._tokens), "park_entries": sum(1 for t in self._tokens.values() if t),
                "park_tokens": sum(len(t) for t in self._tokens.values()), "hits_park": self.hits,
                "parked": self.parked}
