"""The CLI's pieces that need no server: word wrap, answers with thinking, stats, ``show`` layout,
``--think`` values, the REPL's parsing of its own commands, and what ``launch`` sets up per tool."""

from __future__ import annotations

import io
import json
import re
import signal

import pytest

from trillama.cli import launch
from trillama.cli.answer import RunOptions
from trillama.cli.commands import CLIError
from trillama.cli.run import hear_ctrl_c, parse_think
from trillama.cli.showinfo import format_show, human_number
from trillama.cli.termout import AnswerPrinter, WordWrap, render_tool_calls, summary_lines


def screen(raw: str) -> list[str]:
    """Play the output on a tiny terminal that knows the two escapes word wrap uses."""
    lines, col = [""], 0
    i = 0
    while i < len(raw):
        m = re.match(r"\x1b\[(\d*)([DK])", raw[i:])
        if m:
            if m.group(2) == "D":
                col -= int(m.group(1) or 1)
            else:
                lines[-1] = lines[-1][:col]
            i += len(m.group(0))
            continue
        ch = raw[i]
        if ch == "\n":
            lines.append("")
            col = 0
        else:
            line = lines[-1].ljust(col)
            lines[-1] = line[:col] + ch + line[col + 1:]
            col += 1
        i += 1
    return lines


def test_word_wrap_breaks_between_words_before_the_margin():
    out = io.StringIO()
    wrap = WordWrap(out, width=30)
    text = "the quick brown fox jumps over the lazy dog and keeps running far away from home"
    for piece in re.findall(r".{1,3}", text, re.S):  # streamed in small pieces, as tokens come
        wrap.write(piece)
    lines = screen(out.getvalue())
    assert all(len(line) <= 25 for line in lines), lines
    assert " ".join(line.strip() for line in lines).split() == text.split()
    assert len(lines) > 3


def test_word_wrap_off_passes_text_through():
    out = io.StringIO()
    WordWrap(out, width=20, enabled=False).write("a " * 30)
    assert out.getvalue() == "a " * 30


def test_a_word_longer_than_the_line_is_broken():
    out = io.StringIO()
    WordWrap(out, width=20).write("x" * 50)
    assert all(len(line) <= 20 for line in screen(out.getvalue()))
    assert "".join(screen(out.getvalue())) == "x" * 50


def test_thinking_is_framed_and_can_be_hidden():
    out = io.StringIO()
    printer = AnswerPrinter(out, wordwrap=False, plain=True)
    printer.feed("", thinking="Let me see.")
    printer.feed("Four.")
    assert out.getvalue() == "Thinking...\nLet me see.\n...done thinking.\n\nFour."
    assert printer.thinking == "Let me see." and printer.content == "Four."

    hidden = io.StringIO()
    printer = AnswerPrinter(hidden, wordwrap=False, hide_thinking=True, plain=True)
    printer.feed("", thinking="Let me see.")
    printer.feed("Four.")
    assert hidden.getvalue() == "Four."


def test_tool_calls_are_named_as_ollama_names_them():
    calls = [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]
    assert render_tool_calls(calls, plain=True) == (
        "  Model called a non-existent function 'get_weather()' with arguments: {\"city\":\"Oslo\"}")


def test_verbose_summary_lines():
    lines = summary_lines({"total_duration": 1_500_000_000, "load_duration": 12_300_000,
                           "prompt_eval_count": 26, "prompt_eval_duration": 130_000_000,
                           "eval_count": 259, "eval_duration": 4_200_000_000})
    assert lines == [
        "total duration:       1.5s",
        "load duration:        12.3ms",
        "prompt eval count:    26 token(s)",
        "prompt eval duration: 130ms",
        "prompt eval rate:     200.00 tokens/s",
        "eval count:           259 token(s)",
        "eval duration:        4.2s",
        "eval rate:            61.67 tokens/s",
    ]
    assert summary_lines({"eval_count": 0}) == []


SHOW = {
    "license": "Apache License\nVersion 2.0\nmore\n",
    "system": "Be brief.",
    "parameters": 'stop                           "<|im_start|>"\nstop                           "<|im_end|>"',
    "details": {"parameter_size": "134.52M", "quantization_level": "Q4_1", "family": "llama"},
    "model_info": {"general.architecture": "llama", "llama.context_length": 8192,
                   "llama.embedding_length": 576, "general.parameter_count": 134515008,
                   "tokenizer.ggml.tokens": ["a", "b", "c", "d", "e", "f"]},
    "capabilities": ["completion", "tools"],
}


def test_show_sections_as_ollama_lays_them_out():
    assert format_show(SHOW) == """\
  Model
    architecture        llama
    parameters          134.52M
    context length      8192
    embedding length    576
    quantization        Q4_1

  Capabilities
    completion
    tools

  Parameters
    stop    "<|im_start|>"
    stop    "<|im_end|>"

  System
    Be brief.

  License
    Apache License
    Version 2.0
    ...

"""


def test_show_verbose_adds_metadata():
    text = format_show(SHOW, verbose=True)
    assert "  Metadata\n" in text
    assert re.search(r"    general\.parameter_count\s+134515008\n", text)
    assert "[a b c ...+3 more]" in text


def test_human_number():
    assert human_number(134515008) == "134.52M"
    assert human_number(268_000_000) == "268M"


@pytest.mark.parametrize("value,expected", [(None, None), ("", True), ("true", True), ("false", False),
                                            ("high", "high"), ("max", "max")])
def test_think_values(value, expected):
    assert parse_think(value) == expected


def test_bad_think_value_is_refused():
    with pytest.raises(CLIError, match="invalid value for --think"):
        parse_think("loud")


def test_run_options_body():
    opts = RunOptions(model="m", options={"num_predict": 3}, format="json", think=False, keep_alive="1m")
    assert opts.body() == {"model": "m", "format": "json", "options": {"num_predict": 3}, "think": False,
                           "keep_alive": "1m"}
    assert RunOptions(model="m").body() == {"model": "m"}
    schema = RunOptions(model="m", format='{"type": "object"}').body()["format"]
    assert schema == {"type": "object"}  # a schema given as text is sent as JSON
    with pytest.raises(CLIError, match="invalid format"):
        RunOptions(model="m", format="{nope").body()


# ----------------------------------------------------------------------------- the REPL's commands
class _Stub:
    """A REPL fed lines from a list, its HTTP client never used by the commands tested here."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)
        self.prompts: list[str] = []

    def read(self, prompt: str, alt: bool) -> str:
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


def _repl(lines: list[str], monkeypatch):
    from trillama.cli.repl import Repl

    stub = _Stub(lines)
    repl = Repl(client=None, opts=RunOptions(model="m"), read=stub.read)  # type: ignore[arg-type]
    sent: list[str] = []
    monkeypatch.setattr(repl, "_send", sent.append)
    return repl, stub, sent


def test_repl_parameters_system_and_multiline(monkeypatch, capsys):
    repl, stub, sent = _repl([
        "/set parameter num_predict 8",
        "/set parameter stop <a> <b>",
        "/set parameter num_predict many",
        '/set system """You are',
        'a pirate."""',
        '"""first line',
        "second line",
        'third"""',
        '"""one line"""',
        "/set format json",
        "/set noformat",
        "/set nowordwrap",
        "/set bogus",
        "/nope",
        "/clear",
        "/bye",
        "never read",
    ], monkeypatch)
    assert repl.run() == 0
    out = capsys.readouterr().out
    assert "Set parameter 'num_predict' to '8'" in out
    assert "Set parameter 'stop' to '<a>, <b>'" in out
    assert 'Couldn\'t set parameter: "invalid int value [many]"' in out
    assert repl.opts.options == {"num_predict": 8, "stop": ["<a>", "<b>"]}
    assert repl.opts.system == "You are\na pirate."
    assert sent == ["first line\nsecond line\nthird", "one line"]
    assert stub.prompts[4] == "... " and stub.prompts[6:8] == ["... ", "... "]
    assert "Set format to 'json' mode." in out and "Disabled format." in out and repl.opts.format == ""
    assert "Set 'nowordwrap' mode." in out and repl.opts.wordwrap is False
    assert "Unknown command '/set bogus'. Type /? for help" in out
    assert "Unknown command '/nope'. Type /? for help" in out
    assert "Cleared session context" in out
    assert repl.opts.messages == [{"role": "system", "content": "You are\na pirate."}]
    assert stub.lines == ["never read"]


def test_repl_help_goes_to_stderr(monkeypatch, capsys):
    repl, _, _ = _repl(["/?", "/? shortcuts", "/help set", "/? show", "/set parameter"], monkeypatch)
    repl.run()
    err = capsys.readouterr().err
    assert "  /? shortcuts    Help for keyboard shortcuts" in err
    assert 'Use """ to begin a multi-line message.' in err
    assert "  Ctrl + c            Stop the model from responding" in err
    assert "  /set nohistory         Disable history" in err
    assert "  /show template     Show prompt template" in err
    assert "  /set parameter num_ctx <int>          Set the context size" in err


# ----------------------------------------------------------------------------- launch
BASE = "http://127.0.0.1:11434"


def test_claude_is_pointed_at_the_anthropic_route():
    plan = launch.plan_for("claude", "qwen3:8b", BASE + "/")
    env = dict(plan.env)
    assert env["ANTHROPIC_BASE_URL"] == BASE
    assert env["ANTHROPIC_API_KEY"] == "" and env["ANTHROPIC_AUTH_TOKEN"]
    for key in ("ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
                "ANTHROPIC_DEFAULT_HAIKU_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL"):
        assert env[key] == "qwen3:8b"
    assert plan.argv == ("claude", "--model", "qwen3:8b")


def test_codex_gets_a_responses_provider_on_the_command_line():
    plan = launch.plan_for("codex", "qwen3:8b", BASE, ("--full-auto",))
    argv = list(plan.argv)
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]
    assert 'model_provider="trillama"' in overrides
    assert f'model_providers.trillama.base_url="{BASE}/v1"' in overrides
    assert 'model_providers.trillama.wire_api="responses"' in overrides
    assert argv[-3:] == ["-m", "qwen3:8b", "--full-auto"]
    assert dict(plan.env)["OPENAI_API_KEY"]
    import tomllib

    for override in overrides:  # each is a valid TOML assignment, as codex parses them
        key, _, value = override.partition("=")
        assert tomllib.loads(f"x = {value}")["x"]


def test_opencode_gets_an_inline_openai_compatible_provider():
    plan = launch.plan_for("opencode", "qwen3:8b", BASE)
    config = json.loads(dict(plan.env)["OPENCODE_CONFIG_CONTENT"])
    provider = config["provider"]["trillama"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == BASE + "/v1"
    assert "qwen3:8b" in provider["models"]
    assert config["model"] == "trillama/qwen3:8b"
    assert plan.argv == ("opencode",)


def test_rendered_plan_is_shell():
    text = launch.plan_for("claude", "m", BASE).render()
    assert "  export ANTHROPIC_BASE_URL=http://127.0.0.1:11434\n" in text
    assert "  export ANTHROPIC_API_KEY=''\n" in text
    assert text.endswith("Command:\n  claude --model m\n")


def test_binary_found_on_path_or_in_the_install_location(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    claude = launch.INTEGRATIONS["claude"]
    assert launch.find_binary(claude, path=str(tmp_path / "empty")) is None
    local = tmp_path / ".local" / "bin" / "claude"
    local.parent.mkdir(parents=True)
    local.write_text("#!/bin/sh\n")
    local.chmod(0o755)
    assert launch.find_binary(claude, path=str(tmp_path / "empty")) == str(local)


def test_create_uploads_the_files_a_modelfile_names_and_sends_the_rest_as_fields(tmp_path):
    """The server never reads a path of ours: local GGUFs go up as blobs (once), names stay names."""
    import hashlib

    import httpx

    from trillama.cli.create import create_request

    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.gguf").write_bytes(b"GGUF model bytes")
    (tmp_path / "lora.gguf").write_bytes(b"GGUF adapter bytes")
    have = "sha256:" + hashlib.sha256(b"GGUF adapter bytes").hexdigest()
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.method == "HEAD":
            return httpx.Response(200 if request.url.path.endswith(have) else 404)
        return httpx.Response(201)

    text = ('FROM ./weights\nADAPTER lora.gguf\nFROM llama3.2\nSYSTEM """Be terse."""\n'
            "PARAMETER temperature 0.5\nPARAMETER stop <|end|>\nMESSAGE user hi\nLICENSE MIT\n")
    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://server") as client:
        body = create_request(client, "mine", text, tmp_path, say=lambda _: None)
    model = "sha256:" + hashlib.sha256(b"GGUF model bytes").hexdigest()
    assert body == {
        "model": "mine", "from": "llama3.2", "files": {"model.gguf": model}, "adapters": {"lora.gguf": have},
        "system": "Be terse.", "license": ["MIT"], "parameters": {"temperature": 0.5, "stop": ["<|end|>"]},
        "messages": [{"role": "user", "content": "hi"}],
    }
    # the adapter the server already had is not sent again; the model file is
    assert ("POST", f"/api/blobs/{model}") in seen and ("POST", f"/api/blobs/{have}") not in seen
    assert not any(str(tmp_path) in path for _, path in seen)


def test_run_hears_ctrl_c_when_started_with_sigint_ignored() -> None:
    """A background job of a non-interactive shell starts with SIGINT ignored; `run` takes it back."""
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        hear_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)

        def own(signum, frame):  # a handler installed on purpose stays
            pass

        signal.signal(signal.SIGINT, own)
        hear_ctrl_c()
        assert signal.getsignal(signal.SIGINT) is own
    finally:
        signal.signal(signal.SIGINT, before)
