"""Sending one blob from the store to a registry (Docker Registry v2 chunked upload).

``HEAD`` first: a blob the registry already has is skipped. Otherwise ``POST …/blobs/uploads/``
opens an upload session, each part goes up as a ``PATCH`` with its ``Content-Range``, and a ``PUT
?digest=…`` seals it. A registry may answer a part with ``307`` (Ollama's registry hands the bytes
to its storage that way, asked with ``X-Redirect-Uploads: 1``): the part is then ``PUT`` to the
redirect. Each response names the URL of the next request. Parts go one after another: an upload
session is a single ordered stream on the registry's side.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import AsyncIterator, Callable

import httpx
import trio

from trillama.logs import get_logger
from trillama.registry.client import RegistryClient
from trillama.registry.errors import NotFound, RegistryError, Unauthorized
from trillama.registry.transfer import Transfer, TransferPolicy

__all__ = ["BlobUpload"]

log = get_logger("trillama.registry.upload")

_READ = 1 << 20


class BlobUpload(Transfer):
    """One blob on its way up to a registry."""

    def __init__(self, client: RegistryClient, path: Path, digest: str, size: int,
                 policy: TransferPolicy) -> None:
        super().__init__(digest, size)
        self.client = client
        self.path = path
        self.policy = policy
        self.sent = 0
        self.skipped = False

    @property
    def completed(self) -> int:
        return max(0, min(self.sent, self.total))

    def _count(self, n: int) -> None:
        self.sent += n

    async def _transfer(self) -> None:
        client, digest, size = self.client, self.digest, self.total
        if await client.blob_exists(digest):
            self.sent, self.skipped = size, True
            return
        response = await client.send("POST", f"{client.repository_url}/blobs/uploads/")
        url = _next_url(response, response.url)
        part_size = self.policy.part_size(size)
        md5s: list[bytes] = []
        for start in range(0, size, part_size):
            url, part_md5 = await self._upload_part(url, start, min(part_size, size - start))
            md5s.append(part_md5)
        etag = f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"
        await client.send("PUT", url.copy_merge_params({"digest": digest, "etag": etag}),
                          headers={"Content-Length": "0"})
        log.info("blob_pushed", digest=digest, size=size, parts=len(md5s))

    async def _upload_part(self, url: httpx.URL, start: int, length: int) -> tuple[httpx.URL, bytes]:
        """One part; returns the next request's URL and the part's MD5 (for the final etag).

        The MD5 is taken from the bytes as they are sent, so a part is read from disk once per
        attempt, not once more just to hash it.
        """
        failures = 0
        while True:
            base = self.sent
            part_md5 = hashlib.md5()

            def body() -> AsyncIterator[bytes]:
                nonlocal part_md5
                self.sent = base  # a body sent again counts and hashes from the part's start again
                part_md5 = hashlib.md5()
                return _file_chunks(self.path, start, length, self._count, part_md5)

            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
                       "Content-Range": f"{start}-{start + length - 1}", "X-Redirect-Uploads": "1"}
            try:
                response = await self.client.send("PATCH", url, headers=headers, content=body)
                next_url = _next_url(response, url)
                if response.status_code == 307:
                    storage = url.join(response.headers["location"])
                    await self.client.send("PUT", storage, headers={"Content-Length": str(length)},
                                           content=body)
                return next_url, part_md5.digest()
            except (NotFound, Unauthorized):
                raise
            except (httpx.TransportError, RegistryError) as exc:
                self.sent = base  # the part starts over
                failures += 1
                if failures >= self.policy.part_tries:
                    raise RegistryError(f"pushing {self.digest[7:19]} part {start}: {exc}") from None
                log.info("part_retry", digest=self.digest, start=start, error=str(exc) or type(exc).__name__)
                await trio.sleep(self.policy.backoff(failures - 1))


def _next_url(response: httpx.Response, current: httpx.URL) -> httpx.URL:
    location = response.headers.get("docker-upload-location") or response.headers.get("location")
    if not location:
        raise RegistryError(f"registry gave no upload location ({response.status_code})")
    return current.join(location)


async def _file_chunks(path: Path, start: int, size: int, sent: Callable[[int], None],
                       md5: "hashlib._Hash") -> AsyncIterator[bytes]:
    """``size`` bytes of ``path`` from ``start``, read in worker threads, counted and hashed."""
    with open(path, "rb") as handle:
        handle.seek(start)
        left = size
        while left > 0:
            chunk = await trio.to_thread.run_sync(handle.read, min(_READ, left))
            if not chunk:
                raise RegistryError(f"{path.name} shrank while it was being pushed")
            left -= len(chunk)
            md5.update(chunk)
            sent(len(chunk))
            yield chunk
