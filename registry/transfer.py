"""What downloads and uploads have in common: a task others follow, and the numbers it runs by."""

from __future__ import annotations

import attrs
import trio

from trillama.registry.errors import RegistryError

__all__ = ["Transfer", "TransferPolicy"]

MB = 1000 * 1000


@attrs.frozen
class TransferPolicy:
    """How transfers split into parts and retry. Ollama's numbers by default; tests shrink them."""

    max_parts: int = 16
    min_part_size: int = 100 * MB
    max_part_size: int = 1000 * MB
    #: tries per part; a try that moved bytes before failing does not count (a stall, not a fault)
    part_tries: int = 6
    #: seconds before retry n (n from 0): backoff_base * 2**n
    backoff_base: float = 1.0
    #: seconds between two writes of a download's part state
    state_interval: float = 1.0

    def part_size(self, total: int) -> int:
        return max(self.min_part_size, min(self.max_part_size, total // self.max_parts or 1))

    def backoff(self, attempt: int) -> float:
        return self.backoff_base * (2 ** attempt)


class Transfer:
    """One blob moving, run as a task of the registry service and followed by requests.

    The task outlives any one request that follows it (two pulls needing one blob share one
    download), so the requests only read ``completed``/``total`` and wait on ``done``. When the
    last follower leaves, :meth:`unfollow` cancels the task: nobody is waiting for the bytes.
    """

    def __init__(self, digest: str, total: int) -> None:
        self.digest = digest
        self.total = total
        self.done = trio.Event()
        self.error: Exception | None = None
        self.cancel_scope = trio.CancelScope()
        self.followers = 0

    @property
    def completed(self) -> int:
        raise NotImplementedError

    async def _transfer(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Move the blob; never raises an error (followers read ``error``), only cancellation."""
        try:
            with self.cancel_scope:
                await self._transfer()
            if self.cancel_scope.cancelled_caught:
                self.error = RegistryError("transfer cancelled: every request waiting for it has gone")
        except Exception as exc:  # noqa: BLE001 - handed to every follower
            self.error = exc
        finally:
            self.done.set()

    def follow(self) -> None:
        self.followers += 1

    def unfollow(self) -> None:
        self.followers -= 1
        if self.followers <= 0 and not self.done.is_set():
            self.cancel_scope.cancel()
