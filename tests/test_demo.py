"""`motiontune demo`: runs end to end and leaves files a person can look at."""

from __future__ import annotations

from PIL import Image

from motiontune.app.cli import main


def test_demo_writes_videos_sheets_and_a_report(tmp_path, capsys):
    assert main(["demo", "--output", str(tmp_path), "--steps", "2", "--quiet"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| model | motion accuracy | appearance accuracy | copy score | steps | train s | adapter MB |" in report
    for name in ("base", "newmove", "motion-inversion", "motionmatcher"):
        assert f"| {name} |" in report
    assert "Training steps per method: 2." in report
    assert "| model | subject correct (blue star) | zigzag | box IoU |" in report
    assert "| base model, same prompt |" in report and "A still camera's pan error is 0.250" in report
    assert "Training steps per method: 2." in capsys.readouterr().out
    for method in ("newmove", "motion-inversion", "motionmatcher", "motionbooth"):
        assert (tmp_path / method / "adapter.safetensors").is_file()
    for name in ("base_0", "newmove_1", "motion-inversion_2", "motionmatcher_3", "composed_1", "composed_base_1"):
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
