"""Tools that the API's provider defines: one rule for ``/v1/messages`` and ``/v1/responses``.

Anthropic and OpenAI both let a request carry typed tools besides plain function tools. Some are
run by the provider itself (Anthropic's server tools: ``web_search_…``, ``web_fetch_…``,
``code_execution_…``, ``tool_search_tool_…``; OpenAI's hosted tools: ``web_search``,
``file_search``, ``code_interpreter``, ``image_generation``, ``mcp``, …); others are only *described*
by the provider and run by the client (Anthropic's ``bash``, ``text_editor``, ``memory`` and
``computer`` tools; OpenAI's ``local_shell``). Agents send the hosted ones by default (Codex always
offers ``web_search``), and nothing here can run them. The rule, the same on both routes:

1. A tool the **client** runs is served: the model sees it as a function with the parameters the
   provider documents for it, and its calls come back in the protocol's own shape.
2. A tool the **provider** runs is left out: the model is not told about it and never calls it.
   The request is served with the other tools, and each tool left out is logged
   (``provider_tools_left_out``) and named in the answer's :data:`HEADER` header.
3. A request that *forces* a left-out tool (``tool_choice`` naming it) is a 400: that call cannot
   be made here.
4. A tool type neither protocol defines is a 400 in the protocol's own words.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from trillama.logs import get_logger

__all__ = ["HEADER", "ClientTool", "anthropic_tool_kind", "anthropic_client_tool", "OPENAI_HOSTED",
           "header_value", "log_left_out"]

log = get_logger("trillama.api.provider_tools")

#: Names the tools a request offered that were left out (comma-separated), when there were any.
HEADER = "X-Trillama-Ignored-Tools"

#: Anthropic server tools, by the prefix of their versioned ``type``.
ANTHROPIC_HOSTED_PREFIXES = ("web_search_", "web_fetch_", "code_execution_", "tool_search_tool_",
                             "mcp_toolset")

#: OpenAI's hosted tool types on the Responses API.
OPENAI_HOSTED = frozenset({
    "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26",
    "file_search", "code_interpreter", "image_generation", "mcp", "tool_search",
})


@attrs.frozen
class ClientTool:
    """A provider-described tool the client runs: the parameters its calls carry."""

    description: str
    parameters: Mapping[str, Any]


_PATH = {"type": "string", "description": "Absolute path of the file or directory."}
_FILE_COMMANDS = {
    "old_str": {"type": "string", "description": "Text to replace (must occur exactly once)."},
    "new_str": {"type": "string", "description": "Replacement text, or the text to insert."},
    "insert_line": {"type": "integer", "description": "Line after which to insert (0: at the start)."},
    "insert_text": {"type": "string", "description": "Text to insert."},
    "file_text": {"type": "string", "description": "Content of the file to create."},
    "view_range": {"type": "array", "items": {"type": "integer"},
                   "description": "First and last line to view (-1: to the end)."},
}

_ANTHROPIC_CLIENT = {
    "bash_": ClientTool(
        "Run a command in a persistent bash shell and see its output.",
        {"type": "object", "properties": {
            "command": {"type": "string", "description": "The bash command to run."},
            "restart": {"type": "boolean", "description": "Restart the shell instead of running a command."}}}),
    "text_editor_": ClientTool(
        "View, create and edit text files.",
        {"type": "object", "properties": {
            "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "undo_edit"]},
            "path": _PATH, **_FILE_COMMANDS}, "required": ["command", "path"]}),
    "memory_": ClientTool(
        "Keep notes across conversations in files under /memories.",
        {"type": "object", "properties": {
            "command": {"type": "string", "enum": ["view", "create", "str_replace", "insert", "delete", "rename"]},
            "path": _PATH, "old_path": _PATH, "new_path": _PATH, **_FILE_COMMANDS}, "required": ["command"]}),
    "computer_": ClientTool(
        "Use a computer's screen, mouse and keyboard; each action returns a screenshot.",
        {"type": "object", "properties": {
            "action": {"type": "string", "enum": [
                "screenshot", "left_click", "right_click", "middle_click", "double_click", "triple_click",
                "left_click_drag", "mouse_move", "key", "type", "scroll", "wait", "cursor_position",
                "hold_key", "left_mouse_down", "left_mouse_up", "zoom"]},
            "coordinate": {"type": "array", "items": {"type": "integer"}, "description": "[x, y] on the screen."},
            "text": {"type": "string", "description": "Text to type, or the key (combination) to press."},
            "scroll_direction": {"type": "string", "enum": ["up", "down", "left", "right"]},
            "scroll_amount": {"type": "integer"},
            "duration": {"type": "number"}}, "required": ["action"]}),
}


def anthropic_tool_kind(kind: Any) -> str:
    """``custom`` (a plain tool), ``client`` (provider-described, client-run), ``hosted``, or ``unknown``."""
    if kind in (None, "custom"):
        return "custom"
    if not isinstance(kind, str):
        return "unknown"
    if kind.startswith(ANTHROPIC_HOSTED_PREFIXES):
        return "hosted"
    if any(kind.startswith(prefix) for prefix in _ANTHROPIC_CLIENT):
        return "client"
    return "unknown"


def anthropic_client_tool(kind: str) -> ClientTool:
    for prefix, tool in _ANTHROPIC_CLIENT.items():
        if kind.startswith(prefix):
            return tool
    raise KeyError(kind)


def header_value(names: tuple[str, ...]) -> str:
    return ", ".join(names)


def log_left_out(protocol: str, names: tuple[str, ...]) -> None:
    if names:
        log.info("provider_tools_left_out", protocol=protocol, tools=list(names),
                 reason="the API provider runs these tools; they cannot run here")
