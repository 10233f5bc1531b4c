"""``trillama launch claude|codex|opencode``: point a coding agent at this server and start it.

As ``ollama launch`` (its cmd/launch/ read to learn what each tool needs): Claude Code speaks
Anthropic's Messages API and is aimed with ``ANTHROPIC_BASE_URL`` and its model variables; Codex
gets a custom model provider on the OpenAI Responses API, passed as ``-c`` overrides so the user's
``~/.codex/config.toml`` is left untouched; opencode gets an OpenAI-compatible provider as inline
config in ``OPENCODE_CONFIG_CONTENT``. The plan (environment and command) is printed; it is then
applied by exec'ing the tool, or, when the tool is not installed, the exact install commands are
printed and the exit status is 1. ``--config`` only prints.

The context comes first: every agent's first request is thousands of tokens (Claude Code's 12k-23k)
while a model's default context is 4096. So launch reads the model's trained context and its own
``num_ctx`` (``/api/show``) and aims for :data:`AGENT_CONTEXT` tokens, at most the trained maximum;
when the model's Modelfile does not already give that much, it creates a derived model with
``PARAMETER num_ctx`` (``gemma3:270m`` → ``gemma3:270m-ctx32k``: a manifest, no copy of the weights)
and points the agent at it. It says what it chose, warns before starting the agent when the model's
maximum is below what the agent needs, and tells the agent the real window (Claude Code's
``CLAUDE_CODE_MAX_CONTEXT_TOKENS``, Codex's ``model_context_window``, opencode's ``limit``) so its
own compaction starts in time, with an answer length that fits (:func:`output_cap`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import attrs
import httpx

__all__ = ["Plan", "Integration", "INTEGRATIONS", "ContextChoice", "plan_for", "find_binary", "register",
           "choose_context", "fit_context", "derived_name", "output_cap", "AGENT_CONTEXT"]

PROVIDER = "trillama"
API_KEY = "trillama"  # a server without keys ignores it; the tools insist on having one


def api_key() -> str:
    """The key the agent sends: ``OLLAMA_API_KEY`` when set (a server with keys), else a placeholder."""
    return os.environ.get("OLLAMA_API_KEY", "").strip() or API_KEY


def _shown(value: str) -> str:
    """``value`` for a printed plan: the key stays out of terminals and logs, as ``$OLLAMA_API_KEY``."""
    key = api_key()
    quoted = shlex.quote(value)
    if key == API_KEY or key not in quoted:
        return quoted
    return quoted.replace(key, "'\"$OLLAMA_API_KEY\"'" if quoted.startswith("'") else '"$OLLAMA_API_KEY"')


@attrs.frozen
class Plan:
    """What starting one tool means: its environment additions and its command line."""

    env: tuple[tuple[str, str], ...]
    argv: tuple[str, ...]

    def render(self) -> str:
        lines = ["Environment:"]
        lines += [f"  export {key}={_shown(value)}" for key, value in self.env]
        lines += ["", "Command:", "  " + shlex.join(self.argv)]
        return "\n".join(lines) + "\n"


@attrs.frozen
class Integration:
    name: str
    title: str
    binary: str
    fallbacks: tuple[str, ...]  # install locations (relative to $HOME) that may not be on PATH
    install: tuple[str, ...]  # commands that install it, any one will do
    plan: Callable[[str, str, tuple[str, ...], int], Plan]
    #: the context below which the agent cannot work at all: its first request plus room to answer
    min_context: int = 16384
    #: why (said when the model's trained context is smaller)
    needs: str = ""


#: The context launch aims for: agents' conversations grow quickly past their first request (tool
#: output, file contents), and 64k is what Ollama recommends for them. Less when the model's
#: trained context is smaller; ``--context`` asks for another size.
AGENT_CONTEXT = 65536

#: Environment values a user may already have set; theirs win over launch's defaults.
USER_FIRST = ("CLAUDE_CODE_MAX_OUTPUT_TOKENS",)


#: the context a model without ``PARAMETER num_ctx`` gets from a server with default settings
#: (``OLLAMA_CONTEXT_LENGTH``), as far as a client can know
DEFAULT_SERVER_CONTEXT = 4096


@attrs.frozen
class ContextChoice:
    """The model an agent gets and its context, and what to tell the user about them."""

    model: str
    num_ctx: int
    note: str
    warning: str = ""


def output_cap(num_ctx: int) -> int:
    """The answer length an agent should ask for: a quarter of the context, at most 32000 (what the
    agents ask by default; a small model asked for 32000 tokens rambles for minutes, and an agent
    that believes it may write 32000 tokens into a 32k context compacts at once)."""
    return max(1024, min(32000, num_ctx // 4))


def _claude(model: str, base: str, extra: tuple[str, ...], num_ctx: int = 0) -> Plan:
    window = (("CLAUDE_CODE_MAX_CONTEXT_TOKENS", str(num_ctx)),
              ("CLAUDE_CODE_MAX_OUTPUT_TOKENS", str(output_cap(num_ctx)))) if num_ctx else ()
    env = (
        ("ANTHROPIC_BASE_URL", base),
        ("ANTHROPIC_API_KEY", ""),
        ("ANTHROPIC_AUTH_TOKEN", api_key()),
        ("ANTHROPIC_MODEL", model),
        ("ANTHROPIC_DEFAULT_OPUS_MODEL", model),
        ("ANTHROPIC_DEFAULT_SONNET_MODEL", model),
        ("ANTHROPIC_DEFAULT_HAIKU_MODEL", model),
        ("CLAUDE_CODE_SUBAGENT_MODEL", model),
        ("CLAUDE_CODE_ATTRIBUTION_HEADER", "0"),
        ("DISABLE_ERROR_REPORTING", "1"),
        ("DISABLE_TELEMETRY", "1"),
        *window,
    )
    return Plan(env, ("claude", "--model", model, *extra))


def codex_overrides(base: str) -> tuple[str, ...]:
    """Codex's ``-c key=value`` overrides (TOML values) for a provider on the Responses API."""
    provider = f"model_providers.{PROVIDER}"
    return (
        f'model_provider="{PROVIDER}"',
        f'{provider}.name="{PROVIDER}"',
        f'{provider}.base_url="{base}/v1"',
        f'{provider}.wire_api="responses"',
        f'{provider}.env_key="OPENAI_API_KEY"',
    )


def _codex(model: str, base: str, extra: tuple[str, ...], num_ctx: int = 0) -> Plan:
    argv: list[str] = ["codex"]
    window = (f"model_context_window={num_ctx}",
              f"model_auto_compact_token_limit={num_ctx * 9 // 10}") if num_ctx else ()
    for override in (*codex_overrides(base), *window):
        argv += ["-c", override]
    argv += ["-m", model, *extra]
    return Plan((("OPENAI_API_KEY", api_key()),), tuple(argv))


def opencode_config(model: str, base: str, num_ctx: int = 0) -> dict[str, Any]:
    """opencode's config: one OpenAI-compatible provider serving ``model``, chosen as the default,
    with the model's context and an answer length that fits in it."""
    entry: dict[str, Any] = {"name": model}
    if num_ctx:
        entry["limit"] = {"context": num_ctx, "output": output_cap(num_ctx)}
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "trillama",
                "options": {"baseURL": f"{base}/v1", "apiKey": api_key()},
                "models": {model: entry},
            }
        },
        "model": f"{PROVIDER}/{model}",
    }


def _opencode(model: str, base: str, extra: tuple[str, ...], num_ctx: int = 0) -> Plan:
    content = json.dumps(opencode_config(model, base, num_ctx), separators=(",", ":"))
    return Plan((("OPENCODE_CONFIG_CONTENT", content),), ("opencode", *extra))


INTEGRATIONS: dict[str, Integration] = {
    i.name: i
    for i in (
        Integration("claude", "Claude Code", "claude", (".local/bin/claude", ".claude/local/claude"),
                    ("curl -fsSL https://claude.ai/install.sh | bash", "npm install -g @anthropic-ai/claude-code"),
                    _claude, 32768, "its first request alone is 12,000-23,000 tokens"),
        Integration("codex", "Codex", "codex", (), ("npm install -g @openai/codex",), _codex,
                    16384, "its first request alone is about 6,500 tokens"),
        Integration("opencode", "OpenCode", "opencode", (".opencode/bin/opencode",),
                    ("curl -fsSL https://opencode.ai/install | bash", "npm install -g opencode-ai"), _opencode,
                    16384, "its first request alone is about 7,500 tokens"),
    )
}


def plan_for(name: str, model: str, base: str, extra: tuple[str, ...] = (), num_ctx: int = 0) -> Plan:
    return INTEGRATIONS[name].plan(model, base.rstrip("/"), extra, num_ctx)


# ----------------------------------------------------------------------------- the context
def _split_name(model: str) -> tuple[str, str]:
    """``repo`` and ``tag`` of a model name (``latest`` when it has none)."""
    slash = model.rfind("/")
    colon = model.rfind(":")
    if colon > slash:
        return model[:colon], model[colon + 1:]
    return model, "latest"


def derived_name(model: str, num_ctx: int) -> str:
    """The name of ``model`` with ``PARAMETER num_ctx num_ctx``: ``gemma3:270m`` → ``gemma3:270m-ctx32k``."""
    repo, tag = _split_name(model)
    size = f"ctx{num_ctx // 1024}k" if num_ctx % 1024 == 0 else f"ctx{num_ctx}"
    return f"{repo}:{size}" if tag == "latest" else f"{repo}:{tag}-{size}"


def _num_ctx_parameter(parameters: str) -> int:
    for line in (parameters or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "num_ctx":
            try:
                return int(value.strip().strip('"'))
            except ValueError:
                return 0
    return 0


def choose_context(integration: Integration, model: str, trained: int, current: int,
                   asked: int | None = None) -> tuple[int, str]:
    """The context to give ``integration`` on ``model`` (trained with ``trained`` tokens, 0 if
    unknown, and already set to ``current`` by its Modelfile, 0 if not), and a warning when that
    is less than the agent needs."""
    target = asked or AGENT_CONTEXT
    warning = ""
    if trained and target > trained:
        if asked:
            warning = f"{model} was trained with a context of {trained} tokens; using {trained}, not {asked}."
        target = trained
    if not asked and current >= target:
        target = current
    if target < integration.min_context:
        reason = f" ({integration.needs})" if integration.needs else ""
        most = f"its maximum is {trained} tokens" if trained and target == trained else f"{target} tokens"
        warning = (f"{model}'s context is too small for {integration.title}: {most}, and {integration.title} "
                   f"needs at least {integration.min_context}{reason}. Its requests will fail with 'prompt is "
                   f"too long'; pick a model with a longer context (--model).")
    return target, warning


def fit_context(integration: Integration, model: str, base: str, asked: int | None = None,
                create: bool = True) -> ContextChoice:
    """Make sure the agent gets a context large enough: the model as it is when its Modelfile
    already gives that much, else a derived model (``PARAMETER num_ctx``, up to the trained
    context) created on the server. Raises :class:`LookupError` for a model the server lacks."""
    from trillama.cli.commands import auth_headers

    headers = auth_headers()  # a server with keys: OLLAMA_API_KEY, as every other command sends it
    shown = httpx.post(base + "/api/show", json={"model": model}, timeout=30, headers=headers)
    if shown.status_code in (401, 403):
        raise LookupError(f"the server at {base} refused {'the API key in OLLAMA_API_KEY' if headers else 'a request without an API key (set OLLAMA_API_KEY)'}: "
                          f"{shown.status_code} {_error_text(shown)}")
    if shown.status_code == 404:
        raise LookupError(f"model {model!r} not found on the server at {base}; pull it first "
                          f"(trillama pull {model})")
    shown.raise_for_status()
    info = shown.json()
    trained = max((int(v) for k, v in (info.get("model_info") or {}).items()
                   if k.endswith(".context_length") and isinstance(v, int)), default=0)
    current = _num_ctx_parameter(info.get("parameters") or "")
    num_ctx, warning = choose_context(integration, model, trained, current, asked)
    limit = "the model's trained maximum" if num_ctx == trained else (
        f"the model is trained for {trained}" if trained else "the model's trained context is unknown")
    if current == num_ctx:
        return ContextChoice(model, num_ctx, f"{num_ctx} tokens ({model} has PARAMETER num_ctx {num_ctx})", warning)
    derived = derived_name(model, num_ctx)
    if create:
        made = httpx.post(base + "/api/create", json={"model": derived, "from": model,
                                                      "parameters": {"num_ctx": num_ctx}, "stream": False},
                          timeout=120, headers=headers)
        if made.status_code == 403:
            # A key that may run models but not create them: the model keeps the context it has,
            # and the user is told why and who can change that.
            kept = current or DEFAULT_SERVER_CONTEXT
            return ContextChoice(model, kept, f"{kept} tokens ({model} as it is)", (
                f"the API key may not create models (it lacks the 'manage' scope), so {model} keeps "
                f"its context of {kept} tokens instead of {num_ctx}; ask for {derived} to be created "
                f"(PARAMETER num_ctx {num_ctx}) or use a key with the 'manage' scope"))
        if made.status_code != 200:
            raise LookupError(f"could not create {derived}: {made.text.strip()}")
    return ContextChoice(derived, num_ctx, f"{num_ctx} tokens ({limit}): {derived}, which is {model} with "
                                           f"PARAMETER num_ctx {num_ctx}", warning)


def _error_text(response: httpx.Response) -> str:
    """The server's error message (any protocol's shape), or the body as it is."""
    try:
        error = response.json().get("error")
    except ValueError:
        return response.text.strip()
    return (error.get("message") if isinstance(error, dict) else error) or response.text.strip()


def find_binary(integration: Integration, path: str | None = None) -> str | None:
    found = shutil.which(integration.binary, path=path)
    if found:
        return found
    for rel in integration.fallbacks:
        candidate = Path.home() / rel
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _default_model(base: str) -> str:
    """The newest model the server lists (``/api/tags`` is newest first), else the bundled one."""
    import httpx

    from trillama.bundled import BUNDLED_NAME
    from trillama.cli.commands import auth_headers

    try:
        models = httpx.get(base + "/api/tags", timeout=10, headers=auth_headers()).json().get("models") or []
    except (httpx.HTTPError, ValueError):
        return BUNDLED_NAME
    return models[0]["name"] if models else BUNDLED_NAME


def cmd_launch(args: argparse.Namespace) -> int:
    from trillama.cli.commands import base_url

    integration = INTEGRATIONS[args.integration]
    base = base_url()
    model = args.model or _default_model(base)
    extra = tuple(getattr(args, "extra", ()))
    if extra[:1] == ("--",):
        extra = extra[1:]
    binary = None if args.config else find_binary(integration)
    if binary is None and not args.config:
        install = "\n".join(f"  {command}" for command in integration.install)
        print(f"Error: {integration.binary} is not installed. Install {integration.title} with one of:\n"
              f"{install}\n\nThen re-run:\n  trillama launch {integration.name}", file=sys.stderr)
        return 1
    try:
        choice = fit_context(integration, model, base, getattr(args, "context", None), create=not args.config)
    except LookupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"Error: could not reach the server at {base} ({exc}); start it with: trillama serve",
              file=sys.stderr)
        return 1
    plan = plan_for(integration.name, choice.model, base, extra, choice.num_ctx)
    header = f"{integration.title} → trillama at {base} (model {choice.model})\nContext: {choice.note}\n"
    if choice.warning:
        header += f"Warning: {choice.warning}\n"
    header += "\n"
    if args.config or binary is None:
        print(header + plan.render(), end="")
        return 0
    print(header + plan.render(), end="", file=sys.stderr)
    env = {**os.environ, **{k: v for k, v in plan.env if not (k in USER_FIRST and os.environ.get(k))}}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(binary, [binary, *plan.argv[1:]], env)
    return 0  # pragma: no cover - exec does not return


def register(sub: Any) -> None:
    p = sub.add_parser("launch", help="Launch a coding agent (claude, codex, opencode) against this server",
                       description="Point a coding agent at this server and start it. "
                                   "Arguments after -- go to the agent.")
    p.add_argument("integration", choices=sorted(INTEGRATIONS))
    p.add_argument("--model", help="Model the agent uses (default: the newest local model)")
    p.add_argument("--context", type=int, metavar="TOKENS",
                   help=f"Context to give the agent (default: {AGENT_CONTEXT}, or the model's trained maximum "
                        "when smaller)")
    p.add_argument("--config", action="store_true", help="Only print the environment and command")
    p.set_defaults(func=cmd_launch)
