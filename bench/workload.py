"""The prompts every subject receives, identical across subjects and reproducible across runs.

Why nonces: llama.cpp-based servers reuse a cached prompt prefix, so two requests that start the
same way would be measured partly from cache. Every request here begins its system message with a
nonce derived from (test, level, round, stream), so no request shares a prefix with an earlier one
unless the test wants it to (the second turn of the prefix test). The same nonces go to every
subject, so greedy decoding gives every subject the same work.

Why "write a long story": the model must keep generating for the whole token budget; a question
with a short answer would end on EOS and turn a decode benchmark into a prefill benchmark.
"""

from __future__ import annotations

import hashlib
import random

__all__ = ["stream_messages", "history_chat", "second_turn", "nonce"]

_TOPICS = (
    "a lighthouse keeper who finds a map in a bottle",
    "a baker who opens a shop on the moon",
    "two robots who learn to play chess together",
    "a river that changes its course every winter",
    "a library where books rearrange themselves at night",
    "a girl who trains a dragon to deliver letters",
    "an old clockmaker and his talking cat",
    "a village that runs out of colours",
    "a sailor lost in a sea of fog",
    "a mountain climber who meets a friendly yeti",
    "a city built entirely on bridges",
    "a gardener who grows singing flowers",
)

_SUBJECTS = ("The engineer", "Our team", "The old report", "A careful reader", "The committee",
             "The first prototype", "Every visitor", "The new design", "The survey", "My neighbour")
_VERBS = ("described", "measured", "questioned", "improved", "compared", "explained", "tested",
          "documented", "reviewed", "simplified")
_OBJECTS = ("the cooling system of the station", "the route along the northern coast",
            "the schedule for the spring harvest", "the budget for the school library",
            "the design of the wooden bridge", "the recipe for the village bread",
            "the lighting in the concert hall", "the rules of the chess tournament",
            "the map of the old mine", "the training plan for the marathon")
_TAILS = ("before the meeting ended.", "with great patience.", "after a long discussion.",
          "and found several small mistakes.", "using only a pencil and paper.",
          "while the rain kept falling.", "so that everyone could follow it.",
          "in less than an hour.", "for the third time this year.", "without any help.")
_QUESTIONS = ("What else should I know about this?", "Can you tell me more?",
              "How would you summarise that?", "What happened next?", "Why does that matter?",
              "Could you give another example?")


def nonce(*parts: object) -> str:
    """A short hex tag unique to ``parts`` (and the same on every run)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _system(tag: str) -> dict:
    return {"role": "system", "content": f"Session {tag}. You are a helpful assistant who writes long, detailed answers."}


def stream_messages(*key: object, attempt: int = 0) -> list[dict]:
    """A chat asking for a long story; ``key`` picks the topic, ``key`` and ``attempt`` the nonce."""
    tag = nonce("stream", *key)
    topic = _TOPICS[int(tag, 16) % len(_TOPICS)]
    if attempt:
        tag = nonce("stream", *key, "attempt", attempt)
    return [
        _system(tag),
        {"role": "user", "content": f"Write a long story about {topic}. Describe every scene in detail."},
    ]


def _paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
        for _ in range(sentences)
    )


def history_chat(target_tokens: int, *key: object) -> list[dict]:
    """A multi-turn chat of roughly ``target_tokens`` tokens ending in a user question.

    The filler is synthetic (random sentences from small word lists): the test is about cache
    reuse, not about what the model says. About 17 tokens per sentence (ChatML framing included)
    with SmolLM2's tokenizer.
    """
    tag = nonce("history", *key)
    rng = random.Random(tag)
    messages = [_system(tag)]
    sentences_left = max(4, round(target_tokens / 17))
    turn = 0
    while sentences_left > 0:
        n_user = min(sentences_left, 4)
        sentences_left -= n_user
        n_assistant = min(max(sentences_left, 0), 8)
        sentences_left -= n_assistant
        messages.append({"role": "user", "content": _paragraph(rng, n_user) + " " + rng.choice(_QUESTIONS)})
        if n_assistant:
            messages.append({"role": "assistant", "content": _paragraph(rng, n_assistant)})
        turn += 1
    if messages[-1]["role"] != "user":
        messages.append({"role": "user", "content": rng.choice(_QUESTIONS)})
    return messages


def second_turn(messages: list[dict], reply: str) -> list[dict]:
    """The next turn of ``messages`` after the model answered ``reply``."""
    return [*messages, {"role": "assistant", "content": reply},
            {"role": "user", "content": "Thank you. Please answer in one short sentence."}]
