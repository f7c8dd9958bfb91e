"""Datasets of captioned videos: folder of ``name.mp4`` + ``name.txt`` pairs, or a metadata CSV / JSONL."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from motiontune.errors import InputError
from motiontune.io.video import parse_sampling, probe_video, read_video, sample_indices

__all__ = [
    "METADATA_FILENAMES",
    "VIDEO_EXTENSIONS",
    "VideoDataset",
    "VideoItem",
    "check_items",
    "check_video_source",
    "find_video_items",
]

#: Extensions recognised as videos in the folder-of-pairs layout.
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif")
#: Metadata files looked up inside a dataset folder, in order of preference.
METADATA_FILENAMES = ("metadata.csv", "metadata.jsonl", "captions.csv")
_REQUIRED_FIELDS = ("video_path", "caption")
#: Smallest frame side a training video may have: below it, resizing to the training size invents the frames.
MIN_VIDEO_SIDE = 16
_NO_VIDEOS = "no videos found (expected name.mp4 + name.txt pairs or metadata.csv/.jsonl)"


@dataclass(frozen=True)
class VideoItem:
    """One training clip: a video file (or folder of frames) and its caption."""

    path: Path
    caption: str


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not valid UTF-8 text ({_one_line(exc)})") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read file ({_one_line(exc.strerror or exc)})") from exc


def _inside(folder: Path, path: Path) -> bool:
    """Whether `path`, read lexically (no symlinks followed), lies inside `folder`."""
    folder, path = (Path(os.path.normpath(os.path.abspath(p))) for p in (folder, path))
    return path == folder or folder in path.parents


def check_video_source(path: Path, where: str | Path | None = None) -> None:
    """A video path must be a regular file or a folder of frames: a FIFO, socket or device would block or
    stream forever, so it is refused by type before anything opens it."""
    where = where or path
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"{where}: video file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"{where}: cannot read {path} ({_one_line(exc.strerror or exc)})") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"{where}: {path} is not a regular file (a FIFO, socket or device); give a video file")


def _make_item(meta: Path, line: int, video: object, caption: object, allow_outside: bool) -> VideoItem:
    """Validate one metadata row (``video`` relative to the metadata file's folder, and inside it unless
    ``allow_outside``)."""
    where = f"{meta}:{line}"
    if not isinstance(video, str) or not video.strip():
        raise InputError(f"{where}: empty or invalid 'video_path' value {_one_line(repr(video))}")
    if not isinstance(caption, str):
        raise InputError(f"{where}: 'caption' must be a string, got {_one_line(repr(caption))}")
    if not caption.strip():
        raise InputError(f"{where}: empty caption for {video.strip()}")
    video_path = meta.parent / video.strip()
    if not allow_outside and not _inside(meta.parent, video_path):
        raise InputError(
            f"{where}: video_path {video.strip()!r} lies outside the dataset folder {meta.parent} "
            "(pass --allow-outside-data to train on it)"
        )
    check_video_source(video_path, where)
    return VideoItem(path=video_path, caption=caption.strip())


def _items_from_csv(meta: Path, allow_outside: bool) -> list[VideoItem]:
    text = _read_text(meta)
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames or []
        missing = [f for f in _REQUIRED_FIELDS if f not in [h.strip() for h in header]]
        if missing:
            found = _one_line(",".join(header))
            raise InputError(f"{meta}:1: missing column(s) {', '.join(missing)} (header is {found!r})")
        reader.fieldnames = [h.strip() for h in header]
        items = []
        for row in reader:
            absent = [f for f in _REQUIRED_FIELDS if row.get(f) is None]
            if absent:
                raise InputError(f"{meta}:{reader.line_num}: missing value(s) for {', '.join(absent)}")
            items.append(_make_item(meta, reader.line_num, row["video_path"], row["caption"], allow_outside))
    except csv.Error as exc:
        raise InputError(f"{meta}:{reader.line_num}: malformed CSV ({_one_line(exc)})") from exc
    return items


def _items_from_jsonl(meta: Path, allow_outside: bool) -> list[VideoItem]:
    items = []
    for number, line in enumerate(_read_text(meta).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{meta}:{number}: invalid JSON ({_one_line(exc)})") from exc
        if not isinstance(record, dict):
            raise InputError(f"{meta}:{number}: expected a JSON object with video_path and caption")
        absent = [f for f in _REQUIRED_FIELDS if f not in record]
        if absent:
            raise InputError(f"{meta}:{number}: missing field(s) {', '.join(absent)}")
        items.append(_make_item(meta, number, record["video_path"], record["caption"], allow_outside))
    return items


def _items_from_metadata(meta: Path, allow_outside: bool = False) -> list[VideoItem]:
    read = _items_from_jsonl if meta.suffix.lower() == ".jsonl" else _items_from_csv
    items = read(meta, allow_outside)
    if not items:
        raise InputError(f"{meta}: {_NO_VIDEOS}")
    return items


def _items_from_pairs(root: Path) -> list[VideoItem]:
    videos = sorted(
        p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in VIDEO_EXTENSIONS
    )
    if not videos:
        raise InputError(f"{root}: {_NO_VIDEOS}")
    items = []
    for video in videos:
        caption_file = video.with_suffix(".txt")
        if not caption_file.is_file():
            raise InputError(f"{video}: missing caption file {caption_file.name}")
        caption = _read_text(caption_file).strip()
        if not caption:
            raise InputError(f"{caption_file}: empty caption")
        items.append(VideoItem(path=video, caption=caption))
    return items


def _single_video_item(video: Path) -> VideoItem:
    caption_file = video.with_suffix(".txt")
    if caption_file.is_file():
        caption = _read_text(caption_file).strip()
        if not caption:
            raise InputError(f"{caption_file}: empty caption")
        return VideoItem(path=video, caption=caption)
    for name in METADATA_FILENAMES:
        meta = video.parent / name
        if meta.is_file():
            rows = [item for item in _items_from_metadata(meta) if Path(item.path).resolve() == video.resolve()]
            if rows:
                return rows[0]
    raise InputError(f"{video}: no caption (add {caption_file.name} or a row in the folder's captions.csv)")


def find_video_items(root: str | os.PathLike[str], allow_outside: bool = False) -> list[VideoItem]:
    """List the captioned videos of a dataset, sorted by path.

    ``root`` is a folder of ``name.<ext>`` + ``name.txt`` pairs, a folder holding ``metadata.csv``,
    ``metadata.jsonl`` or ``captions.csv`` (fields ``video_path,caption``, paths relative to the folder),
    the path of such a .csv / .jsonl file, or one video file (captioned by ``name.txt`` beside it or by
    its row in its folder's metadata). Metadata rows must name videos inside the metadata file's folder
    unless ``allow_outside``. Raises InputError (one line naming the file) on any problem.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder")
    if not (root.is_file() or root.is_dir()):
        raise InputError(f"{root}: not a regular file or folder (a FIFO, socket or device)")
    if root.suffix.lower() in VIDEO_EXTENSIONS and not root.is_dir():
        return [_single_video_item(root)]
    if root.is_file():
        if root.suffix.lower() not in (".csv", ".jsonl"):
            raise InputError(f"{root}: expected a dataset folder or a metadata .csv/.jsonl file")
        items = _items_from_metadata(root, allow_outside)
    else:
        present = [root / name for name in METADATA_FILENAMES if (root / name).is_file()]
        if len(present) > 1 and present[1].name == "metadata.jsonl":
            raise InputError(f"{root}: both metadata.csv and metadata.jsonl found, keep only one")
        items = _items_from_metadata(present[0], allow_outside) if present else _items_from_pairs(root)
    return sorted(items, key=lambda item: (str(item.path), item.caption))


def check_items(items: list[VideoItem], num_frames: int, sampling: str = "uniform") -> None:
    """Open every video once and raise the first InputError / ConfigError (too few frames, frames smaller
    than `MIN_VIDEO_SIDE`), so a training run can fail before it writes anything."""
    if not items:
        raise InputError("empty dataset: no videos to train on")
    parse_sampling(sampling)
    for item in items:
        frames, height, width = probe_video(item.path)
        if frames and min(height, width) < MIN_VIDEO_SIDE:
            raise InputError(
                f"{item.path}: frames are {width}x{height} pixels, too small to train on "
                f"(at least {MIN_VIDEO_SIDE} on each side)"
            )
        sample_indices(frames, num_frames, sampling, item.path)


class VideoDataset(Dataset):
    """Captioned clips decoded on the fly to (num_frames, 3, height, width) float tensors in [-1, 1]."""

    def __init__(
        self, items: list[VideoItem], num_frames: int, height: int, width: int, sampling: str = "uniform"
    ) -> None:
        if len(items) == 0:
            raise InputError("empty dataset: no videos to train on")
        self.items = list(items)
        self.num_frames = num_frames
        self.height = height
        self.width = width
        self.sampling = sampling

    @classmethod
    def from_root(
        cls, root: str | os.PathLike[str], num_frames: int, height: int, width: int, sampling: str = "uniform"
    ) -> VideoDataset:
        """Build a dataset from anything :func:`find_video_items` accepts."""
        return cls(find_video_items(root), num_frames, height, width, sampling)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        item = self.items[index]
        pixels = read_video(item.path, self.num_frames, self.height, self.width, self.sampling)
        return {"pixels": pixels, "caption": item.caption, "path": str(item.path)}
