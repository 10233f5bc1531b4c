"""Pull and push: the registry side of the store, as one service task of the server.

:class:`Registry` owns the HTTP connection pool and a nursery in which every blob transfer runs.
A request that pulls or pushes does not move bytes itself: it starts (or joins) a transfer task
and turns what that task has done into progress lines every ``tick`` seconds. This is what lets
two pulls that need the same blob share one download, and lets a download go on while any client
still waits for it: a client that disconnects only stops following; the transfer is cancelled
when nobody follows it any more, and its partial file is kept for the next pull to resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import attrs
import httpx
import trio

from trillama.logs import get_logger
from trillama.registry.auth import Keypair
from trillama.registry.client import RegistryClient
from trillama.registry.download import BlobDownload
from trillama.registry.errors import RegistryError
from trillama.registry.transfer import Transfer, TransferPolicy
from trillama.registry.upload import BlobUpload
from trillama.store import CorruptManifest, InvalidDigest, ModelStore
from trillama.store.digests import normalize_digest, short_digest
from trillama.store.manifest import MANIFEST_MEDIA_TYPE, Layer, Manifest
from trillama.store.names import ModelName

__all__ = ["Progress", "Registry"]

log = get_logger("trillama.registry")

#: A manifest lists a handful of layers; anything much larger is not one.
MANIFEST_LIMIT = 4 << 20


@attrs.frozen
class Progress:
    """One progress line of a pull or push (``total``/``completed`` left out while 0)."""

    status: str
    digest: str = ""
    total: int = 0
    completed: int = 0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"status": self.status}
        if self.digest:
            out["digest"] = self.digest
        if self.total:
            out["total"] = self.total
        if self.completed:
            out["completed"] = self.completed
        return out


class Registry:
    """The server's pulls and pushes. Start :meth:`run` in a nursery before using it."""

    def __init__(self, store: ModelStore, keypair: Path, *, noprune: bool = False,
                 policy: TransferPolicy = TransferPolicy(), tick: float = 0.06,
                 timeout: httpx.Timeout = httpx.Timeout(30.0, connect=10.0)) -> None:
        self.store = store
        self.keypair = Keypair(keypair)
        self.noprune = noprune
        self.policy = policy
        self.tick = tick
        self.timeout = timeout
        self._downloads: dict[str, BlobDownload] = {}
        self._http: httpx.AsyncClient | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connection pool and the transfer tasks until cancelled."""
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as http:
            async with trio.open_nursery() as nursery:
                self._http, self._nursery = http, nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._http = self._nursery = None

    def _client(self, name: ModelName, insecure: bool) -> RegistryClient:
        if self._http is None:
            raise RegistryError("the registry service is not running")
        return RegistryClient(self._http, name, self.keypair, insecure=insecure)

    # --- pull ----------------------------------------------------------------------------------

    async def pull(self, name: ModelName, *, insecure: bool = False) -> AsyncIterator[Progress]:
        """Bring ``name`` from its registry into the store, as Ollama's progress lines."""
        yield Progress("pulling manifest")
        client = self._client(name, insecure)
        try:
            data = await client.get_manifest(MANIFEST_LIMIT)
            manifest = _checked_manifest(data)
        except RegistryError as exc:
            raise RegistryError(f"pull model manifest: {exc}") from None
        store = self.store
        existing = await trio.to_thread.run_sync(store.find_existing, name)
        target = existing or name
        previous = await trio.to_thread.run_sync(store.read_manifest_or_none, target)
        for layer in (*manifest.layers, manifest.config):
            status = f"pulling {short_digest(layer.digest)}"
            download = self._downloads.get(layer.digest)
            if download is not None and download.cancel_scope.cancel_called:
                # its last follower just left: let it save its parts, then resume them afresh
                await download.done.wait()
                download = None
            if download is None and await trio.to_thread.run_sync(store.has_blob, layer.digest):
                yield Progress(status, layer.digest, layer.size, layer.size)
                continue
            download = download or self._downloads.get(layer.digest)  # started while we looked?
            if download is None:
                download = BlobDownload(store, client, layer.digest, layer.size, self.policy)
                self._start(download)
            async for line in self._follow(download, status):
                yield line
        yield Progress("verifying sha256 digest")
        yield Progress("writing manifest")
        await trio.to_thread.run_sync(store.write_manifest_bytes, target, data)
        if previous is not None and not self.noprune:
            unused = previous.digests - manifest.digests
            if unused:
                yield Progress("removing unused layers")
                await trio.to_thread.run_sync(store.remove_unreferenced, unused)
        log.info("model_pulled", model=target.display, layers=len(manifest.layers))
        yield Progress("success")

    def _start(self, transfer: Transfer) -> None:
        if self._nursery is None:
            raise RegistryError("the registry service is not running")
        if isinstance(transfer, BlobDownload):
            self._downloads[transfer.digest] = transfer
        self._nursery.start_soon(self._run_transfer, transfer)

    async def _run_transfer(self, transfer: Transfer) -> None:
        try:
            await transfer.run()
        finally:
            if self._downloads.get(transfer.digest) is transfer:
                del self._downloads[transfer.digest]

    async def _follow(self, transfer: Transfer, status: str) -> AsyncIterator[Progress]:
        """Progress of ``transfer`` every tick until it ends; its error, if it failed."""
        transfer.follow()
        try:
            while True:
                finished = transfer.done.is_set()
                yield Progress(status, transfer.digest, transfer.total, transfer.completed)
                if finished:
                    break
                with trio.move_on_after(self.tick):
                    await transfer.done.wait()
        finally:
            transfer.unfollow()
        if transfer.error is not None:
            # Every follower raises its own exception: one object raised in several tasks would
            # collect all their tracebacks.
            raise RegistryError(str(transfer.error) or type(transfer.error).__name__)

    # --- push ----------------------------------------------------------------------------------

    async def push(self, name: ModelName, *, insecure: bool = False) -> AsyncIterator[Progress]:
        """Send ``name`` from the store to its registry, as Ollama's progress lines."""
        yield Progress("retrieving manifest")
        client = self._client(name, insecure)
        store = self.store
        existing = await trio.to_thread.run_sync(store.find_existing, name)
        try:
            if existing is None:
                raise RegistryError(f'model "{name.display}" not found')
            manifest, data = await trio.to_thread.run_sync(store.read_manifest, existing)
        except (RegistryError, CorruptManifest) as exc:
            yield Progress("couldn't retrieve manifest")
            raise RegistryError(str(exc)) from None
        for layer in (*manifest.layers, manifest.config):
            upload = BlobUpload(client, store.blob_path(layer.digest), layer.digest, layer.size,
                                self.policy)
            self._start(upload)
            async for line in self._follow(upload, f"pushing {short_digest(layer.digest)}"):
                yield line
        yield Progress("pushing manifest")
        await client.send("PUT", client.manifest_url, headers={"Content-Type": MANIFEST_MEDIA_TYPE},
                          content=data)
        log.info("model_pushed", model=existing.display, layers=len(manifest.layers))
        yield Progress("success")


def _checked_manifest(data: bytes) -> Manifest:
    """A registry's manifest, refused unless every blob it names is a valid digest."""
    try:
        manifest = Manifest.from_bytes(data)
    except CorruptManifest as exc:
        raise RegistryError(str(exc)) from None
    if manifest.media_type != MANIFEST_MEDIA_TYPE:
        raise RegistryError(f"unsupported manifest type {manifest.media_type!r}")
    for layer in (*manifest.layers, manifest.config):
        _check_layer(layer)
    return manifest


def _check_layer(layer: Layer) -> None:
    try:
        normalize_digest(layer.digest)
    except InvalidDigest:
        raise RegistryError(f"manifest names an invalid digest: {layer.digest!r}") from None
    if layer.size < 0:
        raise RegistryError(f"manifest gives {layer.digest} a negative size")
