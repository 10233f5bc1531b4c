"""Text the way Go writes it: JSON, ``%v``, ``%#v``, ``%q``, floats and RFC 3339 timestamps.

Ollama is a Go program, and several things clients or files depend on are Go's formatting rather
than anything in a spec: the bytes of the small JSON blobs (their digests are their names, so the
same parameters should give the same blob under both servers), the ``parameters`` text of
``/api/show`` (``%-30s %#v``), the values in a printed Modelfile (``%v``), the timestamps — and
the prompt text Go templates produce. The store uses the value formatting here directly; the
template engine (``actors/prompt/govalues.py``) builds Go's richer value model on the same
primitives (float digits, JSON strings, quoting), so both agree to the byte.
"""

from __future__ import annotations

import math
import struct
from datetime import datetime
from decimal import Decimal
from typing import Any

__all__ = ["go_json", "go_json_string", "go_json_float", "go_quote", "go_v", "go_sharp_v", "go_float32",
           "go_g", "shortest_digits", "format_go_time"]

_JSON_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def go_float32(value: float) -> float:
    """Round ``value`` to float32 and back to the shortest decimal that names that float32.

    Ollama keeps Modelfile float parameters as ``float32``; storing ``0.7`` rather than
    ``0.699999988079071`` is what makes the JSON and printed values match Go's.
    """
    single = struct.unpack("f", struct.pack("f", value))[0]
    if not math.isfinite(single):
        return single
    for digits in range(1, 10):
        text = f"{single:.{digits}g}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == single:
            return float(text)
    return single  # pragma: no cover - nine significant digits always suffice


def shortest_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of ``abs(value)`` and the decimal point position (Go's dp):
    ``(digits, dp)`` means ``0.<digits> × 10**dp``, as Go's strconv describes it."""
    sign, digits, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    return text, len(digits) + int(exponent)


def go_g(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'g', -1, 64)``, which ``%v`` and ``%#v`` use for floats."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    digits, dp = shortest_digits(value)
    sign = "-" if value < 0 else ""
    exp = dp - 1
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        esign = "-" if exp < 0 else "+"
        return f"{sign}{mantissa}e{esign}{abs(exp):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return f"{sign}{digits}{'0' * (dp - len(digits))}"
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def go_json_float(value: float) -> str:
    """encoding/json's float format: plain decimals, exponent only for tiny or huge values."""
    if not math.isfinite(value):
        raise ValueError(f"json: unsupported value: {value}")
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude < 1e-6 or magnitude >= 1e21:
        digits, dp = shortest_digits(value)
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        exp = dp - 1
        return f"{'-' if value < 0 else ''}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp)}"
    digits, dp = shortest_digits(value)
    sign = "-" if value < 0 else ""
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return f"{sign}{digits}{'0' * (dp - len(digits))}"
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def _encode(value: Any, sort_keys: bool, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(go_json_float(value))
    elif isinstance(value, str):
        out.append(go_json_string(value))
    elif isinstance(value, dict):
        out.append("{")
        items = sorted(value.items()) if sort_keys else value.items()
        for index, (key, item) in enumerate(items):
            if index:
                out.append(",")
            _encode(str(key), sort_keys, out)
            out.append(":")
            _encode(item, sort_keys, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, sort_keys, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def go_json_string(text: str) -> str:
    """A JSON string as ``encoding/json`` writes it: HTML characters escaped, lone surrogates
    (invalid UTF-8 in Go) replaced by U+FFFD."""
    out = ['"']
    for ch in text:
        escaped = _JSON_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_json(value: Any, *, sort_keys: bool = False, newline: bool = True) -> bytes:
    """Encode like Go's ``json.NewEncoder(w).Encode``: compact, HTML-escaped, newline-terminated.

    Go sorts the keys of maps but keeps struct fields in declaration order; pass
    ``sort_keys=True`` for values that are maps in Ollama (parameters), and build dicts in field
    order for values that are structs there (manifests, config, messages).
    """
    out: list[str] = []
    _encode(value, sort_keys, out)
    if newline:
        out.append("\n")
    return "".join(out).encode("utf-8")


_QUOTE_ESCAPES = {"\\": "\\\\", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                  "\v": "\\v"}


def go_quote(text: str, quote: str = '"') -> str:
    """Go's ``%q`` / ``strconv.Quote`` (``quote="'"``: ``QuoteRune``-style): backslash escapes,
    printable Unicode kept."""
    out = [quote]
    for ch in text:
        code = ord(ch)
        if ch == quote:
            out.append("\\" + ch)
        elif ch in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[ch])
        elif ch.isprintable() or ch == " ":
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append(quote)
    return "".join(out)


def go_v(value: Any) -> str:
    """Go's ``%v`` for the JSON-decoded values a parameters map holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_g(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_v(v) for v in value) + "]"
    if value is None:
        return "<nil>"
    return str(value)


def go_sharp_v(value: Any) -> str:
    """Go's ``%#v`` for JSON-decoded values: strings quoted, numbers as ``%v``."""
    if isinstance(value, str):
        return go_quote(value)
    if value is None:
        return "<nil>"
    return go_v(value)


def format_go_time(moment: datetime) -> str:
    """RFC 3339 with up to nine fraction digits and trailing zeros dropped, as Go marshals time.

    Naive datetimes are taken as local time, like Go's ``time.Now()`` and file mtimes.
    """
    if moment.tzinfo is None:
        moment = moment.astimezone()
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    if fraction:
        base += "." + fraction
    offset = moment.utcoffset()
    total = int(offset.total_seconds()) if offset is not None else 0
    if total == 0:  # Go's "Z07:00" layout writes Z for any zero offset
        return base + "Z"
    sign = "+" if total > 0 else "-"
    total = abs(total)
    return f"{base}{sign}{total // 3600:02d}:{(total % 3600) // 60:02d}"
