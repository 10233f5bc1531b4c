"""Stored responses for ``previous_response_id``, ``GET`` and ``DELETE /v1/responses/{id}``.

Ollama keeps nothing between Responses calls, so clients that continue a conversation by id get
an error. This store keeps, per response, the reply object (for ``GET``) and the conversation it
ended — prior turns, this turn's input and its output as chat messages — so the next turn renders
the very same prompt text the model already saw, plus its answer, and the runner's slot reuses the
whole cached prefix.

Each entry belongs to the API key that stored it (``owner``, the key's id; ``None`` when the server
has no keys): a lookup with another owner finds nothing, as OpenAI's responses belong to a
project, so one key of a shared server cannot read or continue another's conversations.

It lives in memory and is bounded two ways: every entry expires ``ttl`` seconds after it was
stored, and when the entries' total size passes ``max_bytes`` the oldest go first. Sizes are the
length of an entry's JSON (images travel as data URIs, so they count in full). It is only touched
from the server's Trio thread, so it needs no lock.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

import attrs

from trillama.logs import get_logger

__all__ = ["StoredResponse", "ResponseStore"]

log = get_logger("trillama.api.openai.responses")


@attrs.frozen
class StoredResponse:
    """One stored turn: ``body`` is the response object; ``conversation`` the chat messages up to
    and including its output (the instructions are not part of it: OpenAI does not carry them
    over to a continued response)."""

    id: str
    body: dict[str, Any]
    conversation: tuple[dict[str, Any], ...]
    size: int
    expires_at: float
    #: this turn's input items as sent, each with an ``id`` (``GET …/input_items``)
    input_items: tuple[dict[str, Any], ...] = ()
    #: the id of the API key that stored it (``None`` without keys)
    owner: str | None = None


class ResponseStore:
    """A bounded, expiring map from response id to :class:`StoredResponse`."""

    def __init__(self, max_bytes: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.ttl > 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, ident: str, body: dict[str, Any], conversation: Sequence[dict[str, Any]],
            input_items: Sequence[dict[str, Any]] = (), *, owner: str | None = None) -> bool:
        """Keep a response; ``False`` when storing is off or the entry alone is over the cap."""
        if not self.enabled:
            return False
        size = sum(len(json.dumps(part, ensure_ascii=False)) for part in (body, list(conversation), list(input_items)))
        if size > self.max_bytes:
            log.info("response_not_stored", id=ident, size=size, max_bytes=self.max_bytes)
            return False
        self._expire()
        self._drop(ident)
        self._entries[ident] = StoredResponse(ident, body, tuple(conversation), size, self._clock() + self.ttl,
                                              tuple(input_items), owner)
        self._bytes += size
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            log.info("response_evicted", id=oldest, bytes_used=self._bytes)
        return True

    def get(self, ident: str, *, owner: str | None = None) -> StoredResponse | None:
        """The entry, if it exists and belongs to ``owner``."""
        self._expire()
        entry = self._entries.get(ident)
        return entry if entry is not None and entry.owner == owner else None

    def delete(self, ident: str, *, owner: str | None = None) -> bool:
        """Drop the entry if it belongs to ``owner``; whether it did."""
        if self.get(ident, owner=owner) is None:
            return False
        return self._drop(ident)

    def _drop(self, ident: str) -> bool:
        entry = self._entries.pop(ident, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        return True

    def _expire(self) -> None:
        # Entries are kept in the order they were stored and all live equally long, so the
        # expired ones are always at the front.
        now = self._clock()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires_at > now:
                break
            self._drop(oldest.id)
