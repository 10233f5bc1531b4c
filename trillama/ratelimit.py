"""Per-key limits and the brake on repeated failed authentication; no HTTP here.

* :class:`TokenBucket` — a rate over a minute: ``capacity`` units, refilled continuously at
  ``capacity`` per minute. A bucket may be charged below zero (a generation's tokens are known
  only after it ran); it admits again once it is back above zero, and says when that will be,
  which becomes ``Retry-After``.
* :class:`KeyLimiter` — each key's concurrency, requests per minute and tokens per minute.
  :meth:`KeyLimiter.admit` answers a :class:`Grant` (released when the response has ended, with
  the tokens it used) or a :class:`Refusal` with the reason and seconds to wait.
* :class:`FailureBrake` — failed authentications per client address, as a bucket: a burst of
  ``per_minute`` wrong keys, then one per ``60/per_minute`` seconds. A braked address is
  refused before its key is even looked at, so guessing runs at that pace at most.

All state is in memory, per server process, and bounded: keys by the key file, addresses by
:attr:`FailureBrake.max_addresses` (least recently failed forgotten first).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Callable

import attrs

from trillama.keys import ApiKey, KeyLimits

__all__ = ["TokenBucket", "KeyLimiter", "Grant", "Refusal", "FailureBrake", "KeyUsage"]

Clock = Callable[[], float]


class TokenBucket:
    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = float(per_minute)
        self._clock = clock
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._at) * self.rate)
        self._at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (0 if it can now)."""
        self._refill()
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, amount: float) -> None:
        """Take ``amount``, going below zero if need be."""
        self._refill()
        self.level -= amount

    def resize(self, per_minute: int) -> None:
        """A new limit from a reloaded key file; what was used stays used."""
        self._refill()
        used = self.capacity - self.level
        self.capacity, self.rate = float(per_minute), per_minute / 60.0
        self.level = self.capacity - used


@attrs.frozen
class Refusal:
    """A request over a limit: ``reason`` for metrics, ``message`` for the client."""

    reason: str  # concurrency | requests_per_minute | tokens_per_minute | auth_failures
    message: str
    retry_after: int  # whole seconds, at least 1


@attrs.define
class KeyUsage:
    """One key's live counters."""

    limits: KeyLimits
    in_flight: int = 0
    requests: TokenBucket | None = None
    tokens: TokenBucket | None = None


@attrs.define(eq=False)
class Grant:
    """A request admitted under a key; :meth:`finish` once its response has ended."""

    limiter: "KeyLimiter"
    key_id: str
    done: bool = False

    def finish(self, tokens: int = 0) -> None:
        if self.done:
            return
        self.done = True
        self.limiter._finish(self.key_id, tokens)


def _seconds(wait: float) -> int:
    return max(1, math.ceil(wait))


class KeyLimiter:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._usage: dict[str, KeyUsage] = {}

    def usage(self, key_id: str) -> KeyUsage | None:
        return self._usage.get(key_id)

    def _usage_for(self, key: ApiKey) -> KeyUsage:
        usage = self._usage.get(key.id)
        if usage is None:
            usage = self._usage[key.id] = KeyUsage(key.limits)
        if usage.limits != key.limits:
            usage.limits = key.limits
        limits = usage.limits
        usage.requests = _bucket(usage.requests, limits.requests_per_minute, self._clock)
        usage.tokens = _bucket(usage.tokens, limits.tokens_per_minute, self._clock)
        return usage

    def admit(self, key: ApiKey) -> Grant | Refusal:
        """Admit one request under ``key``, or say which limit refuses it and for how long."""
        usage = self._usage_for(key)
        limits = usage.limits
        if limits.max_concurrent and usage.in_flight >= limits.max_concurrent:
            return Refusal("concurrency", f"too many concurrent requests for API key {key.id!r} "
                           f"(its limit is {limits.max_concurrent})", 1)
        if usage.tokens is not None:
            wait = usage.tokens.wait_for(0)  # admitted while any token is left
            if wait > 0:
                return Refusal("tokens_per_minute", f"API key {key.id!r} used its {limits.tokens_per_minute} "
                               f"tokens per minute; retry in {_seconds(wait)} s", _seconds(wait))
        if usage.requests is not None:
            wait = usage.requests.wait_for(1)
            if wait > 0:
                return Refusal("requests_per_minute", f"API key {key.id!r} made its "
                               f"{limits.requests_per_minute} requests per minute; retry in {_seconds(wait)} s",
                               _seconds(wait))
            usage.requests.take(1)
        usage.in_flight += 1
        return Grant(self, key.id)

    def _finish(self, key_id: str, tokens: int) -> None:
        usage = self._usage.get(key_id)
        if usage is None:
            return
        usage.in_flight -= 1
        if tokens and usage.tokens is not None:
            usage.tokens.take(tokens)

    def forget_except(self, key_ids: set[str]) -> None:
        """Drop the counters of keys no longer configured (none of whose requests are in flight)."""
        for key_id in [k for k, u in self._usage.items() if k not in key_ids and u.in_flight == 0]:
            del self._usage[key_id]


def _bucket(bucket: TokenBucket | None, per_minute: int, clock: Clock) -> TokenBucket | None:
    if not per_minute:
        return None
    if bucket is None:
        return TokenBucket(per_minute, clock)
    if bucket.capacity != per_minute:
        bucket.resize(per_minute)
    return bucket


class FailureBrake:
    """Failed authentications per client address: a burst, then a steady trickle at most."""

    max_addresses = 10_000

    def __init__(self, per_minute: int, clock: Clock = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def refusal(self, address: str | None) -> Refusal | None:
        """A :class:`Refusal` while ``address`` must wait before presenting another key."""
        if not self.per_minute or address is None:
            return None
        bucket = self._buckets.get(address)
        if bucket is None:
            return None
        wait = bucket.wait_for(1)
        if wait <= 0:
            return None
        return Refusal("auth_failures", "too many failed authentication attempts from this address; "
                       f"retry in {_seconds(wait)} s", _seconds(wait))

    def failed(self, address: str | None) -> None:
        if not self.per_minute or address is None:
            return
        bucket = self._buckets.pop(address, None) or TokenBucket(self.per_minute, self._clock)
        bucket.take(1)
        self._buckets[address] = bucket  # most recently failed last
        while len(self._buckets) > self.max_addresses:
            self._buckets.popitem(last=False)
