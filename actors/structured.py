"""Structured output: Ollama's ``format`` → a GBNF grammar the runner enforces while sampling.

``"json"`` is any JSON value (an object, as Ollama's JSON mode produces); a JSON-schema object is
converted with llama-cpp-python's own schema→GBNF converter, a maintained port of llama.cpp's.
Grammars are validated in the runner (a grammar llama.cpp cannot parse is an error, never a crash).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

__all__ = ["FormatError", "grammar_for_format", "grammar_for_tool_call", "JSON_OBJECT_GBNF"]

#: Any JSON object, whitespace kept small so the model cannot pad forever.
JSON_OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\bfnrt/] | "u" [0-9a-fA-F]{4}) )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"""


class FormatError(ValueError):
    """``format`` is neither ``"json"`` nor a usable JSON schema (Ollama's message)."""


def grammar_for_format(fmt: Any) -> str | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return JSON_OBJECT_GBNF
    if isinstance(fmt, dict):
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        try:
            return json_schema_to_gbnf(json.dumps(fmt))
        except Exception as exc:  # the converter raises assorted errors on schemas it can't express
            raise FormatError(f"invalid format: unsupported JSON schema: {exc}") from None
    raise FormatError(f'invalid format: "{json.dumps(fmt)}"; expected "json" or a valid JSON Schema object')


def _close_tag(tag: str) -> str:
    """``</x>`` for an XML-ish opening tag ``<x>``; nothing for ``[TOOL_CALLS]`` or ``<|python_tag|>``."""
    if tag.startswith("<") and tag.endswith(">") and not tag.startswith("</") and "|" not in tag:
        return "</" + tag[1:]
    return ""


def grammar_for_tool_call(tools: Sequence[Mapping[str, Any]], tag: str = "{", *, only: str | None = None) -> str:
    """A GBNF grammar that admits exactly one call of one of ``tools`` (or of ``only``), nothing else.

    Why: OpenAI's ``tool_choice`` ``"required"`` or a named function promises the client a tool
    call. Prompting cannot promise that with small models; constraining the sampler can. The call
    is written as the model's template shows calls (``tag`` is the template's tool-call tag, as
    :class:`~trillama.actors.prompt.toolcalls.ToolCallParser` looks for it), with a body
    ``{"name": "<tool>", "arguments": {...}}`` whose arguments follow the tool's JSON schema, so
    the ordinary output parser reads it back like any other call.
    """
    from llama_cpp.llama_grammar import SchemaConverter

    alternatives = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if not isinstance(name, str) or not name or (only is not None and name != only):
            continue
        parameters = fn.get("parameters")
        if not isinstance(parameters, Mapping) or not parameters:
            parameters = {"type": "object"}
        alternatives.append({
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": dict(parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        })
    if not alternatives:
        raise FormatError(f"tool choice: no function named {only!r} in tools" if only else "tool choice: no tools")
    schema = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    converter = SchemaConverter(prop_order={"name": 0, "arguments": 1}, allow_fetch=False, dotall=False,
                                raw_pattern=False)
    try:
        schema = converter.resolve_refs(schema, "tools")
        call = converter.visit(schema, "tool-call")
    except Exception as exc:  # the converter raises assorted errors on schemas it can't express
        raise FormatError(f"invalid tool parameters: unsupported JSON schema: {exc}") from None
    tag = tag or "{"
    if tag == "{":
        root = call
    elif tag == "[":
        root = f'"[" {call} "]"'
    else:
        closing = _close_tag(tag)
        root = f'{json.dumps(tag)} "\\n"? {call}'
        if closing:
            root += f' "\\n"? {json.dumps(closing)}'
    converter._add_rule("root", root)
    return converter.format_grammar()
