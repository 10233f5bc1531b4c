"""The interactive session of ``trillama run``: ``ollama run``'s REPL, its commands and its texts.

Line editing, history (``~/.ollama/history``, as Ollama keeps it) and key bindings come from
prompt_toolkit. Ctrl+C at the prompt abandons the line; during an answer it stops the answer (the
stream is closed, which cancels the request on the server) and the prompt comes back. Ctrl+D on an
empty line, ``/bye`` or ``/exit`` leave. A line starting with ``\"\"\"`` starts a multi-line
message that ends at the next ``\"\"\"``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import httpx
from prompt_toolkit import PromptSession
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings

from trillama.cli.answer import RunOptions, answer, load
from trillama.cli.commands import CLIError, _check, cmd_list, with_images
from trillama.cli.showinfo import format_show
from trillama.cli.termout import summary_lines
from trillama.gofmt import go_v

__all__ = ["Repl", "HELP", "HELP_SET", "HELP_SHOW", "HELP_SHORTCUTS", "HELP_PARAMETERS"]

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""
HELP_IMAGES = "Use /path/to/file to include .jpg, .png, .webp images.\n"
HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""
HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
   Alt + b            Move back (left) one word
   Alt + f            Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + g            Open default editor to compose a prompt
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit trillama (/bye)
"""
HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""
HELP_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""


class _Interrupted(Exception):
    """Ctrl+C at the prompt, carrying what was typed (an empty line gets the exit hint)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _History(FileHistory):
    """The history file, with Ollama's ``/set nohistory``: lines typed meanwhile are not kept."""

    enabled = True

    def append_string(self, string: str) -> None:
        if self.enabled:
            super().append_string(string)


def _history(enabled: bool) -> FileHistory | InMemoryHistory:
    path = Path.home() / ".ollama" / "history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        history = _History(str(path))
    except OSError:
        return InMemoryHistory()
    history.enabled = enabled
    return history


def _key_bindings() -> KeyBindings:
    kb = KeyBindings()

    @kb.add("c-c")
    def _interrupt(event: Any) -> None:
        event.app.exit(exception=_Interrupted(event.current_buffer.text))

    @kb.add("c-g")
    def _editor(event: Any) -> None:
        event.current_buffer.open_in_editor()

    return kb


def err(text: str) -> None:
    print(text, end="", file=sys.stderr, flush=True)


class Repl:
    def __init__(self, client: httpx.Client, opts: RunOptions, history: bool = True,
                 read: Callable[[str, bool], str] | None = None) -> None:
        self.client = client
        self.opts = opts
        self.history = _history(history) if read is None else InMemoryHistory()
        self._read = read or self._prompt
        self._session: PromptSession | None = None
        self.think_explicit = opts.think is not None

    # -- input ------------------------------------------------------------------------------
    def _prompt(self, prompt: str, alt: bool) -> str:
        if self._session is None:
            self._session = PromptSession(history=self.history, key_bindings=_key_bindings())
        placeholder = "Press Enter to send" if alt else "Send a message (/? for help)"
        return self._session.prompt(prompt, placeholder=FormattedText([("#808080", placeholder)]))

    def run(self) -> int:
        pending: list[str] = []
        multiline: str | None = None  # None, "prompt" or "system"
        while True:
            try:
                line = self._read("... " if multiline or pending else ">>> ", bool(multiline))
            except EOFError:
                print()
                return 0
            except _Interrupted as exc:
                if not exc.text:
                    print("\nUse Ctrl + d or /bye to exit.")
                pending, multiline = [], None
                continue
            if multiline:
                done = line.endswith('"""')
                pending.append(line[:-3] if done else line)
                if not done:
                    continue
                text = "\n".join(pending)
                pending, kind, multiline = [], multiline, None
                if kind == "system":
                    self._set_system(text)
                    continue
                self._send(text)
                continue
            if line.startswith('"""'):
                rest = line[3:]
                if rest.endswith('"""') and len(rest) >= 3:
                    self._send(rest[:-3])
                else:
                    pending, multiline = [rest], "prompt"
                continue
            stripped = line.strip()
            if stripped.startswith("/"):
                try:
                    result = self._command(line)
                except KeyboardInterrupt:  # Ctrl+C while a command talks to the server
                    print()
                    continue
                if result == "exit":
                    return 0
                if isinstance(result, tuple):  # /set system """…: keep reading lines
                    pending, multiline = [result[1]], "system"
                continue
            if line:
                self._send(line)

    # -- commands ---------------------------------------------------------------------------
    def _command(self, line: str) -> Any:
        args = line.split()
        word = args[0]
        if word.startswith("/list"):
            cmd_list(_Args(prefix=args[1] if len(args) > 1 else None))
        elif word.startswith("/load"):
            if len(args) != 2:
                print("Usage:\n  /load <modelname>")
            else:
                self._load(args[1])
        elif word.startswith("/save"):
            if len(args) != 2:
                print("Usage:\n  /save <modelname>")
            else:
                self._save(args[1])
        elif word.startswith("/clear"):
            self.opts.messages = [{"role": "system", "content": self.opts.system}] if self.opts.system else []
            print("Cleared session context")
        elif word.startswith("/set"):
            return self._set(line, args)
        elif word.startswith("/show"):
            self._show(args)
        elif word.startswith("/help") or word.startswith("/?"):
            topic = args[1] if len(args) > 1 else ""
            if topic in ("set", "/set"):
                err(HELP_SET + "\n")
            elif topic in ("show", "/show"):
                err(HELP_SHOW + "\n")
            elif topic in ("shortcut", "shortcuts"):
                err(HELP_SHORTCUTS + "\n")
            elif not topic:
                err(HELP + (HELP_IMAGES if self.opts.multimodal else "") + "\n")
        elif word.startswith("/exit") or word.startswith("/bye"):
            return "exit"
        elif self.opts.multimodal and with_images(line, True)[1]:
            self._send(line)
        else:
            print(f"Unknown command '{word}'. Type /? for help")
        return None

    def _set(self, line: str, args: list[str]) -> Any:
        if len(args) < 2:
            err(HELP_SET + "\n")
            return None
        what = args[1]
        opts = self.opts
        if what == "history":
            if hasattr(self.history, "enabled"):
                self.history.enabled = True
        elif what == "nohistory":
            if hasattr(self.history, "enabled"):
                self.history.enabled = False
        elif what in ("wordwrap", "nowordwrap"):
            opts.wordwrap = what == "wordwrap"
            print(f"Set '{what}' mode.")
        elif what in ("verbose", "quiet"):
            opts.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif what == "think":
            level = args[2] if len(args) > 2 else ""
            opts.think = level or True
            self.think_explicit = True
            self._warn_thinking()
            print(f"Set 'think' mode to '{level}'." if level else "Set 'think' mode.")
        elif what == "nothink":
            opts.think = False
            self.think_explicit = True
            self._warn_thinking()
            print("Set 'nothink' mode.")
        elif what == "format":
            if len(args) < 3 or args[2] != "json":
                print("Invalid or missing format. For 'json' mode use '/set format json'")
            else:
                opts.format = "json"
                print("Set format to 'json' mode.")
        elif what == "noformat":
            opts.format = ""
            print("Disabled format.")
        elif what == "parameter":
            if len(args) < 4:
                err(HELP_PARAMETERS + "\n")
                return None
            from trillama.store.errors import InvalidRequest  # the store is slow to import: only now
            from trillama.store.options import parse_parameter

            name, values = args[2], args[3:]
            try:
                typed = [parse_parameter(name, v) for v in values]
            except InvalidRequest as exc:
                print(f'Couldn\'t set parameter: "{exc}"')
                return None
            value = [v for t in typed for v in t] if isinstance(typed[0], list) else typed[0]
            print(f"Set parameter '{name}' to '{', '.join(values)}'")
            opts.options[name] = value
        elif what == "system":
            if len(args) < 3:
                err(HELP_SET + "\n")
                return None
            text = line.split(None, 2)[2]
            if text.startswith('"""'):
                text = text[3:]
                if not (text.endswith('"""') and len(text) >= 3):
                    return ("system", text)
                text = text[:-3]
            self._set_system(text)
        else:
            print(f"Unknown command '/set {what}'. Type /? for help")
        return None

    def _set_system(self, text: str) -> None:
        self.opts.system = text
        message = {"role": "system", "content": text}
        if self.opts.messages and self.opts.messages[-1]["role"] == "system":
            self.opts.messages[-1] = message
        else:
            self.opts.messages.append(message)
        print("Set system message.")

    def _warn_thinking(self) -> None:
        shown = self.client.post("/api/show", json={"model": self.opts.model})
        if shown.status_code == 200 and "thinking" not in (shown.json().get("capabilities") or []):
            print(f"warning: model \"{self.opts.model}\" does not support thinking output", file=sys.stderr)

    def _show(self, args: list[str]) -> None:
        if len(args) < 2:
            err(HELP_SHOW + "\n")
            return
        response = self.client.post("/api/show", json={"model": self.opts.model})
        if response.status_code != 200:
            print("error: couldn't get model")
            return
        info = response.json()
        what = args[1]
        if what == "info":
            err(format_show(info))
        elif what == "license":
            print(info.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            print(info.get("modelfile", ""))
        elif what == "parameters":
            print("Model defined parameters:")
            if not info.get("parameters"):
                print("  No additional parameters were specified for this model.")
            else:
                for line in info["parameters"].split("\n"):
                    print(f"  {line}")
            print()
            if self.opts.options:
                print("User defined parameters:")
                for key, value in self.opts.options.items():
                    print(f"  {key:<30} {go_v(value)}")
                print()
        elif what == "system":
            system = self.opts.system or info.get("system", "")
            print(system + "\n" if system else "No system message was specified for this model.")
        elif what == "template":
            print(info.get("template") or "No prompt template was specified for this model.")
        else:
            print(f"Unknown command '/show {what}'. Type /? for help")

    def _load(self, model: str) -> None:
        before = (self.opts.model, self.opts.messages, self.opts.loaded_messages, self.opts.multimodal)
        self.opts.model, self.opts.messages, self.opts.loaded_messages = model, [], []
        print(f"Loading model '{model}'")
        shown = self.client.post("/api/show", json={"model": model})
        if shown.status_code == 404:
            print(f"Couldn't find model '{model}'")
            (self.opts.model, self.opts.messages, self.opts.loaded_messages, self.opts.multimodal) = before
            return
        info = _check(shown).json()
        self.opts.apply_show(info)
        if not self.think_explicit:
            self.opts.think = True if "thinking" in (info.get("capabilities") or []) else None
        load(self.client, self.opts)

    def _save(self, name: str) -> None:
        opts = self.opts
        body: dict[str, Any] = {"model": name, "from": opts.model, "stream": False}
        if opts.system:
            body["system"] = opts.system
        if opts.options:
            body["parameters"] = dict(opts.options)
        messages = [*opts.loaded_messages, *opts.messages]
        if messages:
            body["messages"] = messages
        response = self.client.post("/api/create", json=body)
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error", ""))
            except ValueError:
                message = response.text
            if "invalid model name" in message or "name is invalid" in message:
                print(f"error: The model name '{name}' is invalid")
                return
            raise CLIError(message)
        print(f"Created new model '{name}'")

    # -- a message --------------------------------------------------------------------------
    def _send(self, text: str) -> None:
        opts = self.opts
        message: dict[str, Any] = {"role": "user", "content": text}
        if opts.multimodal:
            text, images = with_images(text, True)
            message["content"] = text
            if images:
                message["images"] = images
        opts.messages.append(message)
        try:
            printer, final = answer(self.client, "/api/chat", {**opts.body(), "messages": opts.messages}, opts)
        except CLIError as exc:
            if "does not support thinking" in str(exc) or "invalid think value" in str(exc):
                print(f"error: {exc}")
                return
            raise
        if final is None:  # Ctrl+C: the answer stops, the question stays in the session (as ollama)
            print()
            return
        print("\n")
        if opts.verbose:
            for line in summary_lines(final):
                print(line, file=sys.stderr)
        reply: dict[str, Any] = {"role": "assistant", "content": printer.content}
        if printer.thinking:
            reply["thinking"] = printer.thinking
        opts.messages.append(reply)


class _Args:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)
