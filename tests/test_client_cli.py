"""Pieces of the ollama-style client commands that need no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from trillama.client_cli import extract_images


@pytest.fixture
def pictures(tmp_path: Path, monkeypatch) -> Path:
    for name in ("cat.png", "two words.jpeg", "UPPER.WEBP", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_picture_paths_leave_the_prompt_and_become_images(pictures: Path):
    text, found = extract_images(f"compare {pictures}/cat.png with ./two\\ words.jpeg and ~/UPPER.WEBP now")
    assert text == "compare with and now"
    assert found == [pictures / "cat.png", Path("two words.jpeg"), pictures / "UPPER.WEBP"]


@pytest.mark.parametrize("prompt", [
    "what is ./missing.png?",  # no such file: stays text
    "read ./notes.txt",  # not a picture
    "cat.png without a path prefix",
    "no pictures at all",
])
def test_anything_else_stays_text(pictures: Path, prompt: str):
    assert extract_images(prompt) == (prompt, [])
