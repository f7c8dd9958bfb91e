"""benchmarks/noise_trace.py: prompts ask for the opposite of the traced clip and every sample gets one verdict."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def noise_trace(load_benchmark):
    return load_benchmark("noise_trace")


def test_opposites_are_a_known_direction_each_way(noise_trace):
    assert {noise_trace.OPPOSITE[noise_trace.OPPOSITE[d]] for d in noise_trace.OPPOSITE} == set(noise_trace.OPPOSITE)
    assert all(noise_trace.OPPOSITE[d] != d for d in noise_trace.OPPOSITE)


def test_rates_cover_every_sample_once_for_both_starts(noise_trace):
    rates = noise_trace.follow_rates(None, clips=2, trace=0.0073, steps=2, guidance=5.0, seed=77)
    assert set(rates) == {"traced", "pure"}
    for rate in rates.values():
        assert set(rate) == {"prompt", "trace", "other"}
        assert sum(rate.values()) == pytest.approx(1.0)
        assert all(value in (0.0, 0.5, 1.0) for value in rate.values())
