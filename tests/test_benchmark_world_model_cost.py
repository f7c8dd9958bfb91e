"""benchmarks/world_model_cost.py: both architectures' recipes are timed at smoke size."""

from __future__ import annotations

import pytest

from motiontune.lab.worldmodel import BaseModelConfig

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    "options",
    [
        {"vae": {"block_out_channels": [8, 16, 16]}, "denoiser": {"block_out_channels": [16, 32]}},
        {"architecture": "wan", "vae_frames": 5, "vae": {"base_dim": 8}, "denoiser": {"num_layers": 1}},
    ],
)
def test_recipe_cost_is_measured_for_both_architectures(load_benchmark, options):
    cost = load_benchmark("world_model_cost").recipe_cost(BaseModelConfig(text_hidden_size=32, **options), 2, 1)
    assert cost["autoencoder_ms_per_sample"] > 0 and cost["denoiser_ms_per_sample"] > 0
    assert 0 < cost["denoiser_parameters_m"] < 5
