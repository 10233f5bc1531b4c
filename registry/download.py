"""Bringing one blob down from a registry into the store: in parallel parts, resumable, verified.

The bytes land in ``blobs/sha256-<hex>-partial`` at their final offsets; the progress of every part
is kept beside it in ``…-partial.json``. A pull that is cancelled, loses its connection or dies
with the server leaves both files, and the next pull of any model that needs the blob asks only
for the missing ranges. When every part is in, the file is hashed; a match is renamed into place
as the blob, a mismatch deletes both files (the bytes cannot be trusted, whichever part was bad).

The state file is written after the bytes it describes, so it can under-report but not claim
bytes that were never written, short of a power cut, which the final hash catches.
"""

from __future__ import annotations

import json
import os

import attrs
import httpx
import trio

from trillama.logs import get_logger
from trillama.registry.client import RegistryClient
from trillama.registry.errors import DigestMismatch, NotFound, RegistryError, Unauthorized
from trillama.registry.transfer import Transfer, TransferPolicy
from trillama.store import ModelStore
from trillama.store.atomic import FILE_MODE, fsync_dir, temp_path
from trillama.store.digests import sha256_file

__all__ = ["BlobDownload", "plan_parts"]

log = get_logger("trillama.registry.download")

@attrs.define
class Part:
    start: int
    stop: int  # exclusive
    done: int = 0

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def finished(self) -> bool:
        return self.done >= self.size


def plan_parts(total: int, part_size: int) -> list[Part]:
    return [Part(start, min(start + part_size, total)) for start in range(0, total, part_size)] or [
        Part(0, 0)]


class BlobDownload(Transfer):
    """One blob on its way down; pulls that need the same digest share one of these."""

    def __init__(self, store: ModelStore, client: RegistryClient, digest: str, size: int,
                 policy: TransferPolicy) -> None:
        super().__init__(digest, size)
        self.store = store
        self.client = client
        self.policy = policy
        self.parts: list[Part] = []
        self.fetched = 0  # bytes that came over the network in this run (resumed bytes excluded)
        final = store.blob_path(digest)
        self.final_path = final
        self.partial_path = final.with_name(final.name + "-partial")
        self.state_path = final.with_name(final.name + "-partial.json")

    @property
    def completed(self) -> int:
        return sum(part.done for part in self.parts)

    async def _transfer(self) -> None:
        if not self._resume():
            self.total = await self.client.blob_size(self.digest)
            self.parts = plan_parts(self.total, self.policy.part_size(self.total))
            with open(self.partial_path, "wb") as handle:
                handle.truncate(self.total)
            self._save_state()
        else:
            log.info("download_resumed", digest=self.digest, completed=self.completed, total=self.total)
        fd = os.open(self.partial_path, os.O_WRONLY)
        try:
            if not all(part.finished for part in self.parts):
                url = await self.client.blob_location(self.digest)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_state_saved)
                    async with trio.open_nursery() as parts:
                        for part in self.parts:
                            if not part.finished:
                                parts.start_soon(self._fetch_part, part, url, fd)
                    nursery.cancel_scope.cancel()
        finally:
            os.close(fd)
            self._save_state()
        got = await trio.to_thread.run_sync(sha256_file, self.partial_path)
        if got != self.digest:
            self._discard()
            raise DigestMismatch(self.digest, got)
        await trio.to_thread.run_sync(self._commit)
        log.info("blob_downloaded", digest=self.digest, size=self.total, fetched=self.fetched)

    # --- parts ---------------------------------------------------------------------------------

    async def _fetch_part(self, part: Part, url: httpx.URL, fd: int) -> None:
        failures = 0
        while True:
            before = part.done
            try:
                await self._fetch_range(part, url, fd)
                return
            except (NotFound, Unauthorized):
                raise
            except (httpx.TransportError, _ShortBody, RegistryError) as exc:
                if part.done == before:
                    failures += 1
                if failures >= self.policy.part_tries:
                    raise RegistryError(f"{self.digest[7:19]} part {part.start}: {exc}") from None
                log.info("part_retry", digest=self.digest, start=part.start, done=part.done,
                         error=str(exc) or type(exc).__name__)
                await trio.sleep(self.policy.backoff(max(0, failures - 1)))

    async def _fetch_range(self, part: Part, url: httpx.URL, fd: int) -> None:
        offset = part.start + part.done
        headers = {"Range": f"bytes={offset}-{part.stop - 1}"}
        response = await self.client.send("GET", url, headers=headers, stream=True)
        try:
            whole = response.status_code == 200 and offset == 0 and part.stop == self.total
            if response.status_code != 206 and not whole:
                raise RegistryError(
                    f"registry answered {response.status_code} to a range request for {self.digest}")
            async for chunk in response.aiter_raw():
                room = part.size - part.done
                if len(chunk) > room:
                    chunk = chunk[:room]
                # A write to the page cache takes microseconds: cheaper inline than a thread hop.
                os.pwrite(fd, chunk, part.start + part.done)
                part.done += len(chunk)
                self.fetched += len(chunk)
                if part.finished:
                    break
        finally:
            await response.aclose()
        if not part.finished:
            raise _ShortBody(f"connection ended after {part.done} of {part.size} bytes")

    # --- state on disk -------------------------------------------------------------------------

    def _resume(self) -> bool:
        """Pick up the parts a previous pull left; ``False`` when there is nothing usable."""
        try:
            state = json.loads(self.state_path.read_text())
            size = self.partial_path.stat().st_size
            parts = [Part(int(a), int(b), int(c)) for a, b, c in state["parts"]]
            total = int(state["total"])
        except (OSError, ValueError, KeyError, TypeError):
            self._discard()
            return False
        if state.get("digest") != self.digest or size != total or not parts or any(
                p.done < 0 or p.done > p.size for p in parts):
            self._discard()
            return False
        self.total, self.parts = total, parts
        return True

    def _save_state(self) -> None:
        """Replace the state file, without the fsync of ``write_atomic``: it is written every
        second while bytes flow, and a state lost to a power cut only costs a re-download."""
        if not self.parts:
            return
        data = json.dumps({"digest": self.digest, "total": self.total,
                           "parts": [[p.start, p.stop, p.done] for p in self.parts]})
        tmp = temp_path(self.state_path.parent)
        tmp.write_text(data)
        os.replace(tmp, self.state_path)

    async def _keep_state_saved(self) -> None:
        while True:
            await trio.sleep(self.policy.state_interval)
            self._save_state()

    def _discard(self) -> None:
        self.partial_path.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)

    def _commit(self) -> None:
        with open(self.partial_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(self.partial_path, FILE_MODE)
        with self.store.lock:
            os.replace(self.partial_path, self.final_path)
            self.state_path.unlink(missing_ok=True)
            fsync_dir(self.final_path.parent)


class _ShortBody(Exception):
    """The server closed a range before its last byte; retried from where it stopped."""
