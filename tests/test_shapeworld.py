"""ShapeWorld: deterministic rendering with exact ground truth, captions, datasets, held-out novelties."""

from __future__ import annotations

import json

import numpy as np
import pytest

from motiontune.app.cli import main
from motiontune.io.data import find_video_items
from motiontune.lab.shapeworld import (
    KNOWN_MOTIONS,
    NOVEL_MOTIONS,
    NOVEL_SHAPES,
    SHAPES,
    Clip,
    motion_path,
    render,
    sample_clips,
    write_dataset,
)


def test_captions_use_the_world_vocabulary():
    clip = Clip("circle", "red", "white", "left")
    assert clip.caption() == "a red circle moving left on a white background"
    assert Clip("square", "blue", "gray", "static").caption() == "a blue square static on a gray background"
    assert Clip("star", "green", "black", "zigzag").caption("sks") == "a green star doing sks on a black background"


def test_rendering_is_deterministic_and_masks_match_the_colour():
    clip = sample_clips(1, seed=3)[0]
    first, second = render(clip, 8, 32), render(clip, 8, 32)
    assert np.array_equal(first.frames, second.frames) and np.array_equal(first.masks, second.masks)
    assert first.frames.shape == (8, 32, 32, 3) and first.frames.dtype == np.uint8
    inside = first.frames[first.masks].astype(int)
    from motiontune.lab.shapeworld import COLOURS

    assert np.abs(inside.mean(0) - np.array(COLOURS[clip.colour])).max() < 40


@pytest.mark.parametrize("motion", KNOWN_MOTIONS + NOVEL_MOTIONS)
def test_centres_follow_the_motion_and_boxes_hold_the_mask(motion):
    rendered = render(Clip("square", "red", "white", motion, size="large"), 8, 64)
    ys, xs = np.nonzero(rendered.masks[3])
    assert abs(xs.mean() / 64 + 0.5 / 64 - rendered.centres[3, 0]) < 0.03
    x1, y1, x2, y2 = rendered.boxes[3]
    assert x1 * 64 == xs.min() and x2 * 64 == xs.max() + 1 and y1 * 64 == ys.min() and y2 * 64 == ys.max() + 1
    displacement = rendered.centres[-1] - rendered.centres[0]
    expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "static": (0, 0)}
    if motion in expected:
        assert np.allclose(np.sign(np.round(displacement, 3)), expected[motion])


def test_camera_pan_moves_the_texture_and_limits_are_checked():
    still = render(Clip("circle", "red", "textured", "static"), 8, 32)
    panned = render(Clip("circle", "red", "textured", "static", camera=(0.25, 0.0)), 8, 32)
    assert np.array_equal(still.frames[0], panned.frames[0])
    assert np.abs(panned.frames[-1][:, :-8].astype(int) - still.frames[-1][:, 8:].astype(int)).mean() < 12
    with pytest.raises(ValueError, match="camera pan must be within"):
        Clip("circle", "red", "textured", "static", camera=(1.5, 0.0))


def test_out_of_view_frames_have_no_box():
    rendered = render(Clip("circle", "red", "white", "static", start=(0.5, 0.5), camera=(1.0, 0.0)), 8, 32)
    assert np.isnan(rendered.boxes[-1]).all() and not rendered.masks[-1].any()


def test_base_training_clips_hold_out_novel_motions_and_shapes():
    clips = sample_clips(300, seed=0, motions=KNOWN_MOTIONS, shapes=SHAPES)
    assert {c.motion for c in clips} == set(KNOWN_MOTIONS) and {c.shape for c in clips} == set(SHAPES)
    assert not {c.motion for c in clips} & set(NOVEL_MOTIONS) and not {c.shape for c in clips} & set(NOVEL_SHAPES)
    for clip in clips[:50]:
        rendered = render(clip, 8, 32)
        assert rendered.masks.any(axis=(1, 2)).all(), clip


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown motion 'spin'"):
        motion_path("spin", 8)
    with pytest.raises(ValueError, match="unknown shape"):
        render(Clip("hexagon", "red", "white", "static"))


def test_written_dataset_loads_through_the_data_layer(tmp_path):
    clips = sample_clips(3, seed=1, motions=("zigzag",))
    write_dataset(tmp_path, clips, 8, 32, token="sks")
    items = find_video_items(tmp_path)
    assert len(items) == 3 and all("doing sks" in item.caption for item in items)
    truth = json.loads(items[0].path.with_suffix(".json").read_text())
    assert truth["clip"]["motion"] == "zigzag" and len(truth["boxes"]) == 8
    masks = np.load(items[0].path.with_suffix(".masks.npz"), allow_pickle=False)["masks"]
    assert masks.shape == (8, 32, 32) and masks.dtype == bool


def test_world_render_command(tmp_path, capsys):
    assert main(["world", "render", "--motion", "orbit", "--count", "2", "--output", str(tmp_path / "o")]) == 0
    assert len(find_video_items(tmp_path / "o")) == 2
    assert main(["world", "render", "--motion", "spin", "--output", str(tmp_path / "bad")]) == 2
    assert "--motion: unknown value(s) spin" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_named_motions_span_the_clip_whatever_its_length():
    """The zigzag swings four times over any clip (at 8 frames every 2 frames, as the UNet3D model was
    measured on); on a 17-frame Wan clip its swings land on different latent frames (1 + 4 + 4 + 4 + 4)."""
    swing = lambda frames: np.sign(motion_path("zigzag", frames)[:, 1] - 0.5)  # noqa: E731
    assert swing(8).tolist() == [-1, -1, 1, 1, -1, -1, 1, 1]
    assert swing(17).tolist() == [-1] * 5 + [1] * 4 + [-1] * 4 + [1] * 4
    orbit = motion_path("orbit", 17)
    assert np.allclose(orbit[0], orbit[-1], atol=0.1) and np.ptp(orbit[:, 0]) > 0.35
