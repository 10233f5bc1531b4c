"""``trillama launch claude|codex|opencode``: point a coding agent at this server and start it.

As ``ollama launch`` (its cmd/launch/ read to learn what each tool needs): Claude Code speaks
Anthropic's Messages API and is aimed with ``ANTHROPIC_BASE_URL`` and its model variables; Codex
gets a custom model provider on the OpenAI Responses API, passed as ``-c`` overrides so the user's
``~/.codex/config.toml`` is left untouched; opencode gets an OpenAI-compatible provider as inline
config in ``OPENCODE_CONFIG_CONTENT``. The plan (environment and command) is printed; it is then
applied by exec'ing the tool, or, when the tool is not installed, the exact install commands are
printed and the exit status is 1. ``--config`` only prints.
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

__all__ = ["Plan", "Integration", "INTEGRATIONS", "plan_for", "find_binary", "register"]

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
    plan: Callable[[str, str, tuple[str, ...]], Plan]


def _claude(model: str, base: str, extra: tuple[str, ...]) -> Plan:
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


def _codex(model: str, base: str, extra: tuple[str, ...]) -> Plan:
    argv: list[str] = ["codex"]
    for override in codex_overrides(base):
        argv += ["-c", override]
    argv += ["-m", model, *extra]
    return Plan((("OPENAI_API_KEY", api_key()),), tuple(argv))


def opencode_config(model: str, base: str) -> dict[str, Any]:
    """opencode's config: one OpenAI-compatible provider serving ``model``, chosen as the default."""
    return {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            PROVIDER: {
                "npm": "@ai-sdk/openai-compatible",
                "name": "trillama",
                "options": {"baseURL": f"{base}/v1", "apiKey": api_key()},
                "models": {model: {"name": model}},
            }
        },
        "model": f"{PROVIDER}/{model}",
    }


def _opencode(model: str, base: str, extra: tuple[str, ...]) -> Plan:
    content = json.dumps(opencode_config(model, base), separators=(",", ":"))
    return Plan((("OPENCODE_CONFIG_CONTENT", content),), ("opencode", *extra))


INTEGRATIONS: dict[str, Integration] = {
    i.name: i
    for i in (
        Integration("claude", "Claude Code", "claude", (".local/bin/claude", ".claude/local/claude"),
                    ("curl -fsSL https://claude.ai/install.sh | bash", "npm install -g @anthropic-ai/claude-code"),
                    _claude),
        Integration("codex", "Codex", "codex", (), ("npm install -g @openai/codex",), _codex),
        Integration("opencode", "OpenCode", "opencode", (".opencode/bin/opencode",),
                    ("curl -fsSL https://opencode.ai/install | bash", "npm install -g opencode-ai"), _opencode),
    )
}


def plan_for(name: str, model: str, base: str, extra: tuple[str, ...] = ()) -> Plan:
    return INTEGRATIONS[name].plan(model, base.rstrip("/"), extra)


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
    plan = plan_for(integration.name, model, base, extra)
    header = f"{integration.title} → trillama at {base} (model {model})\n\n"
    if args.config:
        print(header + plan.render(), end="")
        return 0
    binary = find_binary(integration)
    if binary is None:
        install = "\n".join(f"  {command}" for command in integration.install)
        print(f"Error: {integration.binary} is not installed. Install {integration.title} with one of:\n"
              f"{install}\n\nThen re-run:\n  trillama launch {integration.name}", file=sys.stderr)
        return 1
    print(header + plan.render(), end="", file=sys.stderr)
    env = {**os.environ, **dict(plan.env)}
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
    p.add_argument("--config", action="store_true", help="Only print the environment and command")
    p.set_defaults(func=cmd_launch)
