"""Images in the runner: a real SmolLM2 with a (tiny, random) vision projector through libmtmd.

The projector's weights are noise, so these tests do not ask what the model says about a picture;
they ask whether the picture reached it. With greedy sampling the answer is a function of the
prompt, so: the same image twice gives the same answer, another image a different one, and the
image's embeddings are counted as prompt positions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from test_runner_process import chat, greedy, run, spec
from tiny_projector import IMAGE_TOKENS, png_bytes, write_tiny_projector
from trillama.actors.runner.client import Done, Failed, GenerateJob, Runner, RunnerError

RED = png_bytes((220, 30, 30))
BLUE = png_bytes((30, 30, 220))
STRIPED = png_bytes((220, 30, 30), stripe=(250, 250, 250))
QUESTION = chat("[img-0]Describe the picture.")


@pytest.fixture(scope="module")
def projector(tmp_path_factory) -> Path:
    return write_tiny_projector(tmp_path_factory.mktemp("vision") / "mmproj.gguf", text_embd=576)


def vision_spec(projector: Path, **overrides):
    return spec(projector=projector, **overrides)


async def test_the_image_reaches_the_model(projector):
    async with Runner.open(vision_spec(projector, n_parallel=1)) as runner:
        assert runner.facts.vision
        def job(image: bytes):
            return greedy(QUESTION, images=(image,), num_predict=12, logprobs=True, top_logprobs=5)

        red, red_pieces, red_done = await run(runner, "red", job(RED))
        _, blue_pieces, _ = await run(runner, "blue", job(BLUE))
        _, striped_pieces, _ = await run(runner, "striped", job(STRIPED))
        again, again_pieces, again_done = await run(runner, "red-again", job(RED))
        assert red.strip()
        assert red == again  # same picture, same answer
        # The answer depends on the pixels. Asked of the first token's distribution (a continuous
        # function of the image's embeddings), not of a dozen greedy tokens: with a random
        # projector two colours can well lead to the same few words.
        first = [pieces[0].logprobs[0]["top_logprobs"] for pieces in (red_pieces, blue_pieces, striped_pieces)]
        assert len({repr(entry) for entry in first}) == 3
        assert again_pieces[0].logprobs[0]["top_logprobs"] == first[0]
        text_only = await runner.tokenize(QUESTION.replace("[img-0]", ""), add_special=True)
        assert isinstance(red_done, Done)
        assert red_done.prompt_eval_count + red_done.cached_count == len(text_only) + IMAGE_TOKENS
        # the image has no token ids: the returned context is the text tokens plus the answer
        assert all(t >= 0 for t in red_done.context)
        assert len(red_done.context) == len(text_only) + red_done.eval_count
        assert again_done.cached_count > 0


async def test_a_conversation_about_one_image_reuses_it_and_another_image_does_not(projector):
    async with Runner.open(vision_spec(projector, n_parallel=1)) as runner:
        _, _, first = await run(runner, "first", greedy(QUESTION, images=(RED,), num_predict=4))
        follow_up = QUESTION + "It is a picture.<|im_end|>\n" + chat("And its colour?")
        _, _, same = await run(runner, "same", greedy(follow_up, images=(RED,), num_predict=4))
        assert isinstance(same, Done)
        prefix = QUESTION.index("[img-0]")
        text_before = len(await runner.tokenize(QUESTION[:prefix], add_special=True))
        # the image was not encoded again: the cache covers it and what follows it
        assert same.cached_count >= text_before + IMAGE_TOKENS
        _, _, other = await run(runner, "other", greedy(follow_up, images=(BLUE,), num_predict=4))
        assert isinstance(other, Done)
        # a different picture at the same place: only the text before it is reused
        assert other.cached_count == text_before


async def test_images_are_placed_where_their_tags_are(projector):
    async with Runner.open(vision_spec(projector, n_parallel=1)) as runner:
        two = chat("First [img-0] then [img-1]. Compare them.")
        ab, _, ab_done = await run(runner, "ab", greedy(two, images=(RED, BLUE), num_predict=10))
        ba, _, _ = await run(runner, "ba", greedy(two, images=(BLUE, RED), num_predict=10))
        assert ab != ba
        # the text around the images is tokenized piece by piece (tokens never span an image)
        head, rest = two.split("[img-0]")
        middle, tail = rest.split("[img-1]")
        text = (len(await runner.tokenize(head, add_special=True))
                + len(await runner.tokenize(middle, add_special=False))
                + len(await runner.tokenize(tail, add_special=False)))
        assert ab_done.prompt_eval_count + ab_done.cached_count == text + 2 * IMAGE_TOKENS
        # a tag that refers to no image stays text, as in Ollama
        _, _, stray = await run(runner, "stray", greedy(chat("[img-3] hello"), images=(RED,), num_predict=2))
        assert isinstance(stray, Done)
        assert stray.prompt_eval_count + stray.cached_count == len(await runner.tokenize(chat("[img-3] hello"), add_special=True))


async def test_a_raw_prompt_may_end_with_the_image(projector):
    async with Runner.open(vision_spec(projector, n_parallel=1)) as runner:
        text, _, done = await run(runner, "raw", greedy("A photo: [img-0]", images=(RED,), num_predict=6))
        assert isinstance(done, Done) and done.eval_count == 6 and text
        other, _, _ = await run(runner, "raw2", greedy("A photo: [img-0]", images=(BLUE,), num_predict=6))
        assert other != text


async def test_image_jobs_batch_with_text_jobs_and_match_their_solo_answers(projector):
    async with Runner.open(vision_spec(projector, n_parallel=3)) as runner:
        jobs = {
            "red": greedy(QUESTION, images=(RED,), num_predict=16),
            "blue": greedy(QUESTION, images=(BLUE,), num_predict=16),
            "text": greedy(chat("Tell me about the sea."), num_predict=16),
        }
        solo = {name: (await run(runner, f"solo-{name}", job))[0] for name, job in jobs.items()}
        together: dict[str, str] = {}

        async def one(name: str) -> None:
            together[name] = (await run(runner, f"together-{name}", jobs[name]))[0]

        async with trio.open_nursery() as nursery:
            for name in jobs:
                nursery.start_soon(one, name)
        assert together == solo


@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
async def test_an_undecodable_image_fails_the_job_not_the_runner(projector, data):
    async with Runner.open(vision_spec(projector, n_parallel=1)) as runner:
        _, _, failed = await run(runner, "bad", greedy(QUESTION, images=(data,), num_predict=4))
        assert isinstance(failed, Failed) and failed.kind == "bad_request"
        assert "image 0 could not be decoded" in failed.message
        _, _, ok = await run(runner, "good", greedy(QUESTION, images=(RED,), num_predict=4))
        assert isinstance(ok, Done)


async def test_a_model_without_projector_refuses_images():
    async with Runner.open(spec(n_parallel=1)) as runner:
        assert not runner.facts.vision
        _, _, failed = await run(runner, "img", greedy(QUESTION, images=(RED,), num_predict=4))
        assert isinstance(failed, Failed) and failed.kind == "bad_request"
        assert "does not support images" in failed.message


async def test_a_projector_for_another_model_fails_the_load_clearly(tmp_path):
    wrong = write_tiny_projector(tmp_path / "mmproj-64.gguf", text_embd=64)
    with pytest.raises(RunnerError) as info:
        async with Runner.open(spec(projector=wrong), forward_stderr=False):
            pass
    assert "unable to load the vision projector mmproj-64.gguf" in str(info.value)


async def test_a_missing_projector_file_fails_the_load(tmp_path):
    with pytest.raises(RunnerError) as info:
        async with Runner.open(spec(projector=tmp_path / "gone.gguf"), forward_stderr=False):
            pass
    assert "projector file not found" in str(info.value)


def test_jobs_carry_images_through_the_process_edge():
    from trillama.actors.runner.messages import converter

    job = GenerateJob(prompt="[img-0]", images=[RED])
    assert converter.structure(converter.unstructure(job), GenerateJob) == job
    assert "<1 images>" in repr(job)  # logs show how many, not megabytes of bytes


async def test_a_request_too_large_for_a_frame_fails_alone(projector, monkeypatch):
    from trillama.actors.runner import protocol

    async with Runner.open(vision_spec(projector, n_parallel=1)) as runner:
        monkeypatch.setattr(protocol, "MAX_FRAME", 1 << 20)  # the server side's limit, made small
        _, _, failed = await run(runner, "huge", greedy(QUESTION, images=(b"\x00" * (2 << 20),), num_predict=4))
        assert isinstance(failed, Failed) and failed.kind == "bad_request"
        assert "too large for the model runner" in failed.message
        # nothing reached the runner: it is still there and serving
        _, _, ok = await run(runner, "small", greedy(QUESTION, images=(RED,), num_predict=4))
        assert isinstance(ok, Done) and not runner.died.is_set()
