"""benchmarks/motionmatcher_gradients.py on the tiny model: the feature loss's gradients scale with lambda."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")


def test_gradients_scale_with_lambda_and_the_share_under_epsilon_falls(load_benchmark, tiny_model_dir):
    bench = load_benchmark("motionmatcher_gradients")
    rows = {row["variant"]: row for row in bench.gradient_scales(str(tiny_model_dir), "zigzag", 2, "temporal", 0)}
    small, large = rows["feature loss, lambda 2000"], rows["feature loss, lambda 2e6"]
    assert large["loss"] == pytest.approx(1000 * small["loss"], rel=1e-4)
    assert large["median |g|"] == pytest.approx(1000 * small["median |g|"], rel=1e-3)
    assert large["share |g| < eps"] <= small["share |g| < eps"]
    assert rows["pixel loss"]["loss"] > 0
    assert "| feature loss, lambda 2000 |" in bench.markdown(list(rows.values()))
