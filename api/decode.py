"""Request bodies: JSON in, attrs classes out, with Ollama's error messages.

cattrs does the structuring, but its default converter quietly turns ``1`` into ``"1"``; clients
that send the wrong type deserve a 400 that names the field instead, worded the way Go's
``encoding/json`` words it (that is what Ollama clients have learned to read).
Unknown fields are ignored, as Ollama ignores them.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Any, TypeVar

import cattrs
from cattrs.errors import ClassValidationError, IterableValidationError
from quart import Request

from trillama.api.errors import APIError

__all__ = ["converter", "read_json", "structure", "read_request", "TypeVocabulary", "json_type_name"]

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=False)

_GO_TYPES = {str: "string", int: "int", float: "float64", bool: "bool", dict: "map", list: "slice"}


class _TypeMismatch(TypeError):
    def __init__(self, value: Any, expected: type) -> None:
        super().__init__(f"expected {expected.__name__}")
        self.value = value
        self.expected = expected


class TypeVocabulary(enum.IntEnum):
    """Whose names :func:`json_type_name` gives a JSON value's type in: a column of the table."""

    SCHEMA = 1  # JSON Schema's, as Anthropic's errors name types
    GO_UNMARSHAL = 2  # Go's encoding/json in "cannot unmarshal X into ...": Ollama's native errors
    GO_TYPE = 3  # Go's %T of the value decoded into interface{}: Ollama's OpenAI layer


#: JSON's value types, tried in this order (bool before number: a Python bool is an int), each
#: with its name in every vocabulary. A parsed JSON value always matches a row.
_JSON_TYPES: tuple[tuple[type | tuple[type, ...], str, str, str], ...] = (
    # Python type    SCHEMA     GO_UNMARSHAL  GO_TYPE
    (type(None), "null", "null", "<nil>"),
    (bool, "boolean", "bool", "bool"),
    ((int, float), "number", "number", "float64"),
    (str, "string", "string", "string"),
    (list, "array", "array", "[]interface {}"),
    (dict, "object", "object", "map[string]interface {}"),
)


def json_type_name(value: Any, vocabulary: TypeVocabulary = TypeVocabulary.SCHEMA) -> str:
    """The name of ``value``'s JSON type in ``vocabulary``, for an error message about it."""
    row = next((row for row in _JSON_TYPES if isinstance(value, row[0])), _JSON_TYPES[-1])
    return row[vocabulary]


def _json_kind(value: Any) -> str:
    return json_type_name(value, TypeVocabulary.GO_UNMARSHAL)


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _TypeMismatch(value, str)
    return value


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _TypeMismatch(value, int)
    if isinstance(value, float) and not value.is_integer():
        raise _TypeMismatch(value, int)
    return int(value)


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _TypeMismatch(value, float)
    return float(value)


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise _TypeMismatch(value, bool)
    return value


def _any(value: Any, _: type) -> Any:
    return value


converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
converter.register_structure_hook(bool, _strict_bool)
converter.register_structure_hook(Any, _any)


def _first_error(exc: BaseException, path: list[str]) -> tuple[list[str], BaseException]:
    """Walk cattrs' exception group to the first leaf and the field path that leads to it."""
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            step = path
            for note in getattr(sub, "__notes__", []) or []:
                name = getattr(note, "name", None)
                index = getattr(note, "index", None)
                if name is not None:
                    step = path + [str(name)]
                elif index is not None:
                    step = path + [str(index)]
            return _first_error(sub, step)
    return path, exc


def structure(data: Any, cls: type[T]) -> T:
    if not isinstance(data, dict):
        raise APIError(400, f"json: cannot unmarshal {_json_kind(data)} into Go value of type {cls.__name__}")
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        path, leaf = _first_error(exc, [])
        field = ".".join(path) or "?"
        if isinstance(leaf, _TypeMismatch):
            raise APIError(
                400,
                f"json: cannot unmarshal {_json_kind(leaf.value)} into Go struct field "
                f"{cls.__name__}.{field} of type {_GO_TYPES.get(leaf.expected, leaf.expected.__name__)}",
            ) from None
        if isinstance(leaf, APIError):
            raise leaf from None
        raise APIError(400, f"invalid value for field {field}: {leaf}") from None


#: How deep a request body may nest. Go's decoder allows 10,000 levels; Python's parser and every
#: recursive walk after it (schemas, grammars, templates) would hit the interpreter's recursion
#: limit long before that, so the body is refused here, as a 400, instead of failing later as a 500.
MAX_JSON_DEPTH = 128

_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


class _BadNumber(ValueError):
    pass


def _no_constants(name: str) -> Any:
    # Python reads NaN and Infinity; JSON (and Go) do not.
    raise _BadNumber(f"invalid JSON: invalid character {name[0]!r} looking for beginning of value")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _BadNumber(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _replace_surrogates(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def _check_and_clean(value: Any, fix_surrogates: bool) -> Any:
    """Refuse nesting deeper than :data:`MAX_JSON_DEPTH`; optionally turn lone surrogates into U+FFFD.

    Iterative, so the walk itself cannot overflow the stack. A lone ``\\ud800`` escape is what Go
    decodes to U+FFFD; left in a Python string it makes every later ``encode("utf-8")`` raise.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise APIError(400, f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, dict):
            if fix_surrogates:
                for key in [k for k in node if _SURROGATE.search(k)]:
                    node[_replace_surrogates(key)] = node.pop(key)
                for key, item in node.items():
                    if isinstance(item, str):
                        node[key] = _replace_surrogates(item)
            stack.extend((item, depth + 1) for item in node.values() if isinstance(item, (dict, list)))
        elif isinstance(node, list):
            if fix_surrogates:
                for i, item in enumerate(node):
                    if isinstance(item, str):
                        node[i] = _replace_surrogates(item)
            stack.extend((item, depth + 1) for item in node if isinstance(item, (dict, list)))
    return value


def parse_json_body(body: bytes) -> Any:
    """Parse a request body as Go's ``encoding/json`` would accept it; any problem is a 400."""
    if not body or not body.strip():
        raise APIError(400, "missing request body")
    try:
        # Invalid UTF-8 inside strings becomes U+FFFD, as Go's decoder makes it.
        text = body.decode("utf-8", errors="replace")
        value = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"invalid JSON: {exc.msg} at offset {exc.pos}") from None
    except _BadNumber as exc:
        raise APIError(400, str(exc)) from None
    except RecursionError:
        raise APIError(400, f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels") from None
    fix = _ESCAPED_SURROGATE.search(body) is not None
    if isinstance(value, str):
        return _replace_surrogates(value) if fix else value
    return _check_and_clean(value, fix)


async def read_json(request: Request) -> Any:
    return parse_json_body(await request.get_data(cache=True))


async def read_request(request: Request, cls: type[T]) -> T:
    """Read and validate a JSON body into ``cls``; any problem is a 400 naming the field."""
    return structure(await read_json(request), cls)


# ----------------------------------------------------------------------------- nested shapes
#: A shape is a Python type (``str``, ``int``, ``bool``, ``dict`` for any object), a one-element
#: list ``[shape]`` for an array of that shape, or a dict of field name → shape for an object whose
#: known fields are checked (unknown ones pass, as Go ignores them). ``None`` values always pass.
Shape = Any

_GO_SHAPE_NAMES = {str: "string", int: "int", float: "float64", bool: "bool", dict: "map[string]interface {}"}

#: Ollama's ``api.Message``.
MESSAGE_SHAPE: dict[str, Shape] = {
    "role": str,
    "content": str,
    "thinking": str,
    "images": [str],
    "tool_calls": [{"id": str, "function": {"index": int, "name": str, "arguments": dict}}],
    "tool_name": str,
    "tool_call_id": str,
}

#: Ollama's ``api.Tool``: the parts a template reads.
TOOL_SHAPE: dict[str, Shape] = {
    "type": str,
    "function": {"name": str, "description": str, "parameters": dict},
}


def _go_name(shape: Shape) -> str:
    if isinstance(shape, list):
        return "[]" + _go_name(shape[0])
    if isinstance(shape, dict):
        return "struct"
    return _GO_SHAPE_NAMES.get(shape, getattr(shape, "__name__", "?"))


def _shape_ok(value: Any, shape: Shape) -> bool:
    if shape is int:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if shape is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if shape is dict or isinstance(shape, dict):
        return isinstance(value, dict)
    if isinstance(shape, list):
        return isinstance(value, list)
    return isinstance(value, shape)


def check_shape(value: Any, shape: Shape, path: str) -> None:
    """Raise a 400 naming the field (``ChatRequest.messages.content``) where ``value`` breaks ``shape``.

    The top-level body goes through cattrs; this checks what it leaves as plain JSON (messages,
    tools), so that ``"content": 5`` is refused like a wrong top-level field instead of reaching
    the prompt renderer.
    """
    if value is None:
        return
    if not _shape_ok(value, shape):
        raise APIError(400, f"json: cannot unmarshal {_json_kind(value)} into Go struct field {path} "
                            f"of type {_go_name(shape)}")
    if isinstance(shape, list):
        for item in value:
            check_shape(item, shape[0], path)
    elif isinstance(shape, dict):
        for key, sub in shape.items():
            if key in value:
                check_shape(value[key], sub, f"{path}.{key}")
