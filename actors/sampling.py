"""Ollama's request ``options`` → a runner :class:`GenerateJob`.

Both HTTP layers (native and ``/v1``) end up here, so there is exactly one place that knows how an
option name maps onto the engine. Defaults are Ollama's (``repeat_penalty`` 1.0 since v0.32.10).
"""

from __future__ import annotations

from typing import Any, Mapping

from trillama.actors.runner.messages import GenerateJob

__all__ = ["job_from_options", "SAMPLING_KEYS"]

SAMPLING_KEYS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "num_keep",
)


def job_from_options(
    options: Mapping[str, Any],
    *,
    prompt: str,
    prompt_tokens: list[int] | None = None,
    add_bos: bool | None = None,
    grammar: str | None = None,
    logprobs: bool = False,
    top_logprobs: int = 0,
    num_ctx: int | None = None,
    shift: bool = True,
    extra_stop: tuple[str, ...] = (),
    images: tuple[bytes, ...] = (),
) -> GenerateJob:
    """Build the job; ``options`` are the model's parameters with the request's on top."""
    fields: dict[str, Any] = {k: options[k] for k in SAMPLING_KEYS if options.get(k) is not None}
    for name in ("temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
                 "frequency_penalty"):
        if name in fields:
            fields[name] = float(fields[name])
    for name in ("top_k", "repeat_last_n", "num_keep"):
        if name in fields:  # C ints in llama.cpp; past them the frame to the runner cannot be packed
            fields[name] = max(-(2**31), min(int(fields[name]), 2**31 - 1))
    if "seed" in fields:
        # llama.cpp seeds are 32 bits: keep the low ones, as Go's uint32 conversion in Ollama does.
        seed = int(fields["seed"])
        fields["seed"] = seed if seed < 0 else seed & 0xFFFFFFFF
    stop = options.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    num_predict = options.get("num_predict")
    draft_max = options.get("draft_max")
    return GenerateJob(
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        add_bos=add_bos,
        # Past 2**31 a limit means nothing (the runner stops at 10 x num_ctx anyway), and a number
        # past 64 bits (max_tokens 1e300 on /v1) could not even be sent to the runner.
        num_predict=min(int(num_predict), 2**31 - 1) if num_predict is not None else -1,
        stop=tuple(s for s in (*stop, *extra_stop) if s),
        grammar=grammar,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        num_ctx=num_ctx,
        shift=shift,
        images=images,
        draft_max=int(draft_max) if draft_max is not None else None,
        **fields,
    )
