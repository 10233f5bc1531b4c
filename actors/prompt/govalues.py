"""How Go sees the Python values a template works on: truth, printing, JSON, printf.

Ollama executes Modelfile templates with Go's text/template, so what a prompt looks like depends on
Go's rules for turning values into text: ``fmt.Fprint`` for ``{{ x }}`` (maps print as
``map[k:v]``, floats as ``1e+06``, a missing map key as ``<no value>``), ``encoding/json`` for the
``json`` function (sorted map keys, ``<`` escaped as ``\\u003c``), and Go's idea of "empty" for
``if``. Python values stand in for Go values like this:

* ``str``, ``bool``, ``int``, ``float`` are Go's string, bool, int, float64;
* ``None`` is a nil interface (a JSON ``null``, a missing map key);
* ``list``/``tuple`` is a slice, ``dict`` a ``map[string]any`` (sorted when ranged or printed);
* :class:`OrderedMap` is a map type that keeps insertion order (Ollama's ordered property maps);
* :class:`GoStruct` is a struct with named fields, optional JSON tags, an optional ``String()``
  method and optional methods callable from templates;
* :class:`StringerList` is a slice with its own ``String()`` and JSON form (Ollama's
  ``PropertyType``, which prints ``string`` for ``["string"]``).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from trillama.gofmt import go_g, go_json_float, go_json_string, go_quote

__all__ = [
    "GoStruct",
    "OrderedMap",
    "JSONStringMap",
    "JSONStringList",
    "NilSlice",
    "StringerList",
    "SliceView",
    "SLICES",
    "StructType",
    "FieldSpec",
    "GoValueError",
    "truth",
    "sprint",
    "sprint_value",
    "sprintln",
    "sprintf",
    "json_marshal",
    "go_quote",
    "type_name",
    "format_float_v",
    "format_float_json",
]


class GoValueError(Exception):
    """A value operation Go would refuse (the executor turns it into a template error)."""


@attrs.frozen
class FieldSpec:
    """One struct field: Go name, JSON key (``None`` = the Go name), and ``omitempty``."""

    name: str
    json_name: str | None = None
    omitempty: bool = False


@attrs.frozen
class StructType:
    """The shape of a Go struct type, shared by all its values."""

    name: str
    fields: tuple[FieldSpec, ...]
    # fmt.Stringer: when set, printing the value (at any depth) calls this.
    stringer: Callable[[GoStruct], str] | None = None
    # Methods templates may call as ``.Name arg...``; each receives the struct first.
    methods: Mapping[str, Callable[..., Any]] = attrs.field(factory=dict)

    def index(self, field: str) -> int:
        for i, spec in enumerate(self.fields):
            if spec.name == field:
                return i
        return -1


class GoStruct:
    """A struct value: a :class:`StructType` and one value per field, in declaration order."""

    __slots__ = ("type", "values")

    def __init__(self, type_: StructType, **values: Any) -> None:
        unknown = set(values) - {f.name for f in type_.fields}
        if unknown:
            raise TypeError(f"{type_.name} has no fields {sorted(unknown)}")
        self.type = type_
        self.values = tuple(values.get(f.name) for f in type_.fields)

    def field(self, name: str) -> tuple[bool, Any]:
        i = self.type.index(name)
        if i < 0:
            return False, None
        return True, self.values[i]

    def __repr__(self) -> str:
        inner = ", ".join(f"{f.name}={v!r}" for f, v in zip(self.type.fields, self.values))
        return f"{self.type.name}({inner})"


class OrderedMap(dict):
    """A ``map`` whose keys keep insertion order when ranged over or marshalled to JSON.

    Ollama keeps tool-parameter properties in an ordered map below the top level; a plain ``dict``
    stands for an ordinary Go map, whose keys Go sorts.
    """


class JSONStringMap(dict):
    """A map type whose ``String()`` prints its JSON (Ollama's tool-call arguments and properties).

    ``{{ .Function.Arguments }}`` therefore renders ``{"city":"Paris"}``, not ``map[city:Paris]``.
    """


class JSONStringList(list):
    """A slice type whose ``String()`` prints its JSON (Ollama's ``.Tools``)."""


class NilSlice(list):
    """A nil slice: prints ``[]`` and is false like an empty one, but marshals to ``null``."""


class SliceView(Sequence):
    """The result of ``slice`` on a list: a view of part of it, as a Go slice shares its array.

    Copying instead made the common ``{{ $last := eq (len (slice $.Messages $i)) 1 }}`` cost a
    copy of the rest of the conversation per message: quadratic in its length (issue 24).
    """

    __slots__ = ("_base", "_start", "_stop")

    def __init__(self, base: Sequence, start: int, stop: int) -> None:
        if isinstance(base, SliceView):
            base, start, stop = base._base, base._start + start, base._start + stop
        self._base, self._start, self._stop = base, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        return self._base[self._start + (index % len(self))]

    def __iter__(self):
        base = self._base
        for i in range(self._start, self._stop):
            yield base[i]


#: Python types that are Go slices.
SLICES = (list, tuple, SliceView)


class StringerList(list):
    """A string slice with Ollama's ``PropertyType`` behaviour.

    ``String()`` gives the single element for a one-element list and Go's ``[a b]`` otherwise; JSON
    is a bare string for one element and an array otherwise.
    """


# --------------------------------------------------------------------------------------------
# Truth


def truth(value: Any) -> bool:
    """Go's ``if`` truth: false, 0, nil, and empty strings, slices and maps are false."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, (str, bytes, dict, *SLICES)):
        return len(value) > 0
    return True  # structs are always true


# --------------------------------------------------------------------------------------------
# Type names (for error text such as %!d(string=x))


def type_name(value: Any) -> str:
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes):
        return "[]uint8"
    if isinstance(value, StringerList):
        return "api.PropertyType"
    if isinstance(value, SLICES):
        return "[]interface {}"
    if isinstance(value, dict):
        return "map[string]interface {}"
    if isinstance(value, GoStruct):
        return value.type.name
    return type(value).__name__


# --------------------------------------------------------------------------------------------
# Floats


def _special(f: float) -> str | None:
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    return None


#: ``fmt.Sprint`` of a float64: shortest digits, exponent form below 1e-4 or from 1e+06 on.
format_float_v = go_g


def format_float_json(f: float) -> str:
    """``encoding/json`` form of a float64 (plain digits unless tiny or from 1e21 on)."""
    try:
        return go_json_float(f)
    except ValueError:
        raise GoValueError(f"json: unsupported value: {_special(f)}") from None


# --------------------------------------------------------------------------------------------
# fmt.Sprint


def _map_items(m: dict) -> list[tuple[Any, Any]]:
    if isinstance(m, OrderedMap):
        return list(m.items())
    try:
        return sorted(m.items(), key=lambda kv: kv[0])
    except TypeError:
        return sorted(m.items(), key=lambda kv: str(kv[0]))


def sprint_value(value: Any, depth: int = 0) -> str:
    """``%v`` of one value, the way ``fmt`` prints it (Stringers honoured at every depth)."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float_v(value)
    if isinstance(value, str):
        return value
    if isinstance(value, StringerList):
        return stringer_list_text(value)
    if isinstance(value, (JSONStringMap, JSONStringList)):
        try:
            return json_marshal(value)
        except GoValueError:
            return ""  # Ollama's String() drops the marshal error
    if isinstance(value, bytes):
        return "[" + " ".join(str(b) for b in value) + "]"
    if isinstance(value, SLICES):
        return "[" + " ".join(sprint_value(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        inner = " ".join(
            f"{sprint_value(k, depth + 1)}:{sprint_value(v, depth + 1)}" for k, v in _map_items(value)
        )
        return "map[" + inner + "]"
    if isinstance(value, GoStruct):
        if value.type.stringer is not None:
            return value.type.stringer(value)
        return "{" + " ".join(sprint_value(v, depth + 1) for v in value.values) + "}"
    return str(value)


def stringer_list_text(value: Sequence[str]) -> str:
    if len(value) == 0:
        return ""
    if len(value) == 1:
        return str(value[0])
    return "[" + " ".join(str(v) for v in value) + "]"


def sprint(*args: Any) -> str:
    """``fmt.Sprint``: spaces go between operands only when neither side is a string."""
    out: list[str] = []
    prev_string = True
    for i, arg in enumerate(args):
        is_string = isinstance(arg, str)
        if i > 0 and not is_string and not prev_string:
            out.append(" ")
        out.append(sprint_value(arg))
        prev_string = is_string
    return "".join(out)


def sprintln(*args: Any) -> str:
    """``fmt.Sprintln``: always a space between operands, and a final newline."""
    return " ".join(sprint_value(a) for a in args) + "\n"


# --------------------------------------------------------------------------------------------
# encoding/json


def _is_empty(value: Any) -> bool:
    """What ``omitempty`` leaves out."""
    if value is None:
        return True
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, (str, bytes, dict, *SLICES)):
        return len(value) == 0
    return False


def _json(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(format_float_json(value))
    elif isinstance(value, str):
        out.append(go_json_string(value))
    elif isinstance(value, bytes):
        out.append(go_json_string(base64.b64encode(value).decode("ascii")))
    elif isinstance(value, NilSlice):
        out.append("null")
    elif isinstance(value, StringerList):
        if len(value) == 1:
            _json(value[0], out)
        else:
            _json(list(value), out)
    elif isinstance(value, SLICES):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _json(v, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for i, (k, v) in enumerate(_map_items(value)):
            if i:
                out.append(",")
            out.append(go_json_string(k if isinstance(k, str) else sprint_value(k)))
            out.append(":")
            _json(v, out)
        out.append("}")
    elif isinstance(value, GoStruct):
        out.append("{")
        first = True
        for spec, v in zip(value.type.fields, value.values):
            if spec.json_name == "-" or (spec.omitempty and _is_empty(v)):
                continue
            if not first:
                out.append(",")
            first = False
            out.append(go_json_string(spec.json_name or spec.name))
            out.append(":")
            _json(v, out)
        out.append("}")
    else:
        raise GoValueError(f"json: unsupported type: {type_name(value)}")


def json_marshal(value: Any) -> str:
    """``json.Marshal`` as Go does it: compact, sorted map keys, HTML characters escaped."""
    out: list[str] = []
    _json(value, out)
    return "".join(out)


# --------------------------------------------------------------------------------------------
# fmt.Sprintf


def _bad_verb(verb: str, value: Any) -> str:
    if value is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({type_name(value)}={sprint_value(value)})"


def _pad(text: str, width: int | None, minus: bool, zero: bool, numeric: bool) -> str:
    if width is None or len(text) >= width:
        return text
    if minus:
        return text.ljust(width)
    if zero and numeric:
        sign = ""
        if text[:1] in "+-":
            sign, text = text[0], text[1:]
        return sign + text.rjust(width - len(sign), "0")
    return text.rjust(width)


def _format_one(verb: str, value: Any, flags: str, width: int | None, prec: int | None) -> str:
    plus = "+" in flags
    space = " " in flags
    sharp = "#" in flags
    minus = "-" in flags
    zero = "0" in flags and not minus
    numeric = False

    def signed(text: str, negative: bool) -> str:
        if negative:
            return "-" + text
        if plus:
            return "+" + text
        if space:
            return " " + text
        return text

    if verb == "v":
        if isinstance(value, float):
            text, numeric = format_float_v(value), True
            if plus and not text.startswith("-"):
                text = "+" + text
        elif isinstance(value, int) and not isinstance(value, bool):
            text, numeric = signed(str(abs(value)), value < 0), True
        else:
            text = sprint_value(value)
    elif verb == "s":
        if isinstance(value, (str, StringerList)) or (isinstance(value, GoStruct) and value.type.stringer):
            text = sprint_value(value)
        elif isinstance(value, bytes):
            text = value.decode("utf-8", "replace")
        elif isinstance(value, (dict, GoStruct, *SLICES)) or value is None:
            text = sprint_value(value) if value is not None else _bad_verb("s", value)
        else:
            return _bad_verb("s", value)
        if prec is not None:
            text = text[:prec]
    elif verb == "q":
        if isinstance(value, str):
            text = go_quote(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            text = go_quote(chr(value), "'")
        else:
            return _bad_verb("q", value)
    elif verb == "d":
        if isinstance(value, int) and not isinstance(value, bool):
            text, numeric = signed(str(abs(value)), value < 0), True
        else:
            return _bad_verb("d", value)
    elif verb in "boxXc" and isinstance(value, int) and not isinstance(value, bool):
        if verb == "c":
            text = chr(value)
        else:
            base = {"b": "b", "o": "o", "x": "x", "X": "X"}[verb]
            text = format(abs(value), base)
            if sharp:
                text = {"b": "0b", "o": "0", "x": "0x", "X": "0X"}[verb] + text
            text, numeric = signed(text, value < 0), True
    elif verb in "xX" and isinstance(value, (str, bytes)):
        raw = value.encode("utf-8") if isinstance(value, str) else value
        text = raw.hex()
        if verb == "X":
            text = text.upper()
    elif verb == "t":
        if isinstance(value, bool):
            text = "true" if value else "false"
        else:
            return _bad_verb("t", value)
    elif verb in "eEfFgG":
        if isinstance(value, float):
            special = _special(value)
            if special is not None:
                text = special
            elif verb in "gG" and prec is None:
                text = format_float_v(value)
                if verb == "G":
                    text = text.upper()
            else:
                p = 6 if prec is None else prec
                text = ("%." + str(p) + verb) % value
            if plus and not text.startswith("-"):
                text = "+" + text
            elif space and not text.startswith("-"):
                text = " " + text
            numeric = True
        else:
            return _bad_verb(verb, value)
    elif verb == "T":
        text = type_name(value)
    else:
        return _bad_verb(verb, value)
    return _pad(text, width, minus, zero, numeric)


def sprintf(fmt: str, *args: Any) -> str:
    """``fmt.Sprintf`` for the verbs templates use (%v %s %q %d %t %f %e %g %x %c %b %o %T)."""
    out: list[str] = []
    argi = 0
    i = 0
    n = len(fmt)
    while i < n:
        ch = fmt[i]
        if ch != "%":
            j = fmt.find("%", i)
            if j < 0:
                j = n
            out.append(fmt[i:j])
            i = j
            continue
        i += 1
        if i >= n:
            out.append("%!(NOVERB)")
            break
        flags = ""
        while i < n and fmt[i] in "+-# 0":
            flags += fmt[i]
            i += 1
        width: int | None = None
        if i < n and fmt[i] == "*":
            i += 1
            if argi < len(args) and isinstance(args[argi], int):
                width = args[argi]
                if width < 0:
                    flags += "-"
                    width = -width
            else:
                out.append("%!(BADWIDTH)")
            argi += 1
        else:
            start = i
            while i < n and fmt[i].isdigit():
                i += 1
            if i > start:
                width = int(fmt[start:i])
        prec: int | None = None
        if i < n and fmt[i] == ".":
            i += 1
            if i < n and fmt[i] == "*":
                i += 1
                if argi < len(args) and isinstance(args[argi], int):
                    prec = args[argi]
                else:
                    out.append("%!(BADPREC)")
                argi += 1
            else:
                start = i
                while i < n and fmt[i].isdigit():
                    i += 1
                prec = int(fmt[start:i]) if i > start else 0
        if i >= n:
            out.append("%!(NOVERB)")
            break
        verb = fmt[i]
        i += 1
        if verb == "%":
            out.append("%")
            continue
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_format_one(verb, args[argi], flags, width, prec))
        argi += 1
    if argi < len(args):
        extra = ", ".join(
            f"{type_name(a)}={sprint_value(a)}" if a is not None else "<nil>" for a in args[argi:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)
