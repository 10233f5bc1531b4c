"""The functions a template can call: Go's builtins plus the four Ollama adds.

Each function takes already-evaluated arguments and raises :class:`FuncError` with the text Go
would put after ``error calling NAME:``. ``and`` and ``or`` are listed for the parser's benefit but
evaluated lazily by the executor, as Go (1.18+) does.
"""

from __future__ import annotations

import datetime
import urllib.parse
from collections.abc import Callable
from typing import Any

import attrs

from trillama.actors.prompt.govalues import (
    SLICES,
    GoStruct,
    SliceView,
    GoValueError,
    json_marshal,
    sprint,
    sprintf,
    sprintln,
    truth,
    type_name,
)

__all__ = ["FuncError", "Builtin", "BUILTINS", "FUNCTION_NAMES", "today"]


class FuncError(Exception):
    """A function refused its arguments (the message follows ``error calling NAME: ``)."""


class ArityError(Exception):
    pass


@attrs.frozen
class Builtin:
    name: str
    fn: Callable[..., Any]
    min_args: int
    max_args: int | None  # None = variadic


def today() -> datetime.date:
    """The local date; a seam so tests can pin the clock."""
    return datetime.date.today()


# -- comparisons ---------------------------------------------------------------------------------

_BAD_COMPARISON = "incompatible types for comparison"
_BAD_COMPARISON_TYPE = "invalid type for comparison"


def _kind(v: Any) -> str | None:
    """Go's ``basicKind``; ``None`` for values that are not of a basic kind."""
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return None


def _eq(arg1: Any, *others: Any) -> bool:
    if not others:
        raise FuncError("missing argument for comparison")
    k1 = _kind(arg1)
    for arg in others:
        k2 = _kind(arg)
        if k1 != k2:
            if arg1 is not None and arg is not None:
                raise FuncError(_BAD_COMPARISON)
            result = False
        elif k1 is None:
            if isinstance(arg1, (dict, *SLICES)) or isinstance(arg, (dict, *SLICES)):
                if arg1 is None or arg is None:
                    result = arg1 is None and arg is None
                else:
                    raise FuncError(f"non-comparable type {type_name(arg)}")
            elif arg1 is None or arg is None:
                result = arg1 is None and arg is None
            elif isinstance(arg1, GoStruct) and isinstance(arg, GoStruct):
                if arg1.type != arg.type:
                    raise FuncError(_BAD_COMPARISON)
                result = arg1.values == arg.values
            else:
                result = arg1 == arg
        else:
            result = arg1 == arg
        if result:
            return True
    return False


def _ne(a: Any, b: Any) -> bool:
    return not _eq(a, b)


def _ordered(a: Any, b: Any) -> tuple[Any, Any]:
    ka, kb = _kind(a), _kind(b)
    if ka is None or kb is None:
        raise FuncError(_BAD_COMPARISON_TYPE)
    if ka != kb:
        raise FuncError(_BAD_COMPARISON)
    if ka == "bool":
        raise FuncError(_BAD_COMPARISON_TYPE)
    if ka == "string":
        return a.encode("utf-8"), b.encode("utf-8")
    return a, b


def _lt(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return x < y


def _le(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return x <= y


def _gt(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return x > y


def _ge(a: Any, b: Any) -> bool:
    x, y = _ordered(a, b)
    return x >= y


def _not(a: Any) -> bool:
    return not truth(a)


def _and(*args: Any) -> Any:  # evaluated lazily by the executor; kept for direct calls
    for a in args:
        if not truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    for a in args:
        if truth(a):
            return a
    return args[-1]


# -- containers ----------------------------------------------------------------------------------


def _len(item: Any) -> int:
    if item is None:
        raise FuncError("len of nil pointer")
    if isinstance(item, str):
        return len(item.encode("utf-8"))
    if isinstance(item, (bytes, dict, *SLICES)):
        return len(item)
    raise FuncError(f"len of type {type_name(item)}")


def _index_arg(index: Any, cap: int) -> int:
    if index is None:
        raise FuncError("cannot index slice/array with nil")
    if isinstance(index, bool) or not isinstance(index, int):
        raise FuncError(f"cannot index slice/array with type {type_name(index)}")
    if index < 0 or index > cap:
        raise FuncError(f"index out of range: {index}")
    return index


def _index(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise FuncError("index of untyped nil")
    for index in indexes:
        if item is None:
            raise FuncError("index of nil pointer")
        if isinstance(item, (str, bytes, *SLICES)):
            seq = item.encode("utf-8") if isinstance(item, str) else item
            x = _index_arg(index, len(seq))
            if x >= len(seq):
                raise FuncError("reflect: slice index out of range")
            item = seq[x]
        elif isinstance(item, dict):
            if not isinstance(index, str):
                raise FuncError(f"value has type {type_name(index)}; should be string")
            item = item.get(index)
        else:
            raise FuncError(f"can't index item of type {type_name(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise FuncError("cannot 3-index slice a string")
        seq: Any = item.encode("utf-8")
    elif isinstance(item, (bytes, *SLICES)):
        seq = item
    else:
        raise FuncError(f"can't slice item of type {type_name(item)}")
    idx = [0, len(seq), len(seq)]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(index, len(seq))
    if idx[0] > idx[1]:
        raise FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise FuncError(f"invalid slice index: {idx[1]} > {idx[2]}")
    if isinstance(item, (list, SliceView)):
        return SliceView(item, idx[0], idx[1])  # a view, as in Go: no copy
    part = seq[idx[0] : idx[1]]
    if isinstance(item, str):
        return part.decode("utf-8", "replace")
    return part


# -- printing and escaping -----------------------------------------------------------------------


def _print(*args: Any) -> str:
    return sprint(*args)


def _println(*args: Any) -> str:
    return sprintln(*args)


def _printf(fmt: Any, *args: Any) -> str:
    if not isinstance(fmt, str):
        raise FuncError(f"wrong type for value; expected string; got {type_name(fmt)}")
    return sprintf(fmt, *args)


def _eval_args(args: tuple[Any, ...]) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(*args)


_HTML = {'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\0": "\ufffd"}


def _html(*args: Any) -> str:
    return "".join(_HTML.get(c, c) for c in _eval_args(args))


_JS = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E", "&": "\\u0026", "=": "\\u003D"}


def _js(*args: Any) -> str:
    out = []
    for c in _eval_args(args):
        if c in _JS:
            out.append(_JS[c])
        elif ord(c) < 0x20 or (ord(c) >= 0x80 and not c.isprintable()):
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return "".join(out)


def _urlquery(*args: Any) -> str:
    return urllib.parse.quote_plus(_eval_args(args), safe="")


# -- Ollama's functions --------------------------------------------------------------------------


def _json(value: Any) -> str:
    try:
        return json_marshal(value)
    except GoValueError:
        return ""  # Ollama ignores the marshal error and prints nothing


def _check_strings(name: str, args: tuple[Any, ...]) -> None:
    for a in args:
        if not isinstance(a, str):
            raise FuncError(f"wrong type for value; expected string; got {type_name(a)}")


def _current_date(*args: Any) -> str:
    _check_strings("currentDate", args)
    return today().strftime("%Y-%m-%d")


def _yesterday_date(*args: Any) -> str:
    _check_strings("yesterdayDate", args)
    return (today() - datetime.timedelta(days=1)).strftime("%Y-%m-%d")


def _to_typescript_type(value: Any) -> str:
    if isinstance(value, GoStruct):
        method = value.type.methods.get("ToTypeScriptType")
        if method is not None:
            return method(value)
    return "any"


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in (
        Builtin("and", _and, 1, None),
        Builtin("or", _or, 1, None),
        Builtin("not", _not, 1, 1),
        Builtin("eq", _eq, 1, None),
        Builtin("ne", _ne, 2, 2),
        Builtin("lt", _lt, 2, 2),
        Builtin("le", _le, 2, 2),
        Builtin("gt", _gt, 2, 2),
        Builtin("ge", _ge, 2, 2),
        Builtin("len", _len, 1, 1),
        Builtin("index", _index, 1, None),
        Builtin("slice", _slice, 1, None),
        Builtin("print", _print, 0, None),
        Builtin("printf", _printf, 1, None),
        Builtin("println", _println, 0, None),
        Builtin("html", _html, 0, None),
        Builtin("js", _js, 0, None),
        Builtin("urlquery", _urlquery, 0, None),
        Builtin("json", _json, 1, 1),
        Builtin("currentDate", _current_date, 0, None),
        Builtin("yesterdayDate", _yesterday_date, 0, None),
        Builtin("toTypeScriptType", _to_typescript_type, 1, 1),
    )
}

FUNCTION_NAMES = frozenset(BUILTINS)


def call(builtin: Builtin, args: list[Any]) -> Any:
    """Call with Go's arity check; raises :class:`ArityError` with Go's wording."""
    n = len(args)
    if builtin.max_args is None:
        if n < builtin.min_args:
            raise ArityError(
                f"wrong number of args for {builtin.name}: want at least {builtin.min_args} got {n}"
            )
    elif n != builtin.min_args and not (builtin.min_args <= n <= builtin.max_args):
        raise ArityError(f"wrong number of args for {builtin.name}: want {builtin.min_args} got {n}")
    return builtin.fn(*args)
