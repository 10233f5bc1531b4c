"""``trillama run MODEL [PROMPT]``: one answer, or the interactive session (``trillama.cli.repl``).

As ``ollama run``: the model is shown first (and pulled when missing); a prompt on the command
line or anything on stdin makes the run non-interactive, and so does a stdout that is not a
terminal; an interactive run loads the model (an empty generate), replays the Modelfile's
``MESSAGE`` turns and opens the REPL. Ctrl+C stops an answer: the stream is closed, which cancels
the request on the server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

import httpx

from trillama.cli.answer import RunOptions, answer, load
from trillama.cli.commands import CLIError, _check, _client, _stream, show_progress, with_images
from trillama.cli.termout import AnswerPrinter, summary_lines
from trillama.durations import DurationError, parse_go_duration

__all__ = ["cmd_run", "hear_ctrl_c", "parse_think"]

THINK_VALUES = ("high", "medium", "low", "max")


def parse_think(value: str | None) -> bool | str | None:
    if value is None:
        return None
    if value in ("", "true"):
        return True
    if value == "false":
        return False
    if value in THINK_VALUES:
        return value
    raise CLIError(f'invalid value for --think: "{value}" (must be true, false, high, medium, low, or max)')


def _print_summary(final: dict | None) -> None:
    for line in summary_lines(final or {}):
        print(line, file=sys.stderr)


def _run_once(client: httpx.Client, opts: RunOptions, prompt: str) -> int:
    prompt, images = with_images(prompt, opts.multimodal)
    body = {**opts.body(), "prompt": prompt, **({"images": images} if images else {})}
    _, final = answer(client, "/api/generate", body, opts)
    if final is None:
        return 0
    if prompt:
        print("\n")
    if opts.verbose:
        _print_summary(final)
    return 0


def hear_ctrl_c() -> None:
    """Make Ctrl+C raise ``KeyboardInterrupt`` even if we were started with SIGINT ignored.

    Why: a non-interactive shell starts its background jobs with SIGINT ignored, and Python then
    leaves it ignored, so ``trillama run`` started from a script, a test runner or a tool in the
    background would never stop an answer on Ctrl+C. ``ollama`` (Go's ``signal.Notify``) takes
    the signal back the same way. A handler someone installed on purpose is left alone.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def cmd_run(args: argparse.Namespace) -> int:
    hear_ctrl_c()
    opts = RunOptions(model=args.model, format=args.format or "", think=parse_think(args.think),
                      hide_thinking=args.hidethinking, wordwrap=not args.nowordwrap, verbose=args.verbose)
    if args.keepalive:
        try:
            parse_go_duration(args.keepalive)
        except DurationError as exc:
            raise CLIError(str(exc)) from None
        opts.keep_alive = args.keepalive
    prompts = list(args.prompt)
    interactive = not prompts
    if not sys.stdin.isatty():
        text = sys.stdin.read()
        if text:
            prompts.insert(0, text)
        opts.wordwrap = False
        interactive = False
    if not sys.stdout.isatty():
        interactive = False
    with _client() as client:
        shown = client.post("/api/show", json={"model": args.model})
        if shown.status_code == 404:  # as ``ollama run``: fetch what is missing, then run it
            show_progress(_stream(client, "POST", "/api/pull", {"model": args.model, "insecure": args.insecure}))
            shown = client.post("/api/show", json={"model": args.model})
        info = _check(shown).json()
        opts.apply_show(info)
        caps = info.get("capabilities") or []
        if args.think is None and "thinking" in caps:
            opts.think = True  # as ollama: a thinking model thinks unless told not to
        if "embedding" in caps and "completion" not in caps:
            return _embed(client, opts, " ".join(prompts))
        if not interactive:
            return _run_once(client, opts, " ".join(prompts))
        from trillama.cli.repl import Repl

        load(client, opts)
        for msg in opts.loaded_messages:
            if msg.get("role") == "user":
                print(f">>> {msg.get('content', '')}")
            elif msg.get("role") == "assistant":
                AnswerPrinter(wordwrap=opts.wordwrap).feed(msg.get("content", ""))
                print("\n")
        return Repl(client, opts, history=os.environ.get("OLLAMA_NOHISTORY", "") in ("", "0", "false")).run()


def _embed(client: httpx.Client, opts: RunOptions, text: str) -> int:
    if not text:
        raise CLIError(f'embedding models require input text. Usage: trillama run {opts.model} "your text here"')
    body: dict[str, Any] = {"model": opts.model, "input": text}
    if opts.keep_alive is not None:
        body["keep_alive"] = opts.keep_alive
    vectors = _check(client.post("/api/embed", json=body)).json().get("embeddings") or []
    for vector in vectors:
        print(json.dumps(vector))
    return 0
