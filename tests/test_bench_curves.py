"""`motiontune bench curves`: a checkpoint scored every N steps, the plot, the table and the report section."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from motiontune.app.bench_curves import BEGIN, END, bench_curves
from motiontune.app.cli import main
from motiontune.errors import ConfigError


def test_smoke_curve_scores_every_checkpoint_and_plots(tiny_model_dir, tmp_path, monkeypatch):
    report = tmp_path / "report.md"
    report.write_text(f"# Title\n\n{BEGIN}\nprevious table\n{END}\n")
    points = bench_curves(
        tmp_path / "work",
        str(tiny_model_dir),
        ["motiondirector, 4 videos", "motionbooth subject"],
        steps=2,
        every=1,
        prompts=1,
        seeds=1,
        sampling=2,
        motion="orbit",
        report=report,
        progress=False,
    )
    motion = [p for p in points if p["row"] == "motiondirector, 4 videos"]
    subject = [p for p in points if p["row"] == "motionbooth subject"]
    for curve in (motion, subject):
        assert [p["step"] for p in curve] == [0, 1, 2]  # the base model, then each checkpoint
        assert curve[0]["seconds"] == 0.0 and 0 < curve[1]["seconds"] <= curve[2]["seconds"]
    for point in motion:
        assert 0 <= point["motion_accuracy"] <= 1 and 0 <= point["appearance_accuracy"] <= 1
    assert all(0 <= point["subject_accuracy"] <= 1 for point in subject)
    assert json.loads((tmp_path / "work" / "results.json").read_text()) == points
    with Image.open(tmp_path / "work" / "curves.png") as plot:
        assert plot.width > 500 and plot.height > 200
    text = report.read_text()
    assert "previous table" not in text and "| motiondirector, 4 videos | 2 |" in text
    assert "| motionbooth subject | 2 |" in text and "| subject acc. |" in text
    assert "--motion orbit --steps 2" in text

    # a rerun with the same settings reuses each finished row; one with other settings measures it again
    import motiontune.app.bench_curves as bench_module

    def no_training(*_, **__):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(bench_module, "row_curve", no_training)
    sizes = {"every": 1, "prompts": 1, "seeds": 1, "sampling": 2, "motion": "orbit", "progress": False}
    again = bench_curves(tmp_path / "work", str(tiny_model_dir), ["motionbooth subject"], steps=2, **sizes)
    assert again == subject
    with pytest.raises(AssertionError, match="trained again"):
        bench_curves(tmp_path / "work", str(tiny_model_dir), ["motionbooth subject"], steps=1, **sizes)


def test_curve_options_are_checked(tmp_path, capsys):
    with pytest.raises(ConfigError, match="unknown bench row"):
        bench_curves(tmp_path, "unused", ["base model"], progress=False)
    assert main(["bench", "curves", "--motion", "left", "--output", str(tmp_path / "x")]) == 2
    assert "motion 'left': learn a novel motion (zigzag, orbit, bounce, diagonal) or a path of your own" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "x").exists()
