"""Claude Code, Codex CLI and opencode, their current releases, through ``trillama launch``.

The real programs (pinned npm releases, installed once per machine under the test cache by
:func:`agent_clients.install`) are started by ``trillama launch`` exactly as a user would start
them, against one real server for the module with ``gemma3:270m`` (32k trained context). Nothing is
set for them but what launch sets, except an output-token cap for test time and the agents'
self-update off (the versions are pinned). gemma3's own template declares no tools and every agent
sends tools, so the test model is gemma3 with a tools template (:data:`GEMMA_TOOLS_TEMPLATE`),
greedy, and ending its answer at the end of a line: a 270M model's answer to a 10,000-token agent
prompt is not worth more, and the agents treat an answer cut by ``max_tokens`` as an error.

Each run must exit 0 with a non-empty answer, and the server's access log must show no response
>= 400 while it ran. A recording proxy between the agents and the server keeps what each agent
sent (in the test's temporary directory only: the prompts are the vendors'), and the protocol
tests at the end replay those requests, changed on purpose: a system message at every position,
an 80k-token prompt against the 32k context, a forced namespaced call, ``n`` = 2.

Time: each agent's first prompt is 7,000-12,500 tokens that the model has to read once (about
40 s each at gemma3's ~275 tokens/s on two quiet cores); later runs of the same agent reuse the
slot's cached prefix and take a second or two. Claude Code's interactive session has a different
system prompt from its ``-p`` runs, so it pays its own read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import attrs
import httpx
import pytest

from agent_clients import GEMMA_TOOLS_TEMPLATE, Exchange, RecordingProxy, install
from conftest import ServerProcess, wait_for

MODEL = "gemma3-agent"
#: what launch derives from it: gemma3's trained context
AGENT_MODEL = "gemma3-agent:ctx32k"
CONTEXT = 32768
#: the output-token caps for test time (the only settings beyond launch's)
TEST_ENV = {
    "CLAUDE_CODE_MAX_OUTPUT_TOKENS": "128",
    "OPENCODE_EXPERIMENTAL_OUTPUT_TOKEN_MAX": "128",
    # The versions are pinned: the agents must not update themselves during a test.
    "DISABLE_AUTOUPDATER": "1",
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
}
RUN_TIMEOUT = 900


@attrs.define
class Setup:
    server: ServerProcess
    proxy: RecordingProxy
    records: Path  # where the runs' requests are kept (the test's temporary directory)


@attrs.define
class Run:
    returncode: int
    stdout: str
    stderr: str
    exchanges: list[Exchange]
    access: list[dict[str, Any]]
    seconds: float

    def requests(self, route: str) -> list[dict[str, Any]]:
        return [ex.json for ex in self.exchanges if ex.route == route and isinstance(ex.json, dict)]


def _access_events(server: ServerProcess) -> list[dict[str, Any]]:
    events = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if '"event": "access"' in line:
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def _began(event: dict[str, Any]) -> float:
    """When the request of an access event began (its line is written when it ends), in Unix seconds."""
    ended = datetime.fromisoformat(event["timestamp"]).timestamp()
    return ended - (event.get("total_ms") or 0) / 1000


def _access_since(server: ServerProcess, began: float) -> list[dict[str, Any]]:
    """The access events of the requests that began at ``began`` or later (not those logged since:
    an earlier test's request may write its line after the next test has started)."""
    return [a for a in _access_events(server) if _began(a) >= began]


def _failures(access: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in access if (a.get("status") or 0) >= 400]


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory, seeded_models_dir: Path) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("agents") / "models"
    shutil.copytree(seeded_models_dir, root, copy_function=os.link)
    # Two slots: opencode asks for a title beside its answer; each agent's prefix stays cached.
    server = ServerProcess(root, env={"TRILLAMA_BUNDLED_MODEL": "0", "OLLAMA_NUM_PARALLEL": "2"}).start()
    try:
        with server.client() as client:
            r = client.post("/api/create", json={
                "model": MODEL, "from": "gemma3:270m", "template": GEMMA_TOOLS_TEMPLATE, "stream": False,
                # Greedy answers end at a line end. The cap only stops a line that never ends: it
                # must be long enough for any real first line, since an answer cut by it is
                # "incomplete" to Codex, which then exits 1 (a greedy answer depends on the prompt,
                # and the agents' prompts carry the run's temporary paths).
                "parameters": {"temperature": 0, "stop": ["<end_of_turn>", "\n"], "num_predict": 512}})
            assert r.status_code == 200, r.text
        with RecordingProxy(server.base_url) as proxy:
            yield Setup(server, proxy, tmp_path_factory.mktemp("agent-requests"))
    finally:
        server.stop()


def _environment(setup: Setup, agent: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "OPENAI_", "CLAUDE_", "CODEX_", "OPENCODE_"))}
    env.update(TEST_ENV)
    env.update(HOME=str(home), OLLAMA_HOST=setup.proxy.base_url, NO_COLOR="1",
               PATH=os.pathsep.join([str(install(agent)), os.path.dirname(sys.executable), env.get("PATH", "")]))
    return env


def launch(setup: Setup, agent: str, args: list[str], *, home: Path, cwd: Path, name: str) -> Run:
    """``trillama launch <agent> --model gemma3-agent -- args``, as a user would type it."""
    env = _environment(setup, agent, home)
    began = time.time()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "trillama", "launch", agent, "--model", MODEL, "--", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=RUN_TIMEOUT)
    seconds = time.monotonic() - started
    exchanges = setup.proxy.take()
    setup.proxy.save(setup.records / f"{name}.jsonl", exchanges)
    access = _access_since(setup.server, began)
    print(f"{name}: {seconds:.1f}s, exit {done.returncode}, "
          f"{[(a.get('route'), a.get('status'), a.get('prompt_tokens')) for a in access]}")
    return Run(done.returncode, done.stdout, done.stderr, exchanges, access, seconds)


def _assert_ok(run: Run) -> None:
    assert run.returncode == 0, f"exit {run.returncode}\nstdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert not _failures(run.access), _failures(run.access)
    # launch said what it chose before starting the agent
    assert f"(model {AGENT_MODEL})" in run.stderr and f"Context: {CONTEXT} tokens" in run.stderr


PAD = "The quick brown fox jumps over the lazy dog while the agent reads one more line of its log. "


def _padded(text_tokens: int = 80_000) -> str:
    """About ``text_tokens`` tokens of text (gemma reads this sentence as ~20 tokens)."""
    return PAD * (text_tokens // 20)


def _post(setup: Setup, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(setup.server.base_url + path, json=body, headers=headers or {}, timeout=RUN_TIMEOUT)


def _claude_request(run: Run) -> tuple[dict[str, Any], dict[str, str]]:
    ex = [ex for ex in run.exchanges if ex.route == "/v1/messages"][0]  # the agent's first request
    headers = {k: v for k, v in ex.headers.items() if k.startswith("anthropic-")}
    return json.loads(ex.body), headers


def _count_body(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("model", "messages", "system", "tools", "tool_choice", "thinking") if k in body}


# ----------------------------------------------------------------------------- Claude Code
@pytest.fixture(scope="module")
def claude_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("claude-home"), tmp_path_factory.mktemp("claude-work")


@pytest.fixture(scope="module")
def claude_first(agents: Setup, claude_dirs: tuple[Path, Path]) -> Run:
    home, work = claude_dirs
    return launch(agents, "claude", ["-p", "Say hi"], home=home, cwd=work, name="claude-print")


def test_claude_code_print_mode(claude_first: Run) -> None:
    _assert_ok(claude_first)
    assert claude_first.stdout.strip()
    sent = claude_first.requests("/v1/messages")[0]
    # What makes this Claude Code's default request: a system message inside messages, tools,
    # adaptive thinking, context management, and a beta query string.
    assert any(m["role"] == "system" for m in sent["messages"])
    assert sent["tools"] and sent["thinking"]["type"] == "adaptive" and "context_management" in sent
    assert any("?beta=true" in ex.path for ex in claude_first.exchanges)


def test_claude_code_stream_json(agents: Setup, claude_dirs: tuple[Path, Path], claude_first: Run) -> None:
    home, work = claude_dirs
    run = launch(agents, "claude", ["-p", "Say hi", "--output-format", "stream-json", "--verbose"],
                 home=home, cwd=work, name="claude-stream-json")
    _assert_ok(run)
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    (result,) = [line for line in lines if line.get("type") == "result"]
    assert result["subtype"] == "success" and not result["is_error"] and result["result"].strip()
    assert any(line.get("type") == "assistant" for line in lines)


def test_claude_code_continues_the_conversation(agents: Setup, claude_dirs: tuple[Path, Path],
                                                claude_first: Run) -> None:
    home, work = claude_dirs
    run = launch(agents, "claude", ["-c", "-p", "And once more"], home=home, cwd=work, name="claude-continue")
    _assert_ok(run)
    assert run.stdout.strip()
    sent = run.requests("/v1/messages")[0]
    roles = [m["role"] for m in sent["messages"]]
    assert "assistant" in roles and roles[-1] == "user"  # the earlier exchange, then the new prompt
    # the earlier conversation is the cached prefix: only the new turn is read
    answered = [a for a in run.access if a.get("route") == "/v1/messages"][0]
    assert answered["prompt_tokens"] < 1000


def test_replayed_claude_request_streams_and_counts_what_it_reads(agents: Setup, claude_first: Run) -> None:
    body, headers = _claude_request(claude_first)
    r = _post(agents, "/v1/messages?beta=true", body, headers)
    assert r.status_code == 200, r.text
    events = [line[7:] for line in r.text.splitlines() if line.startswith("event: ") and line != "event: ping"]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    usage = [json.loads(line[6:]) for line in r.text.splitlines() if '"message_delta"' in line][0]["usage"]
    counted = _post(agents, "/v1/messages/count_tokens?beta=true", _count_body(body), headers)
    assert counted.status_code == 200, counted.text
    assert counted.json()["input_tokens"] == usage["input_tokens"] + usage["cache_read_input_tokens"]


def test_system_messages_at_every_position_are_read(agents: Setup, claude_first: Run) -> None:
    """Claude Code's own mid-conversation system message, moved to every position of a longer
    conversation and last: never an error, and its text is always part of what the model reads."""
    body, headers = _claude_request(claude_first)
    system = next(m for m in body["messages"] if m["role"] == "system")
    turns = [m for m in body["messages"] if m["role"] != "system"] + [
        {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "What is in this folder?"}]
    without = _post(agents, "/v1/messages/count_tokens", {**_count_body(body), "messages": turns}, headers)
    assert without.status_code == 200, without.text
    text_tokens = len(json.dumps(system["content"])) // 8
    for position in range(len(turns) + 1):
        messages = turns[:position] + [system] + turns[position:]
        counted = _post(agents, "/v1/messages/count_tokens", {**_count_body(body), "messages": messages}, headers)
        assert counted.status_code == 200, (position, counted.text)
        assert counted.json()["input_tokens"] >= without.json()["input_tokens"] + text_tokens, position
    # generated, not only counted: a short conversation with a system message in the middle and last
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Colour of grass?"},
             {"role": "system", "content": "Be polite."}]
    r = _post(agents, "/v1/messages", {"model": AGENT_MODEL, "max_tokens": 16, "messages": short})
    assert r.status_code == 200, r.text
    assert r.json()["stop_reason"] in ("end_turn", "max_tokens")


def test_claude_codes_request_over_the_context_is_prompt_too_long(agents: Setup, claude_first: Run) -> None:
    """Claude Code's request with 80k tokens more against the 32k context: Anthropic's own 400
    (streamed or not), never a 500, a hang or a silent cut; count_tokens still counts it."""
    body, headers = _claude_request(claude_first)
    body["messages"][0]["content"].append({"type": "text", "text": _padded()})
    for stream in (False, True):
        r = _post(agents, "/v1/messages", {**body, "stream": stream}, headers)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        match = re.fullmatch(r"prompt is too long: (\d+) tokens > (\d+) maximum", error["message"])
        assert match and int(match[2]) == CONTEXT and 80_000 < int(match[1]) < 110_000, error
    counted = _post(agents, "/v1/messages/count_tokens", _count_body(body), headers)
    assert counted.status_code == 200 and counted.json()["input_tokens"] == int(match[1])


def _answer_text(exchange: Exchange) -> str:
    """The text an Anthropic SSE answer carried."""
    texts = []
    for line in exchange.answer.decode(errors="replace").splitlines():
        if line.startswith("data: "):
            data = json.loads(line[6:])
            delta = data.get("delta") or {}
            if data.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
                texts.append(delta["text"])
    return "".join(texts)


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


#: Claude Code's first-run screens and what a user answers: the default theme, the security
#: notes, and "Yes, I trust this folder" (the second choice; the first one exits).
FIRST_RUN = (("theme", "Choose the text style", ("\r",)),
             ("notes", "Press Enter to continue", ("\r",)),
             ("trust", "Yes, I trust this folder", ("\x1b[B", "\r")))


def test_claude_code_interactive_session(agents: Setup, tmp_path: Path) -> None:
    """A first start in a terminal (a pseudo-terminal rendered by a VT100 emulator): answer the
    first-run screens as a user would, type a prompt, see the answer on the screen, quit."""
    pexpect = pytest.importorskip("pexpect")
    pyte = pytest.importorskip("pyte")
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {**_environment(agents, "claude", home), "TERM": "xterm-256color"}
    began = time.time()
    screen = pyte.Screen(120, 40)
    terminal = pyte.Stream(screen)
    child = pexpect.spawn(sys.executable, ["-m", "trillama", "launch", "claude", "--model", MODEL], env=env,
                          cwd=str(work), encoding="utf-8", dimensions=(40, 120), timeout=RUN_TIMEOUT)
    done: list[str] = []
    answered = ""
    deadline = time.monotonic() + RUN_TIMEOUT

    def shown() -> str:
        return "\n".join(screen.display)

    try:
        while time.monotonic() < deadline and not answered:
            try:
                child.expect(pexpect.TIMEOUT, timeout=1)
            except pexpect.EOF:
                break
            terminal.feed(child.before or "")
            text = shown()
            step = next(((name, keys) for name, pattern, keys in FIRST_RUN if name not in done and pattern in text),
                        None)
            if step is not None:
                done.append(step[0])
                for key in step[1]:
                    child.send(key)
                    time.sleep(0.3)
            elif "trust" in done and "prompt" not in done and ("for shortcuts" in text or "auto mode" in text):
                done.append("prompt")
                child.send("Say hi")
                time.sleep(0.3)
                child.send("\r")
            elif "prompt" in done:
                finished = [a for a in _access_since(agents.server, began) if a.get("route") == "/v1/messages"]
                asked = [ex for ex in list(agents.proxy.exchanges) if ex.route == "/v1/messages" and ex.answer]
                if finished and asked:
                    answer = _answer_text(asked[-1]).strip()
                    if answer and _squeezed(answer)[:30] in _squeezed(text):
                        answered = answer
        assert answered, f"steps {done}; screen:\n{shown()}"
        child.send("/exit")
        time.sleep(0.3)
        child.send("\r")
        child.expect(pexpect.EOF, timeout=60)
    finally:
        if child.isalive():
            child.terminate(force=True)
    child.close()
    assert child.exitstatus == 0, (child.exitstatus, child.signalstatus, shown())
    access = _access_since(agents.server, began)
    assert not _failures(access), _failures(access)
    agents.proxy.save(agents.records / "claude-interactive.jsonl", agents.proxy.take())


# ----------------------------------------------------------------------------- Codex
@pytest.fixture(scope="module")
def codex_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("codex-home"), tmp_path_factory.mktemp("codex-work")


@pytest.fixture(scope="module")
def codex_first(agents: Setup, codex_dirs: tuple[Path, Path]) -> Run:
    home, work = codex_dirs
    return launch(agents, "codex", ["exec", "--skip-git-repo-check", "Say hi"], home=home, cwd=work,
                  name="codex-exec")


def test_codex_exec(codex_first: Run) -> None:
    _assert_ok(codex_first)
    assert codex_first.stdout.strip()
    sent = codex_first.requests("/v1/responses")[0]
    kinds = {t["type"] for t in sent["tools"]}
    assert {"namespace", "web_search", "function"} <= kinds and sent["store"] is False
    answered = [ex for ex in codex_first.exchanges if ex.route == "/v1/responses"][0]
    assert answered.status == 200


def test_codex_exec_resume(agents: Setup, codex_dirs: tuple[Path, Path], codex_first: Run) -> None:
    home, work = codex_dirs
    run = launch(agents, "codex", ["exec", "--skip-git-repo-check", "resume", "--last", "And once more"],
                 home=home, cwd=work, name="codex-resume")
    _assert_ok(run)
    assert run.stdout.strip()
    sent = run.requests("/v1/responses")[0]
    assert any(item.get("role") == "assistant" for item in sent["input"])  # the whole conversation, resent
    answered = [a for a in run.access if a.get("route") == "/v1/responses"][0]
    assert answered["prompt_tokens"] < 1000  # and read from the slot's cache


def test_replayed_codex_request_calls_a_namespaced_tool_as_codex_expects(agents: Setup, codex_first: Run) -> None:
    codex = codex_first.requests("/v1/responses")[0]
    # Codex's own instructions and tools, but a fixed input: the recorded one names the run's temporary
    # folders, and on some of them the small model filled the forced call's string past any limit.
    codex["input"] = [{"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "Close the agent whose id is agent-7."}]}]
    # the test model's stop at a line end would cut a forced call at the first newline
    r = _post(agents, "/v1/responses", {**codex, "stream": False, "max_output_tokens": 256,
                                       "options": {"stop": ["<end_of_turn>"], "temperature": 0},
                                       "tool_choice": {"type": "function", "namespace": "multi_agent_v1",
                                                       "name": "close_agent"}})
    assert r.status_code == 200, r.text
    calls = [item for item in r.json()["output"] if item["type"] == "function_call"]
    assert calls, json.dumps(r.json()["output"])
    assert (calls[0]["name"], calls[0]["namespace"]) == ("close_agent", "multi_agent_v1")
    assert isinstance(json.loads(calls[0]["arguments"]), dict)
    assert r.headers["X-Trillama-Ignored-Tools"] == "web_search"  # the hosted tool, left out and said so


def test_codexs_request_over_the_context_is_context_length_exceeded(agents: Setup, codex_first: Run) -> None:
    codex = codex_first.requests("/v1/responses")[0]
    codex["input"].append({"type": "message", "role": "user", "content": [{"type": "input_text", "text": _padded()}]})
    r = _post(agents, "/v1/responses", codex)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("context_length_exceeded", "input",
                                                              "invalid_request_error")
    assert f"context window is {CONTEXT}" in error["message"]


# ----------------------------------------------------------------------------- opencode
@pytest.fixture(scope="module")
def opencode_first(agents: Setup, tmp_path_factory: pytest.TempPathFactory) -> Run:
    home, work = tmp_path_factory.mktemp("opencode-home"), tmp_path_factory.mktemp("opencode-work")
    return launch(agents, "opencode", ["run", "Say hi"], home=home, cwd=work, name="opencode-run")


def test_opencode_run(opencode_first: Run) -> None:
    _assert_ok(opencode_first)
    assert opencode_first.stdout.strip()
    sent = opencode_first.requests("/v1/chat/completions")
    assert any(r.get("tools") for r in sent)


def test_replayed_opencode_request_with_n_gets_one_choice(agents: Setup, opencode_first: Run) -> None:
    opencode = next(b for b in opencode_first.requests("/v1/chat/completions") if b.get("tools"))
    r = _post(agents, "/v1/chat/completions", {**opencode, "stream": False, "n": 2, "max_tokens": 16})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 1


def test_opencodes_request_over_the_context_is_context_length_exceeded(agents: Setup, opencode_first: Run) -> None:
    opencode = next(b for b in opencode_first.requests("/v1/chat/completions") if b.get("tools"))
    opencode["messages"].append({"role": "user", "content": _padded()})
    r = _post(agents, "/v1/chat/completions", opencode)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert f"maximum context length is {CONTEXT} tokens" in r.json()["error"]["message"]


def test_a_native_prompt_over_the_context_says_both_numbers_and_how_to_raise_it(agents: Setup) -> None:
    r = _post(agents, "/api/chat", {"model": AGENT_MODEL, "messages": [{"role": "user", "content": _padded()}],
                                   "stream": False})
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    assert message.startswith("the prompt is longer than the context length: ")  # Ollama's words first
    assert f"the model's context is {CONTEXT} tokens" in message and "trained maximum" in message
    assert re.search(r"length: \d{5,} tokens", message)


# ----------------------------------------------------------------------------- bad input, small requests
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_a_forced_call_cut_by_max_tokens_leaves_no_markup(agents: Setup) -> None:
    r = _post(agents, "/v1/messages", {"model": AGENT_MODEL, "max_tokens": 4, "tools": [WEATHER],
                                       "tool_choice": {"type": "tool", "name": "get_weather"},
                                       "messages": [{"role": "user", "content": "Weather in Paris?"}]})
    assert r.status_code == 200, r.text
    assert r.json()["stop_reason"] == "max_tokens"
    assert "tool_call" not in json.dumps(r.json()["content"])
    r = _post(agents, "/v1/responses", {"model": AGENT_MODEL, "max_output_tokens": 4, "input": "Weather in Paris?",
                                       "tools": [{"type": "function", "name": "get_weather",
                                                  "parameters": WEATHER["input_schema"]}],
                                       "tool_choice": "required"})
    assert r.status_code == 200, r.text
    assert "tool_call" not in json.dumps(r.json()["output"])


def test_a_full_context_ends_the_answer_with_model_context_window_exceeded(agents: Setup) -> None:
    body = {"model": AGENT_MODEL, "max_tokens": 2000, "options": {"num_ctx": 96, "stop": []},
            "messages": [{"role": "user", "content": "Count from 1 to 500, one number per line."}]}
    r = _post(agents, "/v1/messages", body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["stop_reason"] == "model_context_window_exceeded", answer
    usage = answer["usage"]
    # every token but the last one written was read into the 96-token context
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["output_tokens"] - 1 <= 96
    r = _post(agents, "/v1/messages", {**body, "max_tokens": 5})
    assert r.json()["stop_reason"] == "max_tokens"


def test_unknown_tool_and_block_types_are_the_protocols_400s(agents: Setup) -> None:
    hi = [{"role": "user", "content": "Hi"}]
    r = _post(agents, "/v1/messages", {"model": AGENT_MODEL, "max_tokens": 8,
                                       "messages": [{"role": "user", "content": [{"type": "hologram", "data": "x"}]}]})
    assert r.status_code == 400
    assert r.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": (
        "messages.0.content.0: Input tag 'hologram' found using 'type' does not match any of the expected tags: "
        "'text', 'image', 'document', 'search_result', 'tool_result'")}}
    r = _post(agents, "/v1/messages", {"model": AGENT_MODEL, "max_tokens": 8, "messages": hi,
                                       "tools": [{"type": "hologram_2030", "name": "h"}]})
    assert r.status_code == 400 and "tools.0.type" in r.json()["error"]["message"]
    r = _post(agents, "/v1/messages", {"model": AGENT_MODEL, "max_tokens": 8, "messages": hi,
                                       "tools": [WEATHER, {"type": "web_fetch_20250910", "name": "web_fetch"}]})
    assert r.status_code == 200 and r.headers["X-Trillama-Ignored-Tools"] == "web_fetch"
    r = _post(agents, "/v1/responses", {"model": AGENT_MODEL, "input": "Hi", "tools": [{"type": "hologram"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].type"
    r = _post(agents, "/v1/responses", {"model": AGENT_MODEL, "input": [{"type": "hologram_call"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0].type"


def test_custom_tools_come_back_as_custom_tool_calls(agents: Setup) -> None:
    tool = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
            "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch" /(.|\\n)*/'}}
    # the test model's stop at a line end would cut a forced call at the first newline
    r = _post(agents, "/v1/responses", {"model": AGENT_MODEL, "input": "Create hello.txt", "tools": [tool],
                                       "tool_choice": {"type": "custom", "name": "apply_patch"},
                                       "max_output_tokens": 256, "temperature": 0,
                                       "options": {"stop": ["<end_of_turn>"]}})
    assert r.status_code == 200, r.text
    calls = [item for item in r.json()["output"] if item["type"] == "custom_tool_call"]
    assert calls, json.dumps(r.json()["output"])
    assert calls[0]["name"] == "apply_patch" and isinstance(calls[0]["input"], str)
    # and sent back with its output, it is part of the conversation
    r = _post(agents, "/v1/responses", {"model": AGENT_MODEL, "tools": [tool], "max_output_tokens": 8, "input": [
        {"type": "message", "role": "user", "content": "Create hello.txt"}, calls[0],
        {"type": "custom_tool_call_output", "call_id": calls[0]["call_id"], "output": "Done."}]})
    assert r.status_code == 200, r.text


def test_version_is_the_ollama_api_level_with_trillamas_own_beside_it(agents: Setup) -> None:
    from trillama import __version__

    answer = httpx.get(agents.server.base_url + "/api/version").json()
    assert re.fullmatch(r"\d+\.\d+\.\d+", answer["version"]) and tuple(map(int, answer["version"].split("."))) >= (0, 33, 0)
    assert answer["trillama_version"] == __version__


def test_num_ctx_beyond_the_trained_context_is_logged_and_shown(agents: Setup) -> None:
    with agents.server.client() as client:
        r = client.post("/api/create", json={"model": "smollm2-wide", "from": "smollm2:135m",
                                             "parameters": {"num_ctx": 65536}, "stream": False})
        assert r.status_code == 200, r.text
        r = client.post("/api/generate", json={"model": "smollm2-wide", "prompt": "Hi", "stream": False,
                                               "options": {"num_predict": 1}, "keep_alive": "1m"})
        assert r.status_code == 200, r.text
        (loaded,) = [m for m in client.get("/api/ps").json()["models"] if m["name"] == "smollm2-wide:latest"]
        assert loaded["context_length"] == 8192  # the effective value
        client.post("/api/generate", json={"model": "smollm2-wide", "keep_alive": 0})
        warning = wait_for(lambda: [json.loads(line) for line in agents.server.log_path.read_text().splitlines()
                                    if '"num_ctx_beyond_trained_context"' in line])
        assert warning[0]["asked"] == 65536 and warning[0]["effective"] == 8192
        assert warning[0]["level"] == "warning"
