"""benchmarks/rare_token_appearance.py: the bench's looks with the token and with a known direction, side by side."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")


def test_the_same_looks_are_asked_with_the_token_and_with_a_known_direction(load_benchmark, tiny_wan_dir, tmp_path):
    model = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, model)
    (model / "motiontune.json").write_text(json.dumps({"native": {"frames": 5, "height": 16, "width": 16}}))
    result = load_benchmark("rare_token_appearance").compare(str(model), 4, 2, 0)
    token, known = result["with token"], result["known direction, no token"]
    assert token["example"] == "a blue square doing sks on a gray background"
    assert known["example"] == "a blue square moving left on a gray background"
    for scores in (token, known):
        assert 0 <= scores["appearance"] <= min(scores["colour"], scores["shape"]) <= 1
        assert 0 <= scores["no_object"] <= 4
