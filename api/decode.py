"""Request bodies: JSON in, attrs classes out, with Ollama's error messages.

cattrs does the structuring, but its default converter quietly turns ``1`` into ``"1"``; clients
that send the wrong type deserve a 400 that names the field instead, worded the way Go's
``encoding/json`` words it (that is what Ollama clients have learned to read).
Unknown fields are ignored, as Ollama ignores them.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import cattrs
from cattrs.errors import ClassValidationError, IterableValidationError
from quart import Request

from trillama.api.errors import APIError

__all__ = ["converter", "read_json", "structure", "read_request"]

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=False)

_GO_TYPES = {str: "string", int: "int", float: "float64", bool: "bool", dict: "map", list: "slice"}


class _TypeMismatch(TypeError):
    def __init__(self, value: Any, expected: type) -> None:
        super().__init__(f"expected {expected.__name__}")
        self.value = value
        self.expected = expected


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


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


async def read_json(request: Request) -> Any:
    body = await request.get_data(cache=True)
    if not body or not body.strip():
        raise APIError(400, "missing request body")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise APIError(400, "invalid character in request body: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"invalid JSON: {exc.msg} at offset {exc.pos}") from None


async def read_request(request: Request, cls: type[T]) -> T:
    """Read and validate a JSON body into ``cls``; any problem is a 400 naming the field."""
    return structure(await read_json(request), cls)
