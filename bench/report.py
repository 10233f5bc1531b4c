"""Turns a run's results into the issue's ratios, a plain-text table and a JSON file.

Why ratios against peers measured in the same run: absolute numbers on a shared 2-core machine
move with whatever else runs; two subjects measured minutes apart under the same conditions move
together, so their ratio is the reproducible claim.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.stats import ratio

__all__ = ["targets", "format_table", "write_json"]

TRILLAMA = "trillama"
INPROC = "inprocess"
LSERVER = "llama-server"
LCPP = "llama-cpp-python-server"


def _get(d: dict | None, *path):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def targets(results: dict) -> list[dict]:
    """Every target of issue 6, per trillama wire format, with the measured ratio."""
    subjects = results["subjects"]
    t = subjects.get(TRILLAMA, {})
    out = []

    def add(name: str, protocol: str, value: float | None, goal: float, higher_is_better: bool, detail: str):
        ok = None if value is None else (value >= goal if higher_is_better else value <= goal)
        out.append({"target": name, "protocol": protocol, "value": value,
                    "goal": ("≥ " if higher_is_better else "≤ ") + f"{goal:g}", "ok": ok, "detail": detail})

    for proto in ("ndjson-chat", "ndjson-generate", "sse-chat"):
        if proto not in (t.get("single") or {}):
            continue
        add("one stream decode tok/s vs in-process llama-cpp-python", proto,
            ratio(_get(t, "single", proto, "decode_tps"), _get(subjects, INPROC, "single", proto, "decode_tps")),
            0.97, True, "trillama / in-process, same prompts")
        if proto not in (t.get("concurrency") or {}):
            continue
        agg = _get(t, "concurrency", proto, "4", "aggregate_tps")
        add("4 streams aggregate tok/s vs llama-server -np 4", proto,
            ratio(agg, _get(subjects, LSERVER, "concurrency", "sse-chat", "4", "aggregate_tps")), 0.95, True,
            "trillama / llama-server")
        add("4 streams aggregate tok/s vs llama-cpp-python server", proto,
            ratio(agg, _get(subjects, LCPP, "concurrency", "sse-chat", "4", "aggregate_tps")), 2.4, True,
            "trillama / llama_cpp.server")
        add("TTFT p50 at 4 streams vs llama-server", proto,
            ratio(_get(t, "concurrency", proto, "4", "ttft_p50_ms"),
                  _get(subjects, LSERVER, "concurrency", "sse-chat", "4", "ttft_p50_ms")), 1.2, False,
            "trillama / llama-server (lower is better)")
        add("second-turn TTFT speed-up on ~1,000-token history", proto,
            _get(t, "prefix", proto, "speedup"), 5.0, True, "first-turn TTFT / second-turn TTFT")
    add("cheap endpoint req/s vs llama-cpp-python server", "/api/version vs /v1/models",
        ratio(_get(t, "cheap", "/api/version", "rps"), _get(subjects, LCPP, "cheap", "/v1/models", "rps")),
        1.0, True, "64 connections")
    return out


def _f(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}{suffix}"


def format_table(results: dict) -> str:
    subjects = results["subjects"]
    plan = results["meta"]["plan"]
    lines = []
    lines.append(f"Single stream ({plan['max_tokens']} tokens, greedy, median of {plan['single_repeats']})")
    lines.append(f"  {'subject':<26}{'path':<16}{'decode tok/s':>13}{'TTFT ms':>10}{'tokens':>8}")
    for name, sub in subjects.items():
        for proto, s in (sub.get("single") or {}).items():
            lines.append(f"  {name:<26}{proto:<16}{_f(s.get('decode_tps')):>13}{_f(s.get('ttft_ms')):>10}"
                         f"{_f(s.get('tokens'), 0):>8}")
    lines.append("")
    lines.append(f"Concurrent streams (aggregate tok/s, TTFT p50/p95 ms; median of {plan['rounds']} rounds)")
    header = f"  {'subject':<26}{'path':<16}" + "".join(f"{'N=' + str(n):>22}" for n in plan["levels"])
    lines.append(header)
    for name, sub in subjects.items():
        for proto, levels in (sub.get("concurrency") or {}).items():
            cells = []
            for n in plan["levels"]:
                lv = levels.get(str(n)) or {}
                cell = f"{_f(lv.get('aggregate_tps'))} {_f(lv.get('ttft_p50_ms'), 0)}/{_f(lv.get('ttft_p95_ms'), 0)}"
                if lv.get("errors"):
                    cell += f" E{lv['errors']}"
                cells.append(f"{cell:>22}")
            lines.append(f"  {name:<26}{proto:<16}" + "".join(cells))
    lines.append("")
    lines.append(f"Prefix reuse (~{plan['history_tokens']}-token history; TTFT ms, median of {plan['prefix_repeats']})")
    lines.append(f"  {'subject':<26}{'path':<16}{'prompt tok':>11}{'1st turn':>10}{'2nd turn':>10}{'speed-up':>10}")
    for name, sub in subjects.items():
        for proto, p in (sub.get("prefix") or {}).items():
            lines.append(f"  {name:<26}{proto:<16}{_f(p.get('first_prompt_tokens'), 0):>11}"
                         f"{_f(p.get('first_ttft_ms')):>10}{_f(p.get('second_ttft_ms')):>10}"
                         f"{_f(p.get('speedup'), 1, '×'):>10}")
    lines.append("")
    lines.append(f"Cheap endpoint ({plan['cheap_connections']} connections, {plan['cheap_seconds']:g} s)")
    lines.append(f"  {'subject':<26}{'path':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'client CPU s':>14}")
    for name, sub in subjects.items():
        for path, c in (sub.get("cheap") or {}).items():
            lines.append(f"  {name:<26}{path:<16}{_f(c.get('rps'), 0):>10}{_f(c.get('p50_ms')):>9}"
                         f"{_f(c.get('p99_ms')):>9}{c.get('errors', 0):>8}{_f(c.get('client_cpu_s')):>14}")
    lines.append("")
    lines.append("Memory under load (server and its child processes)")
    lines.append(f"  {'subject':<26}{'processes':>10}{'peak RSS MiB':>14}{'peak PSS MiB':>14}")
    for name, sub in subjects.items():
        m = sub.get("memory") or {}
        if m:
            lines.append(f"  {name:<26}{m.get('processes', 1):>10}{_f(m.get('peak_rss_mb')):>14}"
                         f"{_f(m.get('peak_pss_mb')):>14}")
    lines.append("")
    lines.append("Targets (issue 6)")
    for t in results.get("targets", []):
        mark = {True: "PASS", False: "MISS", None: "n/a "}[t["ok"]]
        lines.append(f"  [{mark}] {t['target']} [{t['protocol']}]: {_f(t['value'], 2)} (goal {t['goal']})")
    noisy = []
    for name, sub in subjects.items():
        for phase in ("single", "prefix"):
            for proto, entry in (sub.get(phase) or {}).items():
                noisy.append((name, f"{phase} {proto}", entry))
        for proto, levels in (sub.get("concurrency") or {}).items():
            for level, entry in levels.items():
                noisy.append((name, f"N={level} {proto}", entry))
        for path, entry in (sub.get("cheap") or {}).items():
            noisy.append((name, f"cheap {path}", entry))
    noisy = [(n, what, e) for n, what, e in noisy if e.get("retakes") or e.get("noisy_samples")]
    lines.append("")
    if noisy:
        lines.append("Other processes on the CPU (samples retaken; 'kept noisy' = every attempt was disturbed)")
        for name, what, e in noisy:
            lines.append(f"  {name} {what}: retakes {e.get('retakes', 0)}, kept noisy {e.get('noisy_samples', 0)}, "
                         f"worst foreign CPU {100 * e.get('max_foreign_cpu', 0):.0f}%")
    else:
        lines.append("No sample was disturbed by other processes (foreign CPU ≤ 10% throughout).")
    skipped = [(n, p, why) for n, s in subjects.items() for p, why in (s.get("skipped") or {}).items()]
    if skipped:
        lines.append("")
        lines.append("Skipped")
        for name, proto, why in skipped:
            lines.append(f"  {name} {proto}: {why}")
    return "\n".join(lines)


def write_json(results: dict, directory: Path, stamp: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{results['meta']['plan']['mode']}-{stamp}.json"
    text = json.dumps(results, indent=2, default=str)
    path.write_text(text)
    (directory / f"latest-{results['meta']['plan']['mode']}.json").write_text(text)
    return path
