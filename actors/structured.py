"""Structured output: Ollama's ``format`` → a GBNF grammar the runner enforces while sampling.

``"json"`` is any JSON value (an object, as Ollama's JSON mode produces); a JSON-schema object is
converted with llama-cpp-python's own schema→GBNF converter, a maintained port of llama.cpp's.
Grammars are validated in the runner (a grammar llama.cpp cannot parse is an error, never a crash).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["FormatError", "grammar_for_format", "JSON_OBJECT_GBNF"]

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
