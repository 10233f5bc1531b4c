"""Go-style durations, as Ollama accepts them for ``keep_alive`` and ``OLLAMA_KEEP_ALIVE``.

Ollama is written in Go and its clients send what Go's ``time.ParseDuration`` reads (``"5m"``,
``"1h30m"``, ``"300ms"``, ``"-1m"``) or a bare number of seconds. Keeping the exact grammar means a
value that works against Ollama works here, and a value Ollama rejects is rejected with the same text.
"""

from __future__ import annotations

import math
import re

__all__ = ["FOREVER", "MAX_DURATION_S", "DurationError", "parse_go_duration", "parse_keep_alive",
           "format_go_duration"]

#: Seconds that stand for "never expire". A float infinity keeps comparisons honest.
FOREVER = math.inf

#: The longest duration Go can hold (``math.MaxInt64`` nanoseconds, about 292 years). Go's parser
#: refuses anything longer with "invalid duration"; accepting it here would let a request put a
#: model's expiry beyond what any clock or date can show.
MAX_DURATION_S = (2**63 - 1) / 1e9

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class DurationError(ValueError):
    """A duration string Go would not parse; the message is Go's own."""


def parse_go_duration(text: str) -> float:
    """Parse ``text`` like Go's ``time.ParseDuration`` and return seconds (may be negative)."""
    original = text
    sign = 1.0
    if not text:
        raise DurationError(f'time: invalid duration "{original}"')
    if text[0] in "+-":
        if text[0] == "-":
            sign = -1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise DurationError(f'time: invalid duration "{original}"')
    total = 0.0
    pos = 0
    while pos < len(text):
        match = _PART.match(text, pos)
        if match is None:
            # Go distinguishes a number with no unit from garbage.
            if re.fullmatch(r"[\d.]+", text[pos:]):
                raise DurationError(f'time: missing unit in duration "{original}"')
            unit = re.match(r"[\d.]*([^\d.]*)", text[pos:])
            if unit and unit.group(1) and re.match(r"[\d.]", text[pos:]):
                raise DurationError(f'time: unknown unit "{unit.group(1)}" in duration "{original}"')
            raise DurationError(f'time: invalid duration "{original}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
        if total > MAX_DURATION_S:  # Go's overflow check answers with the same text
            raise DurationError(f'time: invalid duration "{original}"')
    return sign * total


def parse_keep_alive(value: object) -> float | None:
    """Turn a JSON ``keep_alive`` value into seconds, ``FOREVER``, or ``None`` (unset).

    Numbers are seconds; strings are Go durations; anything negative means keep forever.
    Raises ``DurationError`` with Ollama's message for values Ollama rejects.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise DurationError("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if math.isnan(seconds) or seconds > MAX_DURATION_S:
            # Go would overflow silently into some other duration; an explicit 400 is kinder.
            raise DurationError(f"invalid keep_alive: {value:g} seconds is longer than the longest "
                                "duration (2562047h47m16.854775807s)")
    elif isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            raise DurationError(f'time: invalid duration "{value}"')
        seconds = parse_go_duration(stripped)
    else:
        raise DurationError(f"Unsupported type: '{type(value).__name__}'")
    return FOREVER if seconds < 0 else seconds


def format_go_duration(seconds: float) -> str:
    """Format seconds as Go's ``Duration.String`` would (``5m0s``, ``1h0m0s``, ``1.5s``, ``300ms``)."""
    if seconds == FOREVER:
        return "-1"
    if seconds == 0:
        return "0s"
    negative = seconds < 0
    seconds = abs(seconds)
    if seconds < 1:
        for unit, scale in (("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
            if seconds >= scale:
                text = f"{seconds / scale:.9f}".rstrip("0").rstrip(".") + unit
                break
        else:
            text = "0s"
    else:
        hours, rest = divmod(seconds, 3600)
        minutes, secs = divmod(rest, 60)
        sec_text = f"{secs:.9f}".rstrip("0").rstrip(".") + "s"
        if hours:
            text = f"{int(hours)}h{int(minutes)}m{sec_text}"
        elif minutes:
            text = f"{int(minutes)}m{sec_text}"
        else:
            text = sec_text
    return ("-" if negative else "") + text
