"""``trillama show MODEL`` (and the REPL's ``/show info``): a model's sections as ``ollama show`` lays
them out — Model, Capabilities, Projector, Parameters, Metadata and Tensors (verbose), System,
License — each a header indented two spaces and a borderless table indented four, columns padded
four spaces apart, a blank line after each.
"""

from __future__ import annotations

import shlex
from typing import Any, Iterable

__all__ = ["format_show", "human_number"]


def human_number(n: int) -> str:
    """The store's ``HumanNumber``, imported when needed: the store package is slow to import and
    most ``show`` outputs never need it."""
    from trillama.store.gguf_info import human_number as store_human_number

    return store_human_number(n)


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _table(header: str, rows: Iterable[list[str]]) -> list[str]:
    rows = [r for r in rows]
    out = [f"  {header}"]
    if rows:
        ncols = max(len(r) for r in rows)
        rows = [r + [""] * (ncols - len(r)) for r in rows]
        widths = [max(len(r[i]) for r in rows) for i in range(ncols)]
        for r in rows:
            out.append("    ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
    out.append("")
    return out


def _head(text: str, n: int) -> list[list[str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [["", line] for line in lines[:n]]
    if len(lines) > n:
        rows.append(["", "..."])
    return rows


def _metadata_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        shown, width = [], 1
        for i, item in enumerate(value):
            w = len(str(item)) + (2 if i else 0)
            if width + w > 10 and i > 0:
                break
            width += w
            shown.append(str(item))
        inner = " ".join(shown)
        return f"[{inner} ...+{len(value) - len(shown)} more]" if len(shown) < len(value) else f"[{inner}]"
    return _number(value)


def format_show(info: dict[str, Any], verbose: bool = False) -> str:
    details = info.get("details") or {}
    mi = info.get("model_info") or {}
    model_rows: list[list[str]] = []
    if mi:
        arch = mi.get("general.architecture", "")
        if arch:
            model_rows.append(["", "architecture", arch])
        params = details.get("parameter_size") or (
            human_number(int(mi["general.parameter_count"])) if "general.parameter_count" in mi else "")
        if params:
            model_rows.append(["", "parameters", params])
        for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
            if f"{arch}.{key}" in mi:
                model_rows.append(["", label, _number(mi[f"{arch}.{key}"])])
    else:
        model_rows += [["", "architecture", details.get("family", "")],
                       ["", "parameters", details.get("parameter_size", "")]]
    model_rows.append(["", "quantization", details.get("quantization_level", "")])
    if info.get("requires"):
        model_rows.append(["", "requires", info["requires"]])
    out = _table("Model", model_rows)

    if info.get("capabilities"):
        out += _table("Capabilities", [["", c] for c in info["capabilities"]])

    projector = info.get("projector_info")
    if projector:
        arch = projector.get("general.architecture", "")
        rows = [["", "architecture", arch]] if arch else []
        if "general.parameter_count" in projector:
            rows.append(["", "parameters", human_number(int(projector["general.parameter_count"]))])
        for suffix, label in (("embedding_length", "embedding length"), ("projection_dim", "dimensions")):
            for modality in ("vision", "audio"):
                key = f"{arch}.{modality}.{suffix}"
                if key in projector:
                    rows.append(["", label, _number(projector[key])])
                    break
        out += _table("Projector", rows)

    if info.get("parameters"):
        rows = []
        for line in info["parameters"].splitlines():
            if line.strip():
                try:
                    fields = shlex.split(line, posix=False)
                except ValueError:
                    fields = line.split()
                rows.append([""] + fields)
        out += _table("Parameters", rows)

    if mi and verbose:
        out += _table("Metadata", [["", k, _metadata_value(mi[k])] for k in sorted(mi)])
    if verbose and info.get("tensors"):
        out += _table("Tensors", [["", t.get("name", ""), t.get("type", ""),
                                   "[" + " ".join(str(s) for s in t.get("shape", [])) + "]"]
                                  for t in info["tensors"]])
    if info.get("system"):
        out += _table("System", _head(info["system"], 2))
    if info.get("license"):
        out += _table("License", _head(info["license"], 2))
    return "\n".join(out) + "\n"
