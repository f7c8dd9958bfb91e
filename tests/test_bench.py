"""`motiontune bench shapeworld` in its reduced smoke configuration (the full run lives in docs/shapeworld.md)."""

from __future__ import annotations

import json

import pytest

from motiontune.bench import BEGIN, END, bench_prompts, bench_shapeworld
from motiontune.demo import REFERENCE_LOOK
from motiontune.errors import ConfigError


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
    for row in results:
        assert 0 <= row["motion_accuracy"] <= 1 and 0 <= row["copy_score"] <= 1
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
        bench_shapeworld(tmp_path, "unused", ["newmove, spatial kv"], progress=False)
