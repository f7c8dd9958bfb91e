"""Helpers the command-line test modules share."""

from __future__ import annotations

from pathlib import Path

from motiontune.io.video import write_video
from motiontune.lab.shapeworld import Clip, render


def error_line(capsys) -> str:
    """The single stderr line of a failed command (fails unless there is exactly one)."""
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("motiontune: error: "), lines[0]
    return lines[0]


def write_clip(folder: Path, name: str, caption: str, frames: int = 10) -> Path:
    """A captioned ShapeWorld zigzag clip `folder/name.mp4` + `name.txt`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_video(render(Clip("square", "red", "white", "zigzag"), frames, 32).frames, folder / f"{name}.mp4")
    (folder / f"{name}.txt").write_text(caption)
    return path
