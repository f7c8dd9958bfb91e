"""The ShapeWorld motion task the demo and the benches share: reference clips of a novel motion in one look,
regularization clips of known motions, and the scores of generated videos against them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .evaluation import copy_rates
from .shapeworld import (
    KNOWN_DIRECTIONS,
    NOVEL_MOTIONS,
    Clip,
    is_custom_motion,
    path_keyframes,
    sample_clips,
    write_dataset,
)

TOKEN = "sks"
SUBJECT_LOOK = ("colour", "shape")  # what NewMove's copy score is about: the subject, not the background
NOVEL_MOTION = "zigzag"
REFERENCE_LOOK = {"shapes": ("circle", "triangle"), "colours": ("red", "green")}


def write_task(
    folder: Path,
    frames: int,
    size: int,
    motion: str = NOVEL_MOTION,
    seed: int = 0,
    regularization_backgrounds: tuple[str, ...] | None = None,
    regularization_clips: int = 4,
) -> tuple[list[Clip], Path, Path]:
    """The motion task (zigzag by default): 4 reference clips of `motion` (red/green circles and triangles,
    captioned with the token) and `regularization_clips` clips of known motions on white or gray backgrounds (or
    clip i on `regularization_backgrounds[i % n]`), drawn from `seed`; returns the reference clips and both
    folders."""
    looks = {"backgrounds": ("white", "black", "gray"), **REFERENCE_LOOK}
    references = sample_clips(4, seed, motions=(motion,), **looks)
    reference_dir = write_dataset(folder / "reference", references, frames, size, token=TOKEN)
    regularization = sample_clips(
        regularization_clips, seed + 1, motions=KNOWN_DIRECTIONS, backgrounds=("white", "gray")
    )
    if regularization_backgrounds:
        count = len(regularization_backgrounds)
        regularization = [
            replace(clip, background=regularization_backgrounds[i % count]) for i, clip in enumerate(regularization)
        ]
    return references, reference_dir, write_dataset(folder / "regularization", regularization, frames, size)


def task_scores(
    predicted: list[dict], prompts: list[Clip], references: list[Clip], motion: str = NOVEL_MOTION
) -> dict[str, float]:
    """Motion accuracy (the object does `motion`), appearance accuracy (colour and shape follow the prompt)
    and copy score (colour or shape taken from the references instead of the prompt) of evaluated videos."""
    copies = copy_rates(predicted, [c.to_dict() for c in prompts], [c.to_dict() for c in references], SUBJECT_LOOK)
    return {
        "motion": float(np.mean([p["motion"] == motion for p in predicted])),
        "appearance": float(np.mean([p["correct"]["colour"] and p["correct"]["shape"] for p in predicted])),
        "copy": copies["any"],
    }


def check_task_motion(motion: str) -> None:
    """A motion to learn is a novel motion of the world or a `path:` motion of your own; ConfigError otherwise."""
    if is_custom_motion(motion):
        try:
            path_keyframes(motion)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    elif motion not in NOVEL_MOTIONS:
        raise ConfigError(
            f"motion '{motion}': learn a novel motion ({', '.join(NOVEL_MOTIONS)}) or a path of your own "
            "('path:x y;x y;...', offsets in fractions of the frame)"
        )
