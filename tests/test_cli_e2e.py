"""The ``trillama`` CLI as a user types it: a real server, the real model, the REPL in a pseudo-terminal.

The session's shared server (tests/conftest.py). Answers are bounded with ``num_predict`` and greedy, so the whole file
stays short. ``HOME`` is a temporary folder, so the REPL's history file is the test's own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pexpect
import pytest

from conftest import REPO, ServerProcess, models_on

SMOL = "smollm2:135m"
SHORT = "smol-short"
PROMPT = ">>> "
STORY = "Write a very long story about a dragon who learns to bake bread."


@pytest.fixture(scope="module", autouse=True)
def short_model(session_server: ServerProcess) -> Iterator[None]:
    # one-shot answers have no options flag: bound them in the model
    with models_on(session_server, {SHORT: {"from": SMOL, "parameters": {"num_predict": 8, "temperature": 0}}}):
        yield


@pytest.fixture
def server(shared_server: ServerProcess) -> ServerProcess:
    return shared_server


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture
def env(server: ServerProcess, home: Path) -> dict[str, str]:
    return {**os.environ, "OLLAMA_HOST": server.base_url, "HOME": str(home), "TERM": "xterm",
            "PROMPT_TOOLKIT_NO_CPR": "1", "PYTHONUNBUFFERED": "1"}


def cli(env: dict[str, str], *args: str, stdin: str | None = None, cwd: Path | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trillama", *args], env=env, input=stdin, text=True,
                          capture_output=True, timeout=timeout, cwd=cwd or REPO,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def spawn(env: dict[str, str], *args: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "trillama", *args], env=env, encoding="utf-8",
                          timeout=120, dimensions=(40, 100), cwd=str(REPO))
    child.delaybeforesend = 0.05
    return child


#: prompt_toolkit turns bracketed paste off when a line is accepted: what follows is the output.
ACCEPTED = "\x1b[?2004l"


def submit(child: pexpect.spawn, line: str) -> None:
    child.sendline(line)
    child.expect_exact(ACCEPTED)


def command(child: pexpect.spawn, line: str, *expect: str) -> str:
    """Type a line at the prompt, then wait for each expected text of its output in turn."""
    child.expect_exact(PROMPT)
    submit(child, line)
    seen = ""
    for text in expect:
        child.expect_exact(text)
        seen += child.before + child.after
    return seen


def test_repl_session_command_by_command(server: ServerProcess, env: dict[str, str], home: Path) -> None:
    child = spawn(env, "run", SMOL)
    try:
        command(child, "/?", "Available Commands:", "/? shortcuts    Help for keyboard shortcuts",
                'Use """ to begin a multi-line message.')
        command(child, "/? shortcuts", "Ctrl + c            Stop the model from responding")
        command(child, "/set parameter num_predict 12", "Set parameter 'num_predict' to '12'")
        command(child, "/set parameter temperature 0", "Set parameter 'temperature' to '0'")
        command(child, "/set parameter seed x", 'Couldn\'t set parameter: "invalid int value [x]"')
        command(child, "/set system You are a pirate.", "Set system message.")
        command(child, "/show system", "You are a pirate.")
        command(child, "/show info", "Model", "architecture", "llama", "Capabilities", "completion", "tools",
                "Parameters", "License", "Apache License")
        command(child, "/show parameters", "Model defined parameters:", "stop", "User defined parameters:",
                "num_predict")
        command(child, "/show license", "Apache License")
        command(child, "/show template", "<|im_start|>")
        command(child, "/show modelfile", "FROM ")
        command(child, "/set bogus", "Unknown command '/set bogus'. Type /? for help")

        # history: the Up arrow brings back the last line, which runs again
        child.expect_exact(PROMPT)
        child.send("\x1b[A")
        child.expect_exact("/set bogus")
        child.send("\r")
        child.expect_exact(ACCEPTED)
        child.expect_exact("Unknown command '/set bogus'")

        # a multi-line message: continuation prompts, then one answer
        child.expect_exact(PROMPT)
        submit(child, '"""Say')
        child.expect_exact("... ")
        submit(child, "hello")
        child.expect_exact("... ")
        submit(child, 'please"""')
        child.expect(r"[A-Za-z]")  # the answer

        # Ctrl+C during a long answer stops it and the prompt comes back at once
        command(child, "/set parameter num_predict 4000", "Set parameter 'num_predict' to '4000'")
        child.expect_exact(PROMPT)
        submit(child, STORY)
        child.expect(r"[A-Za-z]{2,}")  # the answer is being printed
        stopped = time.monotonic()
        child.sendintr()
        child.expect_exact(PROMPT, timeout=20)
        assert time.monotonic() - stopped < 15
        child.sendintr()  # Ctrl+C on an empty line: a hint, not an exit
        child.expect_exact("Use Ctrl + d or /bye to exit.")
        command(child, "/set parameter num_predict 6", "Set parameter 'num_predict' to '6'")

        # verbose stats after an answer
        command(child, "/set verbose", "Set 'verbose' mode.")
        command(child, "Hi", "⠋", "prompt eval rate:", "eval rate:")  # the spinner, then the answer
        command(child, "/set quiet", "Set 'quiet' mode.")

        command(child, "/load nope-model", "Couldn't find model 'nope-model'")
        command(child, "/save pirate", "Created new model 'pirate'")
        command(child, "/save bad:name:x", "error: The model name 'bad:name:x' is invalid")
        command(child, "/list", "NAME", "pirate:latest")
        command(child, "/clear", "Cleared session context")
        command(child, f"/load {SHORT}", f"Loading model '{SHORT}'")
        command(child, "/show parameters", "Model defined parameters:", "num_predict")
        child.expect_exact(PROMPT)
        submit(child, "/bye")
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close()
    assert child.exitstatus == 0, child.before

    history = (home / ".ollama" / "history").read_text()
    assert "/set system You are a pirate." in history

    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        saved = http.post("/api/show", json={"model": "pirate"}).json()
    assert saved["system"] == "You are a pirate."
    assert "num_predict" in saved["parameters"] and "temperature" in saved["parameters"]
    contents = [m["content"] for m in saved["messages"]]
    assert "Say\nhello\nplease" in contents  # the multi-line message, as one message
    assert any(m["role"] == "assistant" for m in saved["messages"])
    # the stopped answer is not in the session: the story request is followed by the next question
    story = contents.index(STORY)
    assert saved["messages"][story + 1]["role"] == "user"
    assert saved["messages"][story + 1]["content"] == "Hi"

    # the saved model runs, carrying the session's system message and parameters
    child = spawn(env, "run", "pirate")
    try:
        child.expect_exact(PROMPT)
        child.send("\x1b[A")  # the history outlives the session: the last line of the one before
        child.expect_exact("/bye")
        child.sendintr()  # Ctrl+C drops the recalled line
        command(child, "/show system", "You are a pirate.")
        command(child, "/show parameters", "num_predict")
        child.expect_exact(PROMPT)
        child.sendcontrol("d")  # Ctrl+D leaves
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_one_shot_and_piped_stdin(env: dict[str, str]) -> None:
    piped = cli(env, "run", SHORT, "--verbose", stdin="Say hi in one word.")
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.strip()
    assert piped.stdout.endswith("\n\n")
    for label in ("total duration:", "prompt eval count:", "prompt eval rate:", "eval count:", "eval rate:"):
        assert label in piped.stderr, piped.stderr
    assert re.search(r"eval rate:\s+\d+\.\d\d tokens/s", piped.stderr)

    # stdin comes first, the prompt words after it
    both = cli(env, "run", SHORT, "--keepalive", "1m", "Answer briefly.", stdin="What is 2+2?")
    assert both.returncode == 0 and both.stdout.strip()

    bad = cli(env, "run", SMOL, "--think=loud", "hi")
    assert bad.returncode == 1 and bad.stderr.startswith("Error: invalid value for --think")
    thinking = cli(env, "run", SMOL, "--think", "hi")
    assert thinking.returncode == 1 and "does not support thinking" in thinking.stderr


def test_version_flags(env: dict[str, str], server: ServerProcess) -> None:
    from trillama import __version__

    for flag in ("--version", "-v"):
        out = cli(env, flag)
        assert out.returncode == 0
        assert out.stdout == f"trillama version is {__version__}\n"
    offline = cli({**env, "OLLAMA_HOST": "127.0.0.1:9"}, "--version")
    assert offline.stdout == ("Warning: could not connect to a running Ollama instance\n"
                              f"Warning: client version is {__version__}\n")


def test_show_and_each_flag(env: dict[str, str]) -> None:
    out = cli(env, "show", SMOL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("  Model\n    architecture        llama\n    parameters          134.52M\n")
    for section in ("  Capabilities\n    completion\n    tools\n", "  Parameters\n    stop    \"<|im_start|>\"",
                    "  License\n    Apache License\n    Version 2.0, January 2004\n    ...\n"):
        assert section in out.stdout, out.stdout
    assert "Metadata" not in out.stdout
    assert "  Metadata\n" in cli(env, "show", SMOL, "--verbose").stdout
    assert cli(env, "show", SMOL, "--license").stdout.lstrip().startswith("Apache License")
    assert cli(env, "show", SMOL, "--modelfile").stdout.startswith("# Modelfile generated by")
    assert 'stop' in cli(env, "show", SMOL, "--parameters").stdout
    assert cli(env, "show", SMOL, "--template").stdout.startswith("{{- if or .System .Tools }}")
    assert cli(env, "show", SMOL, "--system").returncode == 0
    both = cli(env, "show", SMOL, "--license", "--system")
    assert both.returncode == 1
    assert both.stderr == ("Error: only one of '--license', '--modelfile', '--parameters', '--system', or "
                           "'--template' can be specified\n")
    missing = cli(env, "show", "no-such-model")
    assert missing.returncode == 1 and missing.stderr.startswith("Error: ") and "not found" in missing.stderr


def test_ps_then_stop_and_other_commands(env: dict[str, str], server: ServerProcess, tmp_path: Path) -> None:
    with server.client() as http:  # load it for ten minutes
        assert http.post("/api/generate", json={"model": SMOL, "keep_alive": "10m"}).status_code == 200
    ps = cli(env, "ps")
    assert ps.stdout.splitlines()[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert re.search(r"^smollm2:135m\s+[0-9a-f]{12}\s+.*100% CPU.*minutes from now", ps.stdout, re.M), ps.stdout
    stop = cli(env, "stop", SMOL)
    assert stop.returncode == 0 and stop.stdout == ""
    deadline = time.monotonic() + 30
    while SMOL in cli(env, "ps").stdout and time.monotonic() < deadline:
        time.sleep(0.5)
    assert SMOL not in cli(env, "ps").stdout
    unknown = cli(env, "stop", "no-such-model")
    assert unknown.returncode == 1 and unknown.stderr == 'Error: couldn\'t find model "no-such-model" to stop\n'

    assert cli(env, "cp", SMOL, "copied:one").stdout == "copied 'smollm2:135m' to 'copied:one'\n"
    listed = cli(env, "list")
    assert listed.stdout.splitlines()[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert "copied:one" in listed.stdout
    assert cli(env, "rm", "copied:one").stdout == "deleted 'copied:one'\n"
    gone = cli(env, "rm", "copied:one")
    assert gone.returncode == 1 and gone.stderr.startswith("Error: ") and "not found" in gone.stderr

    (tmp_path / "Modelfile").write_text(f"FROM {SMOL}\nSYSTEM Be terse.\n")
    made = cli(env, "create", "terse", "-f", "Modelfile", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[-1] == "success" and "writing manifest" in made.stdout
    quant = cli(env, "create", "terse-q", "-f", "Modelfile", "--quantize", "q4_K_M", cwd=tmp_path)
    assert quant.returncode == 1 and quant.stderr.startswith("Error: ") and "quantiz" in quant.stderr
    nofile = cli(env, "create", "x", "-f", "Nope", cwd=tmp_path)
    assert nofile.returncode == 1 and nofile.stderr == "Error: open Nope: no such file or directory\n"

    down = cli({**env, "OLLAMA_HOST": "127.0.0.1:9"}, "list")
    assert down.returncode == 1 and down.stderr.startswith("Error: could not connect")


def test_serve_help_lists_the_environment(env: dict[str, str]) -> None:
    out = cli(env, "serve", "--help")
    assert out.returncode == 0
    assert "Environment Variables:" in out.stdout
    for name in ("OLLAMA_HOST", "OLLAMA_MODELS", "OLLAMA_KEEP_ALIVE", "OLLAMA_NUM_PARALLEL", "OLLAMA_ORIGINS"):
        assert re.search(rf"^\s+{name}\s+\S", out.stdout, re.M), name


def test_launch_prints_config_and_names_what_to_install(env: dict[str, str], server: ServerProcess,
                                                       tmp_path: Path) -> None:
    bare = {**env, "PATH": str(tmp_path / "no-bin") + os.pathsep + os.path.dirname(sys.executable)}
    shown = cli(bare, "launch", "claude", "--model", SMOL, "--config")
    assert shown.returncode == 0, shown.stderr
    assert f"export ANTHROPIC_BASE_URL={server.base_url}\n" in shown.stdout
    # the context launch picks: SmolLM2's trained maximum, too small for Claude Code, and it says so
    assert "Context: 8192 tokens (the model's trained maximum): smollm2:135m-ctx8k" in shown.stdout
    assert "Warning: smollm2:135m's context is too small for Claude Code" in shown.stdout
    assert "claude --model smollm2:135m-ctx8k" in shown.stdout
    with server.client() as http:  # --config only prints: nothing is created
        assert "smollm2:135m-ctx8k" not in {m["name"] for m in http.get("/api/tags").json()["models"]}

    codex = cli(bare, "launch", "codex", "--config")  # no --model: the newest local model
    assert codex.returncode == 0
    assert f'model_providers.trillama.base_url="{server.base_url}/v1"' in codex.stdout
    assert "wire_api" in codex.stdout

    for tool, install in (("claude", "npm install -g @anthropic-ai/claude-code"),
                          ("codex", "npm install -g @openai/codex"),
                          ("opencode", "npm install -g opencode-ai")):
        missing = cli(bare, "launch", tool, "--model", SMOL)
        assert missing.returncode == 1
        assert missing.stderr.startswith(f"Error: {tool} is not installed.")
        assert install in missing.stderr


def test_launch_execs_the_tool_with_the_environment(env: dict[str, str], server: ServerProcess,
                                                    tmp_path: Path) -> None:
    """A stand-in ``claude`` on PATH shows what the real one would be started with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude"
    fake.write_text('#!/bin/sh\necho "args: $*"\necho "base: $ANTHROPIC_BASE_URL"\necho "model: $ANTHROPIC_MODEL"\n')
    fake.chmod(0o755)
    ran = cli({**env, "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}, "launch", "claude", "--model", SMOL,
              "--", "-p", "hello")
    assert ran.returncode == 0, ran.stderr
    derived = f"{SMOL}-ctx8k"  # the model with PARAMETER num_ctx 8192, created for the agent
    assert ran.stdout == f"args: --model {derived} -p hello\nbase: {server.base_url}\nmodel: {derived}\n"
    assert "ANTHROPIC_BASE_URL" in ran.stderr and "Warning:" in ran.stderr  # printed before the exec
    with server.client() as http:
        shown = http.post("/api/show", json={"model": derived}).json()
        assert "num_ctx" in shown["parameters"] and "8192" in shown["parameters"]
    missing = cli({**env, "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}, "launch", "claude", "--model", "nope:1b")
    assert missing.returncode == 1 and "model 'nope:1b' not found" in missing.stderr


# A template that opens a thinking block when asked to think: whatever the model writes then is
# thinking (the bundled model never closes it within a few tokens), which is all the CLI needs.
THINKING_TEMPLATE = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ if .Think }}<think>
{{ end }}"""


def test_thinking_is_shown_or_hidden(env: dict[str, str], server: ServerProcess) -> None:
    """In the session (chat, where the server splits thinking out): a thinking model thinks unless
    told not to, the thinking is framed as ollama frames it, ``--hidethinking`` hides it."""
    with server.client() as http:
        r = http.post("/api/create", json={"model": "thinker", "from": SHORT, "template": THINKING_TEMPLATE,
                                           "stream": False})
        assert r.status_code == 200, r.text
        assert "thinking" in http.post("/api/show", json={"model": "thinker"}).json()["capabilities"]
    child = spawn(env, "run", "thinker")
    try:
        command(child, "Why is the sky blue?", "Thinking...", "\n")
        child.expect_exact(PROMPT)
        assert re.search(r"[A-Za-z]{2,}", child.before)  # the thinking itself, shown
        submit(child, "/set nothink")
        child.expect_exact("Set 'nothink' mode.")
        child.expect_exact(PROMPT)
        submit(child, "Why is the sky blue?")
        child.expect_exact(PROMPT)
        assert "Thinking..." not in child.before and re.search(r"[A-Za-z]{2,}", child.before)
        submit(child, "/bye")
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close()
    child = spawn(env, "run", "thinker", "--hidethinking")
    try:
        child.expect_exact(PROMPT)
        submit(child, "Why is the sky blue?")
        child.expect_exact(PROMPT)
        assert "Thinking..." not in child.before
        submit(child, "/bye")
        child.expect(pexpect.EOF, timeout=30)
    finally:
        child.close()
