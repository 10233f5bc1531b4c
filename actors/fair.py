"""A rendezvous hand-off whose waiting senders are served round robin by tenant.

Why: a model actor's queue is its blocked senders (``actors/model.py``). Served first come first
served, one API key that queues a hundred requests makes every other key wait behind all of them.
Here each sender names a *tenant* (an opaque id: the API key's id, or ``None`` for everyone when
no keys are configured), and a free slot goes to the next tenant in turn, then to that tenant's
oldest waiter. A tenant that arrives while another has a hundred waiting is served after at most
one of theirs per tenant ahead of it in the ring. With a single tenant it is exactly FIFO.

The semantics are those of a Trio memory channel of size 0, which this replaces: :meth:`put`
returns once the receiver has taken the item; a sender cancelled while waiting leaves the queue
at once and its item is never handed over; :meth:`close` wakes every waiter with
``trio.ClosedResourceError``. One more thing a channel cannot do: :meth:`reject` takes a waiter
out of the queue and makes its :meth:`put` raise, which is how a full queue makes room for a
tenant with a smaller share (``ModelActor.admit``).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Generic, Hashable, TypeVar

import attrs
import trio

__all__ = ["FairQueue"]

T = TypeVar("T")


@attrs.define(eq=False)
class _Waiter:
    tenant: Hashable
    item: Any
    ticket: Any
    event: trio.Event = attrs.Factory(trio.Event)
    taken: bool = False
    error: BaseException | None = None


class FairQueue(Generic[T]):
    """Blocked senders grouped by tenant; :meth:`get` takes from the tenants in turn."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[_Waiter]] = {}
        #: tenants with waiters, in the order they get their next turn
        self._ring: deque[Hashable] = deque()
        self._arrived = trio.Event()
        self._closed = False

    def __len__(self) -> int:
        """Senders waiting now."""
        return sum(len(waiters) for waiters in self._waiting.values())

    def waiting(self, tenant: Hashable) -> int:
        return len(self._waiting.get(tenant, ()))

    async def put(self, tenant: Hashable, item: T, ticket: Any = None) -> None:
        """Wait until the receiver takes ``item``; ``ticket`` names this wait for :meth:`reject`."""
        if self._closed:
            raise trio.ClosedResourceError("the queue is closed")
        waiter = _Waiter(tenant, item, ticket)
        waiters = self._waiting.get(tenant)
        if waiters is None:
            self._waiting[tenant] = waiters = deque()
            self._ring.append(tenant)
        waiters.append(waiter)
        self._arrived.set()
        try:
            # The event is set only by a hand-off, a rejection or close; Trio delivers a set
            # event rather than a cancellation once it is set, so "taken" and "cancelled" never
            # both happen.
            await waiter.event.wait()
        except BaseException:
            if not waiter.taken:
                self._remove(waiter)
            raise
        if waiter.error is not None:
            raise waiter.error

    async def get(self) -> T:
        """The next item, from the tenant whose turn it is; waits while nobody waits.

        Raises ``trio.EndOfChannel`` once the queue is closed.
        """
        while not self._ring:
            if self._closed:
                raise trio.EndOfChannel
            self._arrived = trio.Event()
            await self._arrived.wait()
        tenant = self._ring.popleft()
        waiters = self._waiting[tenant]
        waiter = waiters.popleft()
        if waiters:
            self._ring.append(tenant)  # back of the ring: everyone else waiting goes first
        else:
            del self._waiting[tenant]
        waiter.taken = True
        waiter.event.set()
        return waiter.item

    def reject(self, tenant: Hashable, ticket: Any, error: BaseException) -> bool:
        """Take the waiter with ``ticket`` out of the queue; its :meth:`put` raises ``error``.

        Returns whether such a waiter was waiting.
        """
        for waiter in self._waiting.get(tenant, ()):
            if waiter.ticket is ticket:
                self._remove(waiter)
                waiter.error = error
                waiter.event.set()
                return True
        return False

    def close(self) -> None:
        """No more hand-offs: every waiting and later :meth:`put` raises ``trio.ClosedResourceError``."""
        self._closed = True
        for waiters in list(self._waiting.values()):
            for waiter in list(waiters):
                waiter.error = trio.ClosedResourceError("the queue is closed")
                waiter.event.set()
        self._waiting.clear()
        self._ring.clear()
        self._arrived.set()

    def _remove(self, waiter: _Waiter) -> None:
        waiters = self._waiting.get(waiter.tenant)
        if waiters is None or waiter not in waiters:
            return
        waiters.remove(waiter)
        if not waiters:
            del self._waiting[waiter.tenant]
            self._ring.remove(waiter.tenant)
