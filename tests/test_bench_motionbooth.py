"""`motiontune bench motionbooth` in its reduced smoke configuration (tiny model, 1 step, 2 sampling steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from motiontune.app.bench_common import wilson_interval
from motiontune.app.bench_motionbooth import (
    BEGIN,
    CLASS_WORD,
    END,
    PANS,
    TRAINING_BACKGROUND,
    bench_motionbooth,
    box_requests,
    camera_requests,
    markdown_tables,
    mean_interval,
    run_row,
    subject_caption,
    subject_images,
    subject_prompts,
    summarise,
    write_report_section,
)
from motiontune.app.cli import main
from motiontune.errors import ConfigError
from motiontune.lab.shapeworld import VOCABULARY, render

SMOKE = {"steps": 1, "prompts": 1, "seeds": 1, "sampling": 2}


def test_smoke_subject_row_runs_in_a_fresh_process_and_replaces_its_report_section(tiny_model_dir, tmp_path):
    report = tmp_path / "report.md"
    report.write_text(f"# Title\n\nkept\n\n{BEGIN}\nold table\n{END}\n\ntail kept\n")
    results = bench_motionbooth(
        tmp_path / "work", str(tiny_model_dir), ["subject, motionbooth"], **SMOKE, report=report, progress=False
    )
    (row,) = results
    assert row["row"] == "subject, motionbooth" and row["task"] == "subject"
    for key in ("shape_accuracy", "colour_accuracy", "motion_accuracy", "background_accuracy", "background_leakage"):
        assert row[key] in (0.0, 1.0)  # one video: each score is a yes or a no
    assert row["train_seconds"] > 0 and 0 < row["adapter_mb"] < 20 and row["peak_memory_mb"] > 100
    assert row["seconds_per_video"] > 0 and row["training_seed"] == 0 and row["videos"] == 1
    assert json.loads((tmp_path / "work" / "results.json").read_text()) == results
    text = report.read_text()
    assert "old table" not in text and "| subject, motionbooth |" in text and "| background leakage |" in text
    assert text.startswith("# Title\n\nkept") and text.rstrip().endswith("tail kept")


def test_control_rows_measure_box_iou_and_pan_error(tiny_model_dir, tmp_path):
    boxes = run_row("boxes, box edit", tmp_path, str(tiny_model_dir), **SMOKE)
    camera = run_row("camera, latent shift", tmp_path, str(tiny_model_dir), **SMOKE)
    # frames at IoU >= 0.5 alone lift the mean IoU to at least half their share (direction tests below)
    assert boxes["box_iou"] >= 0.5 * boxes["box_hit_rate"] and boxes["box_iou"] <= 1
    assert boxes["train_seconds"] is None and boxes["adapter_mb"] is None
    first_pan = np.linalg.norm(PANS["left"])  # the first camera request pans left
    assert camera["pan_error"] >= 0
    assert camera["relative_pan_error"] == pytest.approx(camera["pan_error"] / first_pan, abs=1e-3)
    tables = markdown_tables([boxes, camera])
    assert "| boxes, box edit |" in tables and "| camera, latent shift |" in tables
    assert "box IoU" in tables and "pan error" in tables and "shape acc." not in tables


def test_on_the_shipped_model_the_controls_beat_the_base_model(tmp_path):
    """Direction, not range: the box edit puts objects in their boxes and the late latent shift pans the camera
    better than the base model given the same prompts (4 videos each; bench numbers in docs/shapeworld.md)."""
    counts = {"steps": None, "prompts": 4, "seeds": 1, "sampling": 25}
    rows = ("boxes, base model", "boxes, box edit", "camera, base model", "camera, latent shift at t 400-100")
    score = {name: run_row(name, tmp_path, None, **counts) for name in rows}
    assert score["boxes, box edit"]["box_iou"] > score["boxes, base model"]["box_iou"] + 0.2
    assert score["camera, latent shift at t 400-100"]["pan_error"] < score["camera, base model"]["pan_error"]


def test_the_late_window_camera_row_shifts_only_between_t_400_and_100(tiny_model_dir):
    from motiontune.app.api import open_backbone
    from motiontune.app.bench_motionbooth import ROWS, _control_hooks

    backbone = open_backbone(str(tiny_model_dir))
    clip = camera_requests(1)[0]
    (late,) = _control_hooks(backbone, ROWS["camera, latent shift at t 400-100"], clip, None, 8, 25, 0)
    (official,) = _control_hooks(backbone, ROWS["camera, latent shift"], clip, None, 8, 25, 0)
    late_levels = [late.noise_levels[i] for i in late.window_steps]
    assert late_levels and all(0.1 < level <= 0.4 for level in late_levels)
    assert all(0.6 < official.noise_levels[i] <= 0.8 for i in official.window_steps)


def test_requests_ask_for_what_each_claim_needs():
    assert CLASS_WORD in VOCABULARY
    assert {(c.shape, c.background) for c in subject_images()} == {(CLASS_WORD, TRAINING_BACKGROUND)}
    prompts = subject_prompts(12)
    assert len({(c.motion, c.background) for c in prompts}) == 12
    assert all(c.background != TRAINING_BACKGROUND for c in prompts)
    assert subject_caption(prompts[1]) == "a sks star moving right on a black background"
    left_to_right, top_to_bottom, diagonal = (render(c, 8, 32).boxes for c in box_requests(3))
    assert np.all(np.diff(left_to_right[:, 0]) > 0) and np.ptp(left_to_right[:, 1]) == 0
    assert np.all(np.diff(top_to_bottom[:, 1]) > 0) and np.ptp(top_to_bottom[:, 0]) == 0
    assert np.all(np.diff(diagonal[:, 0]) > 0) and np.all(np.diff(diagonal[:, 1]) > 0)
    assert {c.camera for c in camera_requests(5)} == set(PANS.values())


def test_report_section_is_appended_to_a_new_file_with_intervals_and_dashes_for_what_was_not_measured(tmp_path):
    scores = {
        "subject_accuracy": [0.0, 1.0],
        "shape_accuracy": [0.0, 1.0],
        "colour_accuracy": [1.0, 1.0],
        "motion_accuracy": [1.0, 1.0],
        "background_accuracy": [1.0, 0.0],
        "background_leakage": [0.0, 0.0],
    }
    results = [
        {"row": "subject, base model", "task": "subject", "training_seed": 0, "train_seconds": None,
         "adapter_mb": None, "videos": 2, "per_video": scores, "seconds_per_video": 0.4, "peak_memory_mb": 900.5,
         **{key: sum(values) / 2 for key, values in scores.items()}},
    ]  # fmt: skip
    write_report_section(tmp_path / "new.md", results, None, 12, 2, 25, "model-dir")
    text = (tmp_path / "new.md").read_text()
    assert text.startswith(
        f"## MotionBooth bench\n\n{BEGIN}\n`motiontune bench motionbooth --training-seeds 1 --prompts"
    )
    low, high = wilson_interval(1, 2)
    interval = f"0.50 [{low:.2f}, {high:.2f}]"
    assert f"| subject, base model | 1 x 2 | {interval} | {interval} | 1.00 [" in text
    assert "| - | - | 0.4 | 900.5 |" in text
    assert text.rstrip().endswith(END)


def test_rows_pool_their_training_seeds_with_intervals():
    def run(seed, shapes, ious):
        return {"row": "r", "task": "subject", "training_seed": seed, "videos": len(shapes),
                "train_seconds": 10.0 + seed, "adapter_mb": 1.0, "seconds_per_video": 0.5, "peak_memory_mb": 100.0,
                "per_video": {"shape_accuracy": shapes, "box_iou": ious}}  # fmt: skip

    (entry,) = summarise([run(0, [1.0, 0.0], [0.2, 0.4]), run(1, [1.0, 1.0], [0.6, 0.8])])
    assert entry["training_seeds"] == 2 and entry["videos"] == 4
    assert entry["shape_accuracy"] == 0.75 and entry["shape_accuracy_interval"] == wilson_interval(3, 4)
    assert entry["box_iou"] == pytest.approx(0.5)
    half = 1.96 * np.std([0.2, 0.4, 0.6, 0.8], ddof=1) / 2
    assert entry["box_iou_interval"] == pytest.approx((0.5 - half, 0.5 + half))
    assert entry["train_seconds"] == 10.5


def test_reports_name_the_shipped_model_as_such_and_any_other_by_its_folder(tmp_path):
    from motiontune.app.api import default_model_dir
    from motiontune.app.bench_common import model_label

    assert model_label(str(default_model_dir())) == "the shipped model"
    assert model_label(str(tmp_path)) == f"`{tmp_path}`"


def test_an_unknown_row_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown bench row.*boxes, magic.*known: subject, base model"):
        bench_motionbooth(tmp_path, "unused", ["boxes, magic"], progress=False)
    assert main(["bench", "motionbooth", "--rows", "nope", "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "unknown bench row(s) nope" in error


def test_a_mean_scores_interval_stays_inside_what_the_score_can_be():
    """Three videos with no frame in its box and one with all: mean 0.25, sd 0.5, half-width 1.96 * 0.5 / 2 = 0.49."""
    low, high = mean_interval([0.0, 0.0, 0.0, 1.0], bounds=(0.0, 1.0))
    assert (low, high) == (0.0, pytest.approx(0.74))
    assert mean_interval([0.9, 1.0, 1.0, 1.0], bounds=(0.0, 1.0))[1] == 1.0
    assert mean_interval([0.0, 0.4])[0] == 0.0  # a pan error is never negative (unbounded: 0.2 - 0.39)
