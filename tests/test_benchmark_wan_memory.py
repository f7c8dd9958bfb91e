"""benchmarks/wan_memory.py: what the plan counts as trained is what the methods train on a real (tiny) Wan, and
the measured activations grow with the token count."""

from __future__ import annotations

import pytest
import torch

from motiontune.lab.tiny import TINY_WAN
from motiontune.methods import create_method

pytestmark = pytest.mark.usefixtures("single_thread")
TINY = {"dim": 32, "heads": 2, "ffn": TINY_WAN["ffn_dim"], "layers": TINY_WAN["num_layers"], "channels": 4}


@pytest.mark.parametrize("method", ["newmove (full)", "newmove (lora)", "motiondirector", "motionmatcher"])
def test_the_plan_counts_what_each_method_trains(load_benchmark, tiny_wan_dir, method):
    from motiontune.app.api import open_backbone

    bench = load_benchmark("wan_memory")
    backbone = open_backbone(tiny_wan_dir, "cpu")
    name, _, kind = method.partition(" (")
    options = {"adapter": "lora"} if kind == "lora)" else {}
    trainer = create_method(name, backbone, options, token="sks")
    trainer.prepare_for_training()
    trained = sum(p.numel() for p in trainer.trainable_parameters())
    model = bench.meta_transformer({**TINY, "spatial": 8})
    assert bench.trained_parameters(model, bench.METHODS[method], tokens_per_frame=4) == trained


def test_motion_inversion_embeddings_are_counted_per_deepest_block(load_benchmark, tiny_wan_dir):
    from motiontune.app.api import open_backbone

    bench = load_benchmark("wan_memory")
    backbone = open_backbone(tiny_wan_dir, "cpu")
    inversion = create_method("motion-inversion", backbone, {}, token="sks")
    inversion.bind_training_shape(torch.Size([4, 2, 4, 4]))
    inversion.prepare_for_training()
    trained = sum(p.numel() for p in inversion.trainable_parameters())
    model = bench.meta_transformer({**TINY, "spatial": 8})
    assert bench.trained_parameters(model, bench.METHODS["motion-inversion"], tokens_per_frame=4) == trained


def test_measured_activations_grow_with_tokens_and_the_report_names_every_budget(load_benchmark):
    bench = load_benchmark("wan_memory")
    fixed, per_token = bench.block_slope({**TINY, "spatial": 8}, "bf16")
    assert per_token > 10 * TINY["dim"] and fixed > 0
    row = {
        "model": "tiny",
        "weights": "bf16",
        "tokens": 10,
        "method": "motiondirector",
        "parameters (B)": 0.0,
        "trained (M)": 0.1,
        "weights GB": 1.0,
        "grads + AdamW GB": 0.1,
        "activations GB": 2.0,
        "peak GB": 3.1,
        "fits": [24, 48, 80],
    }
    assert "| tiny (0.0B) | 10 | motiondirector | 0.1 | 1.0 | 0.1 | 2.0 | 3.1 | 24 GB, 48 GB, 80 GB |" in bench.report(
        [row], 81, 480, 832
    )
