"""`motiontune demo`: runs end to end and leaves files a person can look at."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from motiontune.app.cli import main


def test_demo_writes_videos_sheets_and_a_report(tmp_path, capsys, load_benchmark):
    assert main(["demo", "--output", str(tmp_path), "--steps", "2", "--quiet"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| model | motion accuracy | appearance accuracy | copy score | steps | train s | adapter MB |" in report
    for name in ("base", "newmove", "motion-inversion", "motionmatcher"):
        assert f"| {name} |" in report
    assert "Training steps per method: 2." in report
    assert "| model | subject correct (blue star) | zigzag | box IoU |" in report and "4 seeds" in report
    assert "| base model, same prompt |" in report and "A still camera's pan error is 0.250" in report
    assert "Training steps per method: 2." in capsys.readouterr().out
    for method in ("newmove", "motion-inversion", "motionmatcher", "motionbooth"):
        assert (tmp_path / method / "adapter.safetensors").is_file()
    for name in ("base_0", "newmove_1", "motion-inversion_2", "motionmatcher_3", "composed_3", "composed_base_3"):
        for suffix in (".mp4", ".gif", ".png"):
            assert (tmp_path / "videos" / f"{name}{suffix}").stat().st_size > 0
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        assert sheet.width > 8 * 32 and sheet.height > 20 * 32
    assert len(list((tmp_path / "reference").glob("*.mp4"))) == 4
    capsys.readouterr()
    assert main(["demo", "--output", str(tmp_path), "--steps", "2", "--quiet"]) == 2  # a finished demo stays
    assert "holds a finished demo (report.md); pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == report
    assert main(["demo", "--output", str(tmp_path), "--steps", "2", "--quiet", "--overwrite"]) == 0
    parts = tmp_path / "parts"
    for method in ("newmove", "motionbooth"):
        shutil.copytree(tmp_path / method, parts / method)
    _composition_parts_are_scored_as_the_demo_scores(load_benchmark("composition_parts"), parts)


def _composition_parts_are_scored_as_the_demo_scores(script, demo) -> None:
    """benchmarks/composition_parts.py on a finished demo's adapters (a helper of the demo test, whose demo run it
    reuses)."""
    report = script.measure(demo, seeds=1, steps=2)
    assert report["prompt"] == "a pll star doing sks on a textured background"
    assert list(report["parts"]) == list(script.PARTS)
    for scores in report["parts"].values():
        assert set(scores) == {"subject", "motion", "box_iou", "pan_error", "textured"}
        assert all(0 <= scores[name] <= 1 for name in ("subject", "motion", "box_iou", "textured"))
    assert (demo / "composition-parts" / "both-boxes_0.mp4").stat().st_size > 0
    (demo / "motionbooth" / "adapter.safetensors").unlink()
    with pytest.raises(script.ConfigError, match=r"no motionbooth/adapter\.safetensors"):
        script.measure(demo, seeds=1, steps=2)
    with pytest.raises(script.ConfigError, match=r"^--demo .*elsewhere: no such folder \(run `motiontune demo"):
        script.measure(demo / "elsewhere", seeds=1, steps=2)
