"""Sharing decode threads among busy runners (actors/cpu.py)."""

from __future__ import annotations

import pytest

from trillama.actors.cpu import share_threads


def test_a_runner_working_alone_keeps_all_its_threads():
    assert share_threads({"a": 8, "b": 8}, busy={"a"}, budget=8) == {"a": 8, "b": 8}
    assert share_threads({"a": 8, "b": 8}, busy=set(), budget=8) == {"a": 8, "b": 8}


@pytest.mark.parametrize(("budget", "expected"), [
    (2, {"a": 1, "b": 1}),
    (8, {"a": 4, "b": 4}),
    (7, {"a": 4, "b": 3}),  # the remainder goes to the first
    (1, {"a": 1, "b": 1}),  # never below one thread
])
def test_busy_runners_split_the_budget(budget, expected):
    assert share_threads({"a": 8, "b": 8}, busy={"a", "b"}, budget=budget) == expected


def test_idle_runners_keep_their_count_and_nobody_gets_more_than_configured():
    shares = share_threads({"big": 16, "small": 2, "idle": 16}, busy={"big", "small"}, budget=16)
    assert shares == {"big": 8, "small": 2, "idle": 16}
    # three busy runners on two cores: one each (one-thread runners do not spin at barriers)
    assert share_threads({"a": 2, "b": 2, "c": 2}, busy={"a", "b", "c"}, budget=2) == {"a": 1, "b": 1, "c": 1}
