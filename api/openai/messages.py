"""OpenAI chat messages → the native message dicts the prompt layer renders.

Kept apart from the chat route because the Responses API translates its input items into these
same messages (one conversation shape, one renderer).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Mapping

from trillama.api.errors import APIError
from trillama.api.openai.common import json_type

__all__ = ["image_from_url", "native_messages"]


# ----------------------------------------------------------------------------- chat: messages
_IMAGE_DATA_URI = re.compile(r"^data:(?:image/(?:jpeg|jpg|png|webp))?;base64,(.*)$", re.DOTALL)


def image_from_url(part: Mapping[str, Any]) -> bytes:
    """A ``data:`` URI's image bytes; remote URLs are refused as Ollama refuses them."""
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, Mapping) else ref
    if not isinstance(url, str):
        raise APIError(400, "invalid image input")
    if url.startswith(("http://", "https://")):
        raise APIError(400, "image URLs are not currently supported, please use base64 encoded data instead")
    match = _IMAGE_DATA_URI.match(url)
    if match is None:
        raise APIError(400, "invalid image input")
    try:
        return base64.b64decode(match.group(1), validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, "invalid image input") from None


def _content(role: str, content: Any, has_tool_calls: bool) -> tuple[str, list[bytes]]:
    """Text and images of one message's ``content`` (a string or an array of parts).

    Text parts are joined with a blank line, which is what Ollama's template data gets when it
    splits parts into same-role messages and merges them again; keeping one message avoids
    breaking Jinja templates that insist on alternating roles.
    """
    if isinstance(content, str):
        return content, []
    if content is None:
        if has_tool_calls or role == "assistant":
            return "", []
        raise APIError(400, "invalid message content type: <nil>")
    if not isinstance(content, list):
        raise APIError(400, f"invalid message content type: {json_type(content)}")
    texts: list[str] = []
    images: list[bytes] = []
    for part in content:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(image_from_url(part))
        elif kind == "input_audio":
            raise APIError(400, "audio input is not supported")
        else:
            raise APIError(400, "invalid message format")
    return "\n\n".join(texts), images


def _tool_calls_in(message: Mapping[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    """An assistant turn's OpenAI ``tool_calls`` as native ones (arguments parsed from JSON text)."""
    raw = message.get("tool_calls")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise APIError(400, "invalid tool_calls: expected an array")
    calls = []
    for index, call in enumerate(raw):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise APIError(400, "invalid tool call: function name is required")
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                raise APIError(400, "invalid tool call arguments") from None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise APIError(400, "invalid tool call arguments")
        call_id = call.get("id") if isinstance(call.get("id"), str) else ""
        if call_id:
            names[call_id] = fn["name"]
        calls.append({"id": call_id, "function": {"index": index, "name": fn["name"], "arguments": args}})
    return calls


def native_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages → the native message dicts :func:`build_chat_prompt` renders.

    ``developer`` is OpenAI's newer name for ``system``; ``tool`` results get their ``tool_name``
    from the assistant call with the same ``tool_call_id`` (or from ``name``).
    """
    if raw is None:
        raise APIError(400, "'messages' is a required property")
    if not isinstance(raw, list):
        raise APIError(400, f"invalid type for 'messages' field: {json_type(raw)}")
    if not raw:
        raise APIError(400, "[] is too short - 'messages'")
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in raw:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise APIError(400, "invalid message format: each message needs a string 'role'")
        role = message["role"].lower()
        if role == "developer":
            role = "system"
        calls = _tool_calls_in(message, names) if role == "assistant" else []
        text, images = _content(role, message.get("content"), bool(calls))
        native: dict[str, Any] = {"role": role, "content": text}
        if images:
            native["images"] = images
        if calls:
            native["tool_calls"] = calls
        if role == "tool":
            call_id = message.get("tool_call_id")
            name = message.get("name")
            if isinstance(call_id, str) and call_id:
                native["tool_call_id"] = call_id
                name = names.get(call_id, name)
            if isinstance(name, str) and name:
                native["tool_name"] = name
        if isinstance(message.get("reasoning"), str):
            native["thinking"] = message["reasoning"]
        out.append(native)
    return out

