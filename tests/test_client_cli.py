"""Pieces of the ollama-style client commands that need no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from trillama.cli.commands import extract_images, show_progress


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


class _Out:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


PULL = [{"status": "pulling manifest"},
        {"status": "pulling 0123456789ab", "digest": "sha256:0123456789ab", "total": 2_000_000},
        {"status": "pulling 0123456789ab", "digest": "sha256:0123456789ab", "total": 2_000_000,
         "completed": 1_000_000},
        {"status": "pulling 0123456789ab", "digest": "sha256:0123456789ab", "total": 2_000_000,
         "completed": 2_000_000},
        {"status": "verifying sha256 digest"}, {"status": "success"}]


def test_progress_in_a_log_prints_each_finished_layer_and_status_once():
    out = _Out(tty=False)
    show_progress(iter(PULL), out)
    assert out.text.splitlines() == [
        "pulling manifest",
        "pulling 0123456789ab: 100% ▕████████████████████▏ 2.0 MB/2.0 MB",
        "verifying sha256 digest", "success"]


def test_progress_on_a_terminal_fills_one_line_in_place():
    out = _Out(tty=True)
    show_progress(iter(PULL), out)
    assert "\rpulling 0123456789ab:  50% ▕██████████          ▏ 1.0 MB/2.0 MB" in out.text
    assert out.text.endswith("2.0 MB/2.0 MB\nverifying sha256 digest\nsuccess\n")
    assert "0%" not in out.text.replace("100%", "").replace("50%", "")  # nothing-done updates skipped
