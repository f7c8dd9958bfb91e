"""Tests for motiontune.io.data: dataset layouts, validation errors, VideoDataset and check_items."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from motiontune.errors import ConfigError, InputError
from motiontune.io.data import VideoDataset, VideoItem, check_items, find_video_items
from motiontune.io.video import read_video, write_video

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_videos"
REFERENCE_CAPTIONS = {
    "car_turn.mp4": "A car is running on the road",
    "cat.mp4": "A cat is moving in the sunshine.",
    "dog.mp4": "A dog is sitting.",
    "eiffel.mp4": "Drone flyover of the Eiffel Tower, sunset.",
    "gold_fish.mp4": "Gold fish are swimming in the fish tank.",
}


def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference videos not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Encoded 10-frame and 4-frame clips (as bytes, copied into each test's folder)."""
    folder = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    long = write_video(rng.integers(0, 256, (10, 24, 32, 3), dtype=np.uint8), folder / "long.mp4")
    gif = write_video(rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8), folder / "long.gif")
    short = write_video(rng.integers(0, 256, (4, 24, 32, 3), dtype=np.uint8), folder / "short.mp4")
    return {"mp4": long.read_bytes(), "gif": gif.read_bytes(), "short": short.read_bytes()}


def assert_one_line_naming(exc: BaseException, name: str) -> None:
    message = str(exc)
    assert name in message, message
    assert "\n" not in message and "\r" not in message, message


# ---------------------------------------------------------------------------------------------- layouts


def test_folder_of_pairs(tmp_path: Path, clip_bytes: dict[str, bytes]) -> None:
    (tmp_path / "b_walk.mp4").write_bytes(clip_bytes["mp4"])
    (tmp_path / "b_walk.txt").write_text("  a person walking\n\n", encoding="utf-8")
    (tmp_path / "a_spin.GIF").write_bytes(clip_bytes["gif"])
    (tmp_path / "a_spin.txt").write_text("\ufeffa top spinning", encoding="utf-8")  # BOM is dropped
    (tmp_path / "README.md").write_text("not a video")
    (tmp_path / ".b_walk.mp4.tmp-1.mp4").write_bytes(b"")  # hidden leftovers are ignored
    (tmp_path / "sub").mkdir()

    items = find_video_items(tmp_path)
    assert items == [
        VideoItem(tmp_path / "a_spin.GIF", "a top spinning"),
        VideoItem(tmp_path / "b_walk.mp4", "a person walking"),
    ]
    assert find_video_items(str(tmp_path)) == items  # str paths work too


def test_metadata_csv(tmp_path: Path, clip_bytes: dict[str, bytes]) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "z.mp4").write_bytes(clip_bytes["mp4"])
    (tmp_path / "clips" / "y.mp4").write_bytes(clip_bytes["mp4"])
    (tmp_path / "metadata.csv").write_text(
        'video_path,caption,extra\nclips/z.mp4,"zoom in, slowly",1\nclips/y.mp4, a yellow ball ,2\n',
        encoding="utf-8",
    )
    expected = [
        VideoItem(tmp_path / "clips" / "y.mp4", "a yellow ball"),
        VideoItem(tmp_path / "clips" / "z.mp4", "zoom in, slowly"),
    ]
    assert find_video_items(tmp_path) == expected
    assert find_video_items(tmp_path / "metadata.csv") == expected  # layout (c): the file itself


def test_metadata_jsonl(tmp_path: Path, clip_bytes: dict[str, bytes]) -> None:
    (tmp_path / "one.mp4").write_bytes(clip_bytes["mp4"])
    (tmp_path / "two.gif").write_bytes(clip_bytes["gif"])
    lines = [
        json.dumps({"video_path": "two.gif", "caption": "second clip", "fps": 8}),
        "",
        json.dumps({"video_path": "one.mp4", "caption": "first clip"}),
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    expected = [VideoItem(tmp_path / "one.mp4", "first clip"), VideoItem(tmp_path / "two.gif", "second clip")]
    assert find_video_items(tmp_path) == expected

    # A metadata file elsewhere: paths are relative to the metadata file's own folder, and must stay inside
    # it unless the user opts in.
    other = tmp_path / "lists" / "train.jsonl"
    other.parent.mkdir()
    other.write_text(json.dumps({"video_path": "../one.mp4", "caption": "first clip"}) + "\n")
    with pytest.raises(InputError, match=r"lies outside the dataset folder .*--allow-outside-data") as error:
        find_video_items(other)
    assert_one_line_naming(error.value, f"{other}:1")
    assert find_video_items(other, allow_outside=True) == [
        VideoItem(tmp_path / "lists" / ".." / "one.mp4", "first clip")
    ]


@pytest.mark.parametrize("row", ["../../../../etc/passwd", "/dev/zero", "sub/../../one.mp4"])
def test_metadata_rows_outside_the_folder_are_refused(tmp_path: Path, clip_bytes: dict[str, bytes], row: str) -> None:
    (tmp_path / "one.mp4").write_bytes(clip_bytes["mp4"])
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.csv").write_text(f"video_path,caption\n{row},a clip\n")
    with pytest.raises(InputError, match="outside the dataset folder") as error:
        find_video_items(data)
    assert_one_line_naming(error.value, "metadata.csv:2")


def test_special_files_are_refused_before_opening(tmp_path: Path, clip_bytes: dict[str, bytes]) -> None:
    """A FIFO would block the reader forever: refused by type in metadata rows, as a single video and in reads."""
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "metadata.csv").write_text("video_path,caption\npipe.mp4,a clip\n")
    with pytest.raises(InputError, match="not a regular file") as error:
        find_video_items(tmp_path)
    assert_one_line_naming(error.value, "metadata.csv:2")
    with pytest.raises(InputError, match="not a regular file"):
        find_video_items(tmp_path / "pipe.mp4")
    with pytest.raises(InputError, match="not a regular file"):
        read_video(tmp_path / "pipe.mp4", 2, 16, 16)
    with pytest.raises(InputError, match="not a regular file"):
        find_video_items(Path("/dev/null"))


def test_tiny_frames_are_refused(tmp_path: Path) -> None:
    path = write_video(np.zeros((8, 1, 1, 3), np.uint8), tmp_path / "dot.gif")
    with pytest.raises(InputError, match="1x1 pixels, too small to train on") as error:
        check_items([VideoItem(path, "a dot")], 4)
    assert_one_line_naming(error.value, "dot.gif")


def test_reference_folder_via_captions_csv() -> None:
    root = reference_dir()
    items = find_video_items(root)
    assert len(items) == 5
    assert {item.path.name: item.caption for item in items} == REFERENCE_CAPTIONS
    assert [item.path.name for item in items] == sorted(REFERENCE_CAPTIONS)
    assert all(item.path.is_file() for item in items)
    check_items(items, num_frames=16)  # every shipped clip has 16 frames
    with pytest.raises(InputError, match=r"car_turn\.mp4"):
        check_items(items, num_frames=17)  # the first failing clip is named


# ----------------------------------------------------------------------------------------------- errors


def test_root_missing(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file") as info:
        find_video_items(tmp_path / "absent")
    assert_one_line_naming(info.value, "absent")


def test_no_videos_found(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a caption without a video")
    with pytest.raises(InputError, match=r"no videos found \(expected name.mp4 \+ name.txt pairs") as info:
        find_video_items(tmp_path)
    assert_one_line_naming(info.value, tmp_path.name)


def test_video_without_caption_file(tmp_path: Path, clip_bytes: dict[str, bytes]) -> None:
    (tmp_path / "a.mp4").write_bytes(clip_bytes["mp4"])
    (tmp_path / "a.txt").write_text("fine")
    (tmp_path / "lonely.mp4").write_bytes(clip_bytes["mp4"])
    with pytest.raises(InputError, match=r"missing caption file lonely\.txt") as info:
        find_video_items(tmp_path)
    assert_one_line_naming(info.value, "lonely.mp4")


def test_empty_caption_file(tmp_path: Path, clip_bytes: dict[str, bytes]) -> None:
    (tmp_path / "a.mp4").write_bytes(clip_bytes["mp4"])
    (tmp_path / "a.txt").write_text("  \n\t\n")
    with pytest.raises(InputError, match="empty caption") as info:
        find_video_items(tmp_path)
    assert_one_line_naming(info.value, "a.txt")


@pytest.mark.parametrize(
    ("text", "match", "line"),
    [
        ("video_path,text\na.mp4,hello\n", r"missing column\(s\) caption", 1),
        ("path,caption\na.mp4,hello\n", r"missing column\(s\) video_path", 1),
        ("video_path,caption\na.mp4,hello\na.mp4\n", r"missing value\(s\) for caption", 3),
        ("video_path,caption\na.mp4,hello\na.mp4,   \n", "empty caption", 3),
        ("video_path,caption\na.mp4,hello\n,orphan caption\n", "video_path", 3),
        ("video_path,caption\na.mp4,hello\n\nmissing.mp4,where is it\n", "video file not found", 4),
    ],
)
def test_bad_metadata_csv(tmp_path: Path, clip_bytes: dict[str, bytes], text: str, match: str, line: int) -> None:
    (tmp_path / "a.mp4").write_bytes(clip_bytes["mp4"])
    (tmp_path / "metadata.csv").write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=match) as info:
        find_video_items(tmp_path)
    assert_one_line_naming(info.value, f"metadata.csv:{line}:")


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ('{"video_path": "a.mp4"}', r"missing field\(s\) caption"),
        ('{"caption": "no path"}', r"missing field\(s\) video_path"),
        ('{"video_path": "a.mp4", "caption": ""}', "empty caption"),
        ('{"video_path": "gone.mp4", "caption": "x"}', "video file not found"),
        ('{"video_path": "a.mp4", "caption": 3}', "caption"),
        ("{not json", "invalid JSON"),
        ('["a.mp4", "list"]', "JSON object"),
    ],
)
def test_bad_metadata_jsonl(tmp_path: Path, clip_bytes: dict[str, bytes], record: str, match: str) -> None:
    (tmp_path / "a.mp4").write_bytes(clip_bytes["mp4"])
    good = json.dumps({"video_path": "a.mp4", "caption": "ok"})
    (tmp_path / "metadata.jsonl").write_text(f"{good}\n{record}\n", encoding="utf-8")
    with pytest.raises(InputError, match=match) as info:
        find_video_items(tmp_path)
    assert_one_line_naming(info.value, "metadata.jsonl:2:")


def test_metadata_without_rows_and_ambiguous_metadata(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("video_path,caption\n")
    with pytest.raises(InputError, match="no videos found") as info:
        find_video_items(tmp_path)
    assert_one_line_naming(info.value, "metadata.csv")

    (tmp_path / "metadata.jsonl").write_text("")
    with pytest.raises(InputError, match=r"both metadata\.csv and metadata\.jsonl") as info:
        find_video_items(tmp_path)
    assert_one_line_naming(info.value, tmp_path.name)

    (tmp_path / "list.txt").write_text("a.mp4")
    with pytest.raises(InputError, match=r"metadata \.csv/\.jsonl") as info:
        find_video_items(tmp_path / "list.txt")
    assert_one_line_naming(info.value, "list.txt")


# ------------------------------------------------------------------------------------- dataset and checks


def test_video_dataset_items_and_batches(tmp_path: Path, clip_bytes: dict[str, bytes]) -> None:
    for name, key in (("a.mp4", "mp4"), ("b.gif", "gif")):
        (tmp_path / name).write_bytes(clip_bytes[key])
        (tmp_path / name).with_suffix(".txt").write_text(f"caption {name}")
    dataset = VideoDataset.from_root(tmp_path, num_frames=4, height=16, width=24, sampling="stride:2")
    assert len(dataset) == 2

    sample = dataset[1]
    assert set(sample) == {"pixels", "caption", "path"}
    assert sample["caption"] == "caption b.gif"
    assert sample["path"] == str(tmp_path / "b.gif")
    assert sample["pixels"].shape == (4, 3, 16, 24) and sample["pixels"].dtype == torch.float32
    assert float(sample["pixels"].min()) >= -1.0 and float(sample["pixels"].max()) <= 1.0

    batch = next(iter(DataLoader(dataset, batch_size=2, shuffle=False)))
    assert batch["pixels"].shape == (2, 4, 3, 16, 24)
    assert batch["caption"] == ["caption a.mp4", "caption b.gif"]


def test_video_dataset_is_lazy_but_rejects_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="empty dataset"):
        VideoDataset([], num_frames=4, height=8, width=8)
    # Nothing is opened at construction time: a broken item only fails when it is read.
    dataset = VideoDataset([VideoItem(tmp_path / "gone.mp4", "x")], num_frames=4, height=8, width=8)
    with pytest.raises(InputError) as info:
        dataset[0]
    assert_one_line_naming(info.value, "gone.mp4")


def test_check_items_fails_fast_on_the_first_bad_video(tmp_path: Path, clip_bytes: dict[str, bytes]) -> None:
    good = tmp_path / "good.mp4"
    good.write_bytes(clip_bytes["mp4"])
    short = tmp_path / "short.mp4"
    short.write_bytes(clip_bytes["short"])
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video at all\n" * 10)
    items = [VideoItem(good, "g"), VideoItem(short, "s"), VideoItem(broken, "b")]

    check_items(items[:1], num_frames=10)
    check_items(items[:1], num_frames=5, sampling="stride:2")  # needs frames 0..8
    check_items(items[:1], num_frames=4, sampling="stride:3")  # frames 0, 3, 6, 9: exactly enough
    with pytest.raises(InputError, match="video has 10 frames, need at least 13") as info:
        check_items(items[:1], num_frames=4, sampling="stride:4")
    assert_one_line_naming(info.value, "good.mp4")
    with pytest.raises(InputError, match="video has 4 frames, need at least 8") as info:
        check_items(items, num_frames=8)
    assert_one_line_naming(info.value, "short.mp4")
    with pytest.raises(InputError, match="cannot read video") as info:
        check_items([items[0], items[2]], num_frames=8)
    assert_one_line_naming(info.value, "broken.mp4")
    with pytest.raises(ConfigError, match="invalid sampling"):
        check_items(items, num_frames=4, sampling="every-other")
    with pytest.raises(InputError, match="empty dataset"):
        check_items([], num_frames=4)
