"""The values Ollama hands its Go templates: messages, tool calls and tools as Go structs.

Templates see Ollama's ``templateMessage``/``templateTool`` structs, not the JSON the client sent,
and several observable details follow from that: ``{{ .Function.Arguments }}`` and ``{{ . }}`` on a
tool print JSON (their types have a ``String()``), ``{{ json .ToolCalls }}`` uses Go field names
(``"ID"``, ``"Function"``), tool JSON always has ``"description"`` and ``"properties"``, property
``.Type`` prints ``string`` rather than ``[string]``, top-level property maps are sorted while nested
ones keep their order, and JSON numbers are float64 (``1e+06`` when printed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trillama.actors.prompt.govalues import (
    FieldSpec,
    GoStruct,
    JSONStringList,
    JSONStringMap,
    NilSlice,
    OrderedMap,
    StringerList,
    StructType,
    json_marshal,
)
from trillama.actors.prompt.messages import Message

__all__ = ["go_any", "message_value", "messages_value", "tool_value", "tools_value", "PROPERTY"]


def go_any(value: Any) -> Any:
    """A decoded-JSON value as Go's ``encoding/json`` would give it to an ``any``: numbers are float64."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): go_any(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [go_any(v) for v in value]
    return value


def _json_stringer(value: GoStruct) -> str:
    return json_marshal(value)


# -- messages -------------------------------------------------------------------------------------

TOOL_CALL_FUNCTION = StructType(
    "template.templateToolCallFunction",
    (FieldSpec("Index"), FieldSpec("Name"), FieldSpec("Arguments")),
)
TOOL_CALL = StructType("template.templateToolCall", (FieldSpec("ID"), FieldSpec("Function")))
MESSAGE = StructType(
    "*template.templateMessage",
    (
        FieldSpec("Role"),
        FieldSpec("Content"),
        FieldSpec("Thinking"),
        FieldSpec("Images"),
        FieldSpec("ToolCalls"),
        FieldSpec("ToolName"),
        FieldSpec("ToolCallID"),
    ),
)


def message_value(m: Message) -> GoStruct:
    calls = [
        GoStruct(
            TOOL_CALL,
            ID=c.id,
            Function=GoStruct(
                TOOL_CALL_FUNCTION,
                Index=c.function.index,
                Name=c.function.name,
                Arguments=JSONStringMap(go_any(dict(c.function.arguments))),
            ),
        )
        for c in m.tool_calls
    ]
    return GoStruct(
        MESSAGE,
        Role=m.role,
        Content=m.content,
        Thinking=m.thinking,
        Images=list(m.images) if m.images else NilSlice(),
        ToolCalls=calls if calls else NilSlice(),
        ToolName=m.tool_name,
        ToolCallID=m.tool_call_id,
    )


def messages_value(messages: Sequence[Message]) -> list[GoStruct]:
    return [message_value(m) for m in messages]


# -- tools ----------------------------------------------------------------------------------------

_TS_TYPES = {
    "string": "string",
    "number": "number",
    "integer": "number",
    "boolean": "boolean",
    "array": "any[]",
    "object": "Record<string, any>",
    "null": "null",
}


def _typescript_type(prop: GoStruct) -> str:
    """Ollama's ``ToolProperty.ToTypeScriptType``."""
    _, any_of = prop.field("AnyOf")
    if any_of:
        return " | ".join(_typescript_type(p) for p in any_of)
    _, types = prop.field("Type")
    if not types:
        return "any"
    return " | ".join(_TS_TYPES.get(t, "any") for t in types)


PROPERTY = StructType(
    "api.ToolProperty",
    (
        FieldSpec("AnyOf", "anyOf", True),
        FieldSpec("Type", "type", True),
        FieldSpec("Items", "items", True),
        FieldSpec("Description", "description", True),
        FieldSpec("Enum", "enum", True),
        FieldSpec("Properties", "properties", True),
        FieldSpec("Required", "required", True),
    ),
    methods={"ToTypeScriptType": _typescript_type},
)
TOOL_PARAMETERS = StructType(
    "template.templateToolFunctionParameters",
    (
        FieldSpec("Type", "type"),
        FieldSpec("Defs", "$defs", True),
        FieldSpec("Items", "items", True),
        FieldSpec("Required", "required", True),
        FieldSpec("Properties", "properties"),
    ),
)
TOOL_FUNCTION = StructType(
    "template.templateToolFunction",
    (FieldSpec("Name", "name"), FieldSpec("Description", "description"), FieldSpec("Parameters", "parameters")),
)
TOOL = StructType(
    "template.templateTool",
    (FieldSpec("Type", "type"), FieldSpec("Items", "items", True), FieldSpec("Function", "function")),
    stringer=_json_stringer,
)


def _property_type(raw: Any) -> StringerList:
    if isinstance(raw, str):
        return StringerList([raw])
    if isinstance(raw, (list, tuple)):
        return StringerList(str(t) for t in raw)
    return StringerList()


def _strings(raw: Any) -> list[str] | None:
    if isinstance(raw, (list, tuple)):
        return [str(x) for x in raw]
    return None


def property_value(raw: Mapping[str, Any]) -> GoStruct:
    any_of = raw.get("anyOf")
    nested = raw.get("properties")
    enum = raw.get("enum")
    return GoStruct(
        PROPERTY,
        AnyOf=[property_value(p) for p in any_of if isinstance(p, Mapping)] if isinstance(any_of, list) else None,
        Type=_property_type(raw.get("type")),
        Items=go_any(raw.get("items")),
        Description=str(raw.get("description") or ""),
        Enum=go_any(list(enum)) if isinstance(enum, (list, tuple)) else None,
        Properties=(
            OrderedMap((str(k), property_value(v if isinstance(v, Mapping) else {})) for k, v in nested.items())
            if isinstance(nested, Mapping)
            else None
        ),
        Required=_strings(raw.get("required")),
    )


def tool_value(raw: Mapping[str, Any]) -> GoStruct:
    fn = raw.get("function") or {}
    params = fn.get("parameters") or {}
    props = params.get("properties")
    return GoStruct(
        TOOL,
        Type=str(raw.get("type") or ""),
        Items=go_any(raw.get("items")),
        Function=GoStruct(
            TOOL_FUNCTION,
            Name=str(fn.get("name") or ""),
            Description=str(fn.get("description") or ""),
            Parameters=GoStruct(
                TOOL_PARAMETERS,
                Type=str(params.get("type") or ""),
                Defs=go_any(params.get("$defs")),
                Items=go_any(params.get("items")),
                Required=_strings(params.get("required")),
                Properties=(
                    JSONStringMap(
                        (str(k), property_value(v if isinstance(v, Mapping) else {})) for k, v in props.items()
                    )
                    if isinstance(props, Mapping)
                    else None
                ),
            ),
        ),
    )


def tools_value(tools: Sequence[Mapping[str, Any]] | None) -> JSONStringList | None:
    """``.Tools``: nil when the request had no ``tools`` key, an empty list for ``"tools": []``."""
    if tools is None:
        return None
    return JSONStringList(tool_value(t) for t in tools)
