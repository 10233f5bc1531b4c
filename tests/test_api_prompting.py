"""The API's prompt assembly for images: which pictures go to the runner, in which order."""

from __future__ import annotations

import base64

import attrs
import pytest

from trillama.api.errors import APIError
from trillama.api.prompting import build_chat_prompt, build_generate_prompt, decode_images

CHATML = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"


@attrs.frozen
class _Info:
    chat_template: str = CHATML
    eos_token: str = ""


@attrs.frozen
class _Record:
    """The parts of a store record the prompt layer reads."""

    capabilities: tuple[str, ...] = ("completion", "vision")
    template: str | None = None
    system: str | None = None
    messages: tuple = ()

    def gguf_info(self) -> _Info:
        return _Info()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def words(text: str, limit: int | None = None) -> list[int]:
    return [0] * len(text.split())


async def test_chat_images_follow_their_tags_and_leave_with_their_messages():
    messages = [
        {"role": "user", "content": "old picture", "images": [b64(b"A")]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "two more", "images": [b64(b"B"), b64(b"C")]},
    ]
    everything = await build_chat_prompt(_Record(), messages, tools=None, think=None, truncate=True,
                                         num_ctx=10_000, count_tokens=words)
    assert everything.images == (b"A", b"B", b"C")
    assert "<user>[img-0]old picture" in everything.text and "[img-1][img-2]two more" in everything.text
    # each image counts as 768 tokens (Ollama's allowance), so the first message does not fit
    # in 1600: the kept images are renumbered from 0 and the dropped message's picture is not sent
    cut = await build_chat_prompt(_Record(), messages, tools=None, think=None, truncate=True,
                                  num_ctx=1600, count_tokens=words)
    assert cut.images == (b"B", b"C")
    assert cut.text == "<assistant>ok<user>[img-0][img-1]two more<assistant>"


async def test_a_text_only_model_sends_no_images_and_counts_none():
    messages = [{"role": "user", "content": "hi", "images": [b64(b"A")]}]
    prompt = await build_chat_prompt(_Record(capabilities=("completion",)), messages, tools=None, think=None,
                                     truncate=True, num_ctx=100, count_tokens=words)
    assert prompt.images == ()


@pytest.mark.parametrize(("prompt", "images", "expected"), [
    ("look", 0, "look"),
    ("look", 2, "[img-0][img-1]look"),
    ("[img-1] then [img-0]", 2, "[img-1] then [img-0]"),  # already placed: left alone
    ("a [img] b", 2, "[img-1]a [img-0] b"),  # a placeholder takes the first untagged image
    ("end: [img-0]", 1, "end: [img-0]"),
])
def test_raw_prompts_keep_their_text_and_gain_missing_tags(prompt, images, expected):
    assert build_generate_prompt(_Record(), prompt, system=None, template=None, suffix="", raw=True,
                                 has_context=False, images=images, think=None) == expected


def test_decode_images_speaks_ollamas_error():
    assert decode_images([b64(b"\x89PNG"), b"raw"]) == [b"\x89PNG", b"raw"]
    with pytest.raises(APIError) as info:
        decode_images(["not base64!"])
    assert info.value.status == 400 and str(info.value.message).startswith("illegal base64 data")
