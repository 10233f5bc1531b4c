"""One answer streamed to the terminal, and what each request of a run carries.

Shared by ``trillama run`` (:mod:`trillama.cli.run`) and its interactive session
(:mod:`trillama.cli.repl`): :class:`RunOptions` is the session's state (``/set`` changes it),
:func:`answer` streams one reply with the spinner and the answer printer, and Ctrl+C stops it
(the stream is closed, which cancels the request on the server); :func:`load` loads the model
before the first prompt.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import httpx

from trillama.cli.commands import CLIError, _check, _stream
from trillama.cli.termout import AnswerPrinter, Spinner

__all__ = ["RunOptions", "answer", "load"]


@attrs.define
class RunOptions:
    """What a run (and a REPL session) sends with every request; the REPL's ``/set`` changes it."""

    model: str
    system: str = ""
    options: dict[str, Any] = attrs.field(factory=dict)
    messages: list[dict[str, Any]] = attrs.field(factory=list)
    loaded_messages: list[dict[str, Any]] = attrs.field(factory=list)
    parent_model: str = ""
    format: str = ""
    think: bool | str | None = None
    hide_thinking: bool = False
    wordwrap: bool = True
    verbose: bool = False
    keep_alive: str | None = None
    multimodal: bool = False

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model}
        if self.format:
            body["format"] = _format_value(self.format)
        if self.options:
            body["options"] = dict(self.options)
        if self.think is not None:
            body["think"] = self.think
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    def apply_show(self, info: dict[str, Any]) -> None:
        """Take what ``/api/show`` says about the model: vision, its parent, its stored messages."""
        caps = info.get("capabilities") or []
        self.multimodal = "vision" in caps or "audio" in caps or bool(info.get("projector_info"))
        self.parent_model = (info.get("details") or {}).get("parent_model", "")
        self.loaded_messages = list(info.get("messages") or [])


def _format_value(text: str) -> Any:
    """``json``, or a JSON schema given as text (``--format '{"type": "object", …}'``)."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            raise CLIError(f"invalid format: {text}") from None
    return text


def answer(client: httpx.Client, path: str, body: dict[str, Any], opts: RunOptions,
           printer: AnswerPrinter | None = None) -> tuple[AnswerPrinter, dict | None]:
    """Stream one answer to the terminal; the final chunk, or ``None`` when Ctrl+C stopped it."""
    printer = printer or AnswerPrinter(wordwrap=opts.wordwrap, hide_thinking=opts.hide_thinking)
    spinner = Spinner().start()
    final: dict | None = None
    chunks = _stream(client, "POST", path, body)
    try:
        for item in chunks:
            piece = item.get("message") or {}
            content = piece.get("content", "") if path == "/api/chat" else item.get("response", "")
            thinking = piece.get("thinking", "") if path == "/api/chat" else item.get("thinking", "")
            calls = piece.get("tool_calls") if path == "/api/chat" else item.get("tool_calls")
            if content or calls or (thinking and not opts.hide_thinking):
                spinner.stop()
            printer.feed(content or "", thinking or "", calls)
            if item.get("done"):
                final = item
    except KeyboardInterrupt:
        return printer, None
    finally:
        spinner.stop()
        chunks.close()  # closes the response: the server cancels the request
    return printer, final


def load(client: httpx.Client, opts: RunOptions) -> None:
    """Load the model before the first prompt (an empty generate), with the spinner meanwhile."""
    spinner = Spinner().start()
    try:
        body = {k: v for k, v in opts.body().items() if k in ("model", "keep_alive")}
        _check(client.post("/api/generate", json=body))
    finally:
        spinner.stop()
