"""ShapeWorld: a tiny, deterministic video world whose ground truth is known exactly.

One object (a shape of a colour and size) moves along a named motion over a plain or textured
background, optionally under a camera pan. Every clip comes with its caption, per-frame masks,
boxes and centre trajectory. Known motions are what a base model learns; novel motions and novel
shapes are held out of its training data, so that customization methods have something to teach.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..io.video import write_video

SHAPES = ("circle", "square", "triangle")
NOVEL_SHAPES = ("star", "ring")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (235, 205, 30)}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128), "textured": None}
SIZES = {"small": 0.2, "large": 0.28}
KNOWN_MOTIONS = ("static", "left", "right", "up", "down")
#: the known motions that move the object: what regularization clips and retention prompts use
KNOWN_DIRECTIONS = tuple(motion for motion in KNOWN_MOTIONS if motion != "static")
NOVEL_MOTIONS = ("zigzag", "orbit", "bounce", "diagonal")
MOTION_PHRASES = {
    "static": "static",
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
}
VOCABULARY = (
    "a on background moving static left right up down doing in zigzag orbit bounce diagonal "
    + " ".join([*SHAPES, *NOVEL_SHAPES, *COLOURS, *BACKGROUNDS])
).split()
TRAVEL = 0.5
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Clip:
    """Everything that defines one ShapeWorld video. Positions are fractions of the frame."""

    shape: str
    colour: str
    background: str
    motion: str
    size: str = "small"
    start: tuple[float, float] = (0.5, 0.5)
    phase: float = 0.0
    camera: tuple[float, float] = (0.0, 0.0)
    texture_seed: int = 0

    def __post_init__(self):
        if max(abs(self.camera[0]), abs(self.camera[1])) > 1:
            raise ValueError(f"camera pan must be within [-1, 1] of the frame per clip, got {self.camera}")

    def caption(self, token: str | None = None) -> str:
        """ "a red circle moving left on a white background"; a novel motion reads "doing <token>"."""
        if self.motion in MOTION_PHRASES:
            phrase = MOTION_PHRASES[self.motion]
        elif token:
            phrase = f"doing {token}"
        elif is_custom_motion(self.motion):
            phrase = "moving along a path"
        else:
            phrase = f"moving in a {self.motion}" if self.motion != "orbit" else "moving in an orbit"
        return f"a {self.colour} {self.shape} {phrase} on a {self.background} background"

    def to_dict(self) -> dict:
        return asdict(self)


#: a motion no code names: `path:` and keyframe offsets "x y" (fractions of the frame, y down) joined by ";"
PATH_PREFIX = "path:"
#: the widest a `path:` motion may span (fraction of the frame), so that random starts keep the object inside
MAX_PATH_EXTENT = 0.5


def is_custom_motion(motion: str) -> bool:
    return motion.startswith(PATH_PREFIX)


def path_keyframes(motion: str) -> np.ndarray:
    """The keyframes `(K, 2)` of a `path:` motion, e.g. "path:0 0;0.3 0;0.3 0.3" (at least two, spanning at most
    `MAX_PATH_EXTENT` of the frame each way); ValueError naming the motion otherwise."""
    text = motion.removeprefix(PATH_PREFIX)
    try:
        points = np.array([[float(v) for v in point.split()] for point in text.split(";")], dtype=float)
    except ValueError:
        points = np.zeros((0, 0))
    if points.ndim != 2 or points.shape[1:] != (2,) or len(points) < 2 or not np.isfinite(points).all():
        raise ValueError(f"motion '{motion}': a path is '{PATH_PREFIX}' and two or more 'x y' offsets joined by ';'")
    extent = np.ptp(points, axis=0)
    if extent.max() > MAX_PATH_EXTENT or extent.max() == 0:
        raise ValueError(
            f"motion '{motion}': the path must span more than nothing and at most {MAX_PATH_EXTENT} of the frame "
            "each way (so the object stays inside it)"
        )
    return points


def motion_path(motion: str, frames: int, start: tuple[float, float] = (0.5, 0.5), phase: float = 0.0) -> np.ndarray:
    """Centre positions `(F, 2)` as (x, y) fractions of the frame (y down) for a named motion, or for a
    `path:` motion of your own (its keyframes spread evenly over the frames, joined by straight lines, centred
    on `start`; `phase` does not apply).

    Straight motions travel `TRAVEL` of the frame at constant speed; `start` is the path's midpoint. Every named
    motion spans the clip whatever its length (the zigzag swings four times, the orbit goes round once), so a
    longer clip shows the same motion in more frames.
    """
    s = np.linspace(-0.5, 0.5, frames)
    x0, y0 = start
    if is_custom_motion(motion):
        keys = path_keyframes(motion)
        at = np.linspace(0, len(keys) - 1, frames)
        path = np.stack([np.interp(at, np.arange(len(keys)), keys[:, i]) for i in range(2)], 1)
        return path - (path.max(0) + path.min(0)) / 2 + np.array([x0, y0])
    straight = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}
    if motion in straight:
        dx, dy = straight[motion]
        return np.stack([x0 + dx * TRAVEL * s, y0 + dy * TRAVEL * s], 1)
    if motion == "diagonal":
        sign = -1 if phase >= math.pi else 1
        return np.stack([x0 + sign * 0.4 * s, y0 + sign * 0.4 * s], 1)
    if motion == "zigzag":
        swing = np.where((4 * np.arange(frames) // frames) % 2 == 0, -1.0, 1.0) * 0.12
        return np.stack([x0 + TRAVEL * s, y0 + swing], 1)
    if motion == "orbit":
        angle = phase + 2 * math.pi * np.arange(frames) / frames
        return np.stack([x0 + 0.2 * np.cos(angle), y0 + 0.2 * np.sin(angle)], 1)
    if motion == "bounce":
        height = np.abs(np.sin(2 * math.pi * (np.arange(frames) / frames) + phase / 2))
        return np.stack([x0 + 0.15 * s, y0 + 0.2 - 0.4 * height], 1)
    raise ValueError(f"unknown motion '{motion}' (known: {', '.join(KNOWN_MOTIONS + NOVEL_MOTIONS)})")


def _shape_coverage(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Inside test on supersampled offsets from the centre (in pixels)."""
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        half = radius * 0.886
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        r = radius * 1.3
        return (dy <= r * 0.5) & (np.sqrt(3) * dx - dy <= r) & (-np.sqrt(3) * dx - dy <= r)
    if shape == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= (radius * 1.1) ** 2) & (d2 >= (radius * 0.6) ** 2)
    if shape == "star":
        angle = np.arctan2(dy, dx) + math.pi / 2
        spikes = 0.55 + 0.45 * np.abs(np.cos(2.5 * angle))
        return np.sqrt(dx**2 + dy**2) <= radius * 1.25 * spikes
    raise ValueError(f"unknown shape '{shape}'")


def texture(size: int, seed: int) -> np.ndarray:
    """A grey value-noise texture `(3*size, 3*size)` in [70, 190]: visible to optical flow, colourless."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(70, 190, (12, 12))
    cell = -(-size // 4)
    fine = np.kron(coarse, np.ones((cell, cell)))[: 3 * size, : 3 * size]

    return cv2.GaussianBlur(fine.astype(np.float32), (0, 0), max(size / 32, 0.8))


def background_plate(clip: Clip, frames: int, size: int) -> np.ndarray:
    """Background frames `(F, size, size, 3)` float, following the camera pan."""
    if clip.background != "textured":
        return np.broadcast_to(np.array(BACKGROUNDS[clip.background], np.float32), (frames, size, size, 3)).copy()
    plate = texture(size, clip.texture_seed)
    offsets = np.linspace(0, 1, frames)[:, None] * np.array(clip.camera) * size
    out = np.empty((frames, size, size, 3), np.float32)
    for k, (ox, oy) in enumerate(offsets):
        x, y = size + round(float(ox)), size + round(float(oy))
        out[k] = plate[y : y + size, x : x + size, None]
    return out


@dataclass
class RenderedClip:
    """A rendered clip: uint8 frames `(F, H, W, 3)`, bool masks `(F, H, W)`, boxes and centres in [0, 1].

    Boxes are NaN in frames where the object is out of view. Centres are where the object is drawn:
    a camera pan moves a static object across the frame, as a real pan would.
    """

    clip: Clip
    frames: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    centres: np.ndarray
    caption: str = field(default="")


def render(clip: Clip, frames: int = 8, size: int = 32, token: str | None = None) -> RenderedClip:
    """Render `clip` with anti-aliased edges (4x supersampling) and exact masks."""
    path = motion_path(clip.motion, frames, clip.start, clip.phase)
    path = path - np.linspace(0, 1, frames)[:, None] * np.array(clip.camera)
    video = background_plate(clip, frames, size)
    colour = np.array(COLOURS[clip.colour], np.float32)
    radius = SIZES[clip.size] * size / 2
    offsets = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    masks = np.zeros((frames, size, size), bool)
    for k, (cx, cy) in enumerate(path * size):
        inside = _shape_coverage(clip.shape, offsets[None, :] - cx, offsets[:, None] - cy, radius)
        coverage = inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean((1, 3))
        video[k] = video[k] * (1 - coverage[..., None]) + colour * coverage[..., None]
        masks[k] = coverage >= 0.5
    frames_uint8 = np.clip(np.round(video), 0, 255).astype(np.uint8)
    boxes = mask_boxes(masks).astype(np.float32)
    return RenderedClip(clip, frames_uint8, masks, boxes, path.astype(np.float32), clip.caption(token))


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Bounding boxes `(F, 4)` of masks, normalised (xmin/W, ymin/H, (xmax+1)/W, (ymax+1)/H); NaN where empty."""
    masks = np.asarray(masks, bool)
    frames, height, width = masks.shape
    out = np.full((frames, 4), np.nan)
    for k in range(frames):
        ys, xs = np.nonzero(masks[k])
        if len(xs):
            out[k] = (xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height)
    return out


def random_clip(
    rng: np.random.Generator,
    motions: tuple[str, ...] = KNOWN_MOTIONS,
    shapes: tuple[str, ...] = SHAPES,
    colours: tuple[str, ...] = tuple(COLOURS),
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS),
) -> Clip:
    """A random clip whose object stays inside the frame for the whole motion."""
    motion = motions[rng.integers(len(motions))]
    start = (float(rng.uniform(0.4, 0.6)), float(rng.uniform(0.4, 0.6)))
    if motion in ("left", "right"):
        start = (0.5, float(rng.uniform(0.25, 0.75)))
    elif motion in ("up", "down"):
        start = (float(rng.uniform(0.25, 0.75)), 0.5)
    elif motion == "static":
        start = (float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.25, 0.75)))
    return Clip(
        shape=shapes[rng.integers(len(shapes))],
        colour=colours[rng.integers(len(colours))],
        background=backgrounds[rng.integers(len(backgrounds))],
        motion=motion,
        size=list(SIZES)[rng.integers(len(SIZES))],
        start=start,
        phase=float(rng.uniform(0, 2 * math.pi)),
        texture_seed=int(rng.integers(1 << 16)),
    )


def sample_clips(count: int, seed: int, **choices) -> list[Clip]:
    """`count` random clips from a seeded generator (the same seed gives the same clips)."""
    rng = np.random.default_rng(seed)
    return [random_clip(rng, **choices) for _ in range(count)]


def with_motion(clip: Clip, motion: str) -> Clip:
    return replace(clip, motion=motion)


def write_dataset(
    folder: str | os.PathLike, clips: list[Clip], frames: int = 8, size: int = 32, token: str | None = None
) -> Path:
    """Write clips as `name.mp4` + `name.txt` (caption) + `name.json` (clip, boxes, centres) + `name.masks.npz`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, clip in enumerate(clips):
        rendered = render(clip, frames, size, token)
        name = f"{clip.motion}_{clip.colour}_{clip.shape}_{index:03d}"
        write_video(rendered.frames, folder / f"{name}.mp4")
        np.savez_compressed(folder / f"{name}.masks.npz", masks=rendered.masks)
        truth = {"clip": clip.to_dict(), "boxes": rendered.boxes.tolist(), "centres": rendered.centres.tolist()}
        (folder / f"{name}.json").write_text(json.dumps(truth))
        (folder / f"{name}.txt").write_text(rendered.caption)
    return folder


def write_subject_images(folder: str | os.PathLike, clips: list[Clip], size: int = 32) -> Path:
    """Write the first frame of each clip as `name.png` with its exact mask as `masks/name.png` (a subject dataset)."""
    folder = Path(folder)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for index, clip in enumerate(clips):
        rendered = render(clip, 1, size)
        name = f"{clip.colour}_{clip.shape}_{index:03d}"
        Image.fromarray(rendered.frames[0]).save(folder / f"{name}.png")
        Image.fromarray(rendered.masks[0].astype(np.uint8) * 255).save(folder / "masks" / f"{name}.png")
    return folder
