"""`motiontune bench shapeworld` in its reduced smoke configuration (the full run lives in docs/shapeworld.md)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from motiontune.app.bench import BEGIN, END, bench_prompts, bench_shapeworld
from motiontune.errors import ConfigError
from motiontune.lab.tasks import REFERENCE_LOOK


def test_smoke_bench_row_writes_results_and_replaces_its_report_section(tiny_model_dir, tmp_path):
    report = tmp_path / "report.md"
    report.write_text(f"# Title\n\nkept\n\n{BEGIN}\nold table\n{END}\n\ntail kept\n")
    results = bench_shapeworld(
        tmp_path / "work",
        str(tiny_model_dir),
        ["newmove, lora 32", "motion inversion, debias object"],
        steps=1,
        prompts=1,
        seeds=1,
        sampling=2,
        report=report,
        progress=False,
    )
    assert [row["row"] for row in results] == ["newmove, lora 32", "motion inversion, debias object"]
    for row in results:  # the accuracy is the share of videos whose object did the motion (direction tests below)
        assert row["motion_accuracy"] == row["produced"].get(row["motion"], 0) / row["videos"]
        assert Counter(m for motions in row["by_prompt"].values() for m in motions) == Counter(row["produced"])
        assert list(row["by_prompt"]) == [bench_prompts(1, row["motion"])[0].caption("sks")]
        assert row["train_seconds"] > 0 and row["peak_memory_mb"] > 100 and 0 < row["adapter_mb"] < 5
    assert json.loads((tmp_path / "work" / "results.json").read_text()) == results
    text = report.read_text()
    assert "old table" not in text and "| newmove, lora 32 |" in text
    assert "| motion inversion, debias object |" in text
    assert text.startswith("# Title\n\nkept") and text.rstrip().endswith("tail kept")


def test_prompts_avoid_the_references_look_and_rows_are_checked(tmp_path):
    for clip in bench_prompts(8):
        assert clip.colour not in REFERENCE_LOOK["colours"] and clip.motion == "zigzag"
    with pytest.raises(ConfigError, match="unknown bench row"):
        bench_shapeworld(tmp_path, "unused", ["newmove, spatial sideways"], progress=False)
    with pytest.raises(ConfigError, match=r"motion 'wiggle': learn a novel motion .* or a path of your own"):
        bench_shapeworld(tmp_path, "unused", ["newmove"], motions=("wiggle",), progress=False)
    with pytest.raises(ConfigError, match="motion 'path:0 0': a path is"):
        bench_shapeworld(tmp_path, "unused", ["newmove"], motions=("path:0 0",), progress=False)


def _clips(folder):
    """The clips a `write_task` folder holds, in the order they were written."""
    return [json.loads(f.read_text())["clip"] for f in sorted(folder.glob("*.json"), key=lambda f: f.stem[-3:])]


def test_regularization_clips_cover_the_backgrounds_a_row_asks_for_and_nothing_else_changes(tmp_path):
    from motiontune.app.bench import ROWS
    from motiontune.lab.tasks import write_task

    every = ROWS["newmove, regularization on every background"].regularization_backgrounds
    assert every == ("white", "black", "gray", "textured")
    plain = write_task(tmp_path / "plain", 2, 16, seed=3)
    covered = write_task(tmp_path / "covered", 2, 16, seed=3, regularization_backgrounds=every)
    assert plain[0] == covered[0] and _clips(plain[1]) == _clips(covered[1])  # the references stay as they were
    drawn, forced = _clips(plain[2]), _clips(covered[2])
    assert {clip["background"] for clip in drawn} <= {"white", "gray"}
    assert [clip["background"] for clip in forced] == list(every)
    for before, after in zip(drawn, forced, strict=True):  # only the background differs
        assert {k: v for k, v in before.items() if k != "background"} == {
            k: v for k, v in after.items() if k != "background"
        }


def test_two_paths_that_differ_only_in_signs_get_their_own_row_folders():
    from motiontune.app.bench_common import row_folder

    folders = {row_folder("newmove", {"--motion": m}) for m in ("path:0 0;0.2 0", "path:0 0;-0.2 0", "zigzag")}
    assert len(folders) == 3 and row_folder("newmove", {"--motion": "zigzag"}) == "newmove--motion-zigzag"


def test_wilson_interval_by_hand():
    from motiontune.app.bench_common import wilson_interval

    low, high = wilson_interval(8, 16)  # p = 0.5, n = 16: centre 0.5, half 1.96 sqrt(1/64 + 0.96/1024) / 1.24
    assert low == pytest.approx(0.28, abs=0.005) and high == pytest.approx(0.72, abs=0.005)
    assert wilson_interval(0, 16)[0] == 0.0 and wilson_interval(16, 16)[1] == 1.0
    assert wilson_interval(0, 16)[1] == pytest.approx(0.194, abs=0.002)


def test_summary_pools_training_seeds_per_row_and_motion():
    from motiontune.app.bench import markdown_table, summarise

    def run(row, motion, seed, accuracy):
        return {
            "row": row,
            "motion": motion,
            "training_seed": seed,
            "videos": 16,
            "motion_accuracy": accuracy,
            "appearance_accuracy": 1.0,
            "copy_score": 0.0,
            "known_kept": 1.0,
            "steps": 100,
            "train_seconds": 50.0 + seed,
            "peak_memory_mb": 500.0,
            "adapter_mb": 3.3,
        }

    results = [run("newmove", "zigzag", 0, 1.0), run("newmove", "zigzag", 1, 0.5), run("newmove", "orbit", 0, 0.25)]
    summary = summarise(results)
    assert [(s["row"], s["motion"], s["training_seeds"], s["videos"]) for s in summary] == [
        ("newmove", "zigzag", 2, 32),
        ("newmove", "orbit", 1, 16),
    ]
    assert summary[0]["motion_accuracy"] == 0.75 and summary[0]["train_seconds"] == 50.5
    assert summary[0]["motion_accuracy_interval"][0] < 0.75 < summary[0]["motion_accuracy_interval"][1]
    assert "| newmove | zigzag | 2 x 16 | 0.75 [" in markdown_table(results)


def test_bench_reuses_finished_rows_and_checks_its_options(tiny_model_dir, tmp_path, monkeypatch):
    import subprocess

    options = dict(steps=1, prompts=1, seeds=1, sampling=2, progress=False)
    first = bench_shapeworld(tmp_path, str(tiny_model_dir), ["base model"], motions=("orbit",), **options)
    assert first[0]["motion"] == "orbit" and first[0]["training_seed"] == 0
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a finished row was run again"))
    assert bench_shapeworld(tmp_path, str(tiny_model_dir), ["base model"], motions=("orbit",), **options) == first
    monkeypatch.chdir(tmp_path.parent)  # the same work folder named relatively is the same run
    relative = bench_shapeworld(tmp_path.name, str(tiny_model_dir), ["base model"], motions=("orbit",), **options)
    assert relative == first
    with pytest.raises(ConfigError, match=r"motion 'left': learn a novel motion \(zigzag"):
        bench_shapeworld(tmp_path, str(tiny_model_dir), ["base model"], motions=("left",), **options)
    with pytest.raises(ConfigError, match="--training-seeds must be at least 1"):
        bench_shapeworld(tmp_path, str(tiny_model_dir), ["base model"], training_seeds=0, **options)


def test_the_shipped_models_defaults_teach_motion_inversion_the_zigzag(tmp_path):
    """A direction that fails if learning breaks: with no tuning flag (the shipped model's recommendations)
    Motion Inversion learns the zigzag the base model never makes, and keeps the prompts' appearance."""
    from motiontune.app.bench import run_row

    trained = run_row("motion inversion, 4 videos", tmp_path / "trained", None, None, 4, 1, 25)
    base = run_row("base model", tmp_path / "base", None, None, 4, 1, 25)
    assert trained["steps"] == 100  # the model's recommendation, not a bench setting
    assert base["motion_accuracy"] == 0.0
    assert trained["motion_accuracy"] >= 0.75 and trained["appearance_accuracy"] >= 0.75


def test_a_bench_row_runs_on_a_wan_model_at_its_native_clip(tiny_wan_dir, tmp_path):
    """The tiny Wan states 9 frames of 64 x 64 (4k+1 frames for its causal autoencoder): the task's clips, the
    training and the scored videos take that clip, not the UNet3D model's 8 frames of 32 x 32."""
    from motiontune.app.bench_common import model_clip

    assert model_clip(tiny_wan_dir)[:2] == (9, 64)
    results = bench_shapeworld(
        tmp_path / "work", str(tiny_wan_dir), ["newmove, lora 32"], steps=1, prompts=1, seeds=1, sampling=2
    )
    assert results[0]["videos"] == 1 and results[0]["steps"] == 1
    assert len(list((tmp_path / "work").rglob("reference/*.mp4"))) == 4


def test_a_row_can_ask_for_more_regularization_clips_and_the_first_ones_stay(tmp_path):
    from motiontune.app.bench import ROWS
    from motiontune.lab.tasks import write_task

    count = ROWS["newmove, 16 regularization clips"].regularization_clips
    assert count == 16 and ROWS["newmove"].regularization_clips == 4
    plain = write_task(tmp_path / "plain", 2, 16, seed=3)
    more = write_task(tmp_path / "more", 2, 16, seed=3, regularization_clips=count)
    assert _clips(plain[1]) == _clips(more[1])
    drawn = _clips(more[2])
    assert len(drawn) == 16 and drawn[:4] == _clips(plain[2])
    assert {clip["motion"] for clip in drawn} <= {"left", "right", "up", "down"}
