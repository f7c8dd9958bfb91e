"""benchmarks/wan_pipeline_samples.py: diffusers' `WanPipeline` and motiontune sample a Wan folder alike."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")


def test_wan_pipeline_and_motiontune_give_the_same_videos_from_the_same_noise(load_benchmark, tiny_wan_dir, tmp_path):
    model = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, model)
    (model / "motiontune.json").write_text(json.dumps({"native": {"frames": 5, "height": 16, "width": 16}}))
    result = load_benchmark("wan_pipeline_samples").compare(str(model), 2, 2, 5.0, 0, str(tmp_path / "sheet.png"))
    assert result["prompts"] == 2 and result["largest_pixel_difference"] <= 2  # uint8 rounding only
    assert set(result["accuracy"]) == {"diffusers", "motiontune"}
    assert (tmp_path / "sheet.png").stat().st_size > 0
