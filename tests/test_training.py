"""The training loop: checkpoints, bit-exact resume, accumulation, validation videos, real data."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from motiontune.app.api import open_backbone
from motiontune.errors import ConfigError
from motiontune.io.data import VideoDataset, find_video_items
from motiontune.methods import create_method
from motiontune.training import (
    TrainConfig,
    WeightAverage,
    cosine_decay,
    latest_checkpoint,
    prepare_examples,
    train,
)


def _run(model_dir, data, output, steps, resume=False, **overrides):
    backbone = open_backbone(model_dir, "cpu")
    examples = prepare_examples(backbone, VideoDataset(find_video_items(data), 4, 32, 32), "target", progress=False)
    method = create_method("newmove", backbone, token="sks")
    settings = {"steps": steps, "learning_rate": 1e-3, "checkpoint_every": 2, "progress": False, "resume": resume}
    return train(method, examples, TrainConfig(output, **{**settings, **overrides}))


def test_interrupted_run_resumes_bit_exactly(tiny_model_dir, motion_data, tmp_path):
    straight = _run(tiny_model_dir, motion_data, tmp_path / "a", 4, gradient_accumulation=2)
    _run(tiny_model_dir, motion_data, tmp_path / "b", 2, gradient_accumulation=2)
    assert latest_checkpoint(tmp_path / "b").name == "step-000002"
    resumed = _run(tiny_model_dir, motion_data, tmp_path / "b", 4, resume=True, gradient_accumulation=2)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "training_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]


def test_learning_rate_decay_starts_at_its_step_and_resumes_bit_exactly(tiny_model_dir, motion_data, tmp_path):
    """decay_from 2 of 4 steps: factors 1, 1, 1, then (1 + cos(pi / 2)) / 2 = 0.5; the first three steps are
    the constant run's, the last is not."""
    assert [cosine_decay(step, 4, 2) for step in range(4)] == pytest.approx([1.0, 1.0, 1.0, 0.5])
    constant = load_file(str(_run(tiny_model_dir, motion_data, tmp_path / "c", 4, checkpoint_every=1)))
    decayed = load_file(str(_run(tiny_model_dir, motion_data, tmp_path / "a", 4, checkpoint_every=1, decay_from=2)))
    step_3 = [load_file(str(tmp_path / r / "checkpoints" / "step-000003" / "adapter.safetensors")) for r in "ca"]
    assert all(torch.equal(step_3[0][k], step_3[1][k]) for k in decayed)
    assert any(not torch.equal(constant[k], decayed[k]) for k in decayed)
    _run(tiny_model_dir, motion_data, tmp_path / "b", 3, decay_from=2)
    resumed = load_file(str(_run(tiny_model_dir, motion_data, tmp_path / "b", 4, resume=True, decay_from=2)))
    assert all(torch.equal(decayed[k], resumed[k]) for k in decayed)
    with pytest.raises(ConfigError, match="decay_from must be in \\[0, steps\\), got 3"):
        TrainConfig("unused", steps=3, decay_from=3)


def test_weight_average_follows_the_hand_computed_recursion_and_swaps_back():
    weight = torch.nn.Parameter(torch.zeros(2))
    average = WeightAverage([weight], decay=0.9)
    for value in (1.0, 2.0):
        with torch.no_grad():
            weight.fill_(value)
        average.update()
    expected = 0.9 * (0.1 * 1.0) + 0.1 * 2.0  # w_ema <- 0.9 w_ema + 0.1 w, from w_ema = 0
    assert torch.allclose(average.average[0], torch.full((2,), expected))
    with average.swapped_in():
        assert torch.allclose(weight, torch.full((2,), expected))
    assert torch.equal(weight.detach(), torch.full((2,), 2.0))
    with pytest.raises(ConfigError, match="--ema-decay must be in"):
        TrainConfig("unused", ema_decay=1.0)


def test_weight_average_is_the_adapter_and_resumes_bit_exactly(tiny_model_dir, motion_data, tmp_path):
    plain = load_file(str(_run(tiny_model_dir, motion_data, tmp_path / "plain", 4)))
    straight = load_file(str(_run(tiny_model_dir, motion_data, tmp_path / "a", 4, ema_decay=0.5)))
    _run(tiny_model_dir, motion_data, tmp_path / "b", 2, ema_decay=0.5)
    files = sorted(p.name for p in (tmp_path / "b" / "checkpoints" / "step-000002").iterdir())
    assert files == ["adapter.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"]
    resumed = load_file(str(_run(tiny_model_dir, motion_data, tmp_path / "b", 4, resume=True, ema_decay=0.5)))
    assert straight.keys() == resumed.keys() == plain.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    raw = load_file(str(tmp_path / "a" / "checkpoints" / "step-000004" / "adapter.safetensors"))
    assert all(torch.equal(raw[k], plain[k]) for k in plain)  # the average does not change the training itself
    assert any(not torch.equal(straight[k], plain[k]) for k in plain)


def test_a_weight_average_resumed_from_a_run_without_one_starts_from_its_weights(tiny_model_dir, motion_data, tmp_path):
    _run(tiny_model_dir, motion_data, tmp_path / "plain", 4, checkpoint_every=1, keep_checkpoints=4)
    raw = [
        load_file(str(tmp_path / "plain" / "checkpoints" / f"step-00000{i}" / "adapter.safetensors")) for i in (2, 3, 4)
    ]
    _run(tiny_model_dir, motion_data, tmp_path / "b", 2)
    resumed = load_file(str(_run(tiny_model_dir, motion_data, tmp_path / "b", 4, resume=True, ema_decay=0.5)))
    for key, value in resumed.items():  # a = w2, then a <- (a + w) / 2 after steps 3 and 4
        assert torch.allclose(value, 0.25 * raw[0][key] + 0.25 * raw[1][key] + 0.5 * raw[2][key], atol=1e-6)


def test_checkpoints_are_complete_and_rotated(tiny_model_dir, motion_data, tmp_path):
    _run(tiny_model_dir, motion_data, tmp_path, 6, keep_checkpoints=2)
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step-000004", "step-000006"]
    for name in checkpoints:
        files = sorted(p.name for p in (tmp_path / "checkpoints" / name).iterdir())
        assert files == ["adapter.safetensors", "optimizer.safetensors", "state.json"]
    assert json.loads((tmp_path / "checkpoints" / "step-000006" / "state.json").read_text())["step"] == 6


def test_validation_videos_are_written(tiny_model_dir, motion_data, tmp_path):
    _run(
        tiny_model_dir,
        motion_data,
        tmp_path,
        2,
        validate_every=2,
        validation_prompts=["a blue square doing sks"],
        validation_sampling_steps=2,
    )
    written = sorted(p.name for p in (tmp_path / "validation").iterdir())
    assert written == ["step-000002-0.gif", "step-000002-0.mp4", "step-000002-0.png"]


def test_real_reference_videos_load_at_the_model_size(tiny_model_dir, reference_videos):
    backbone = open_backbone(tiny_model_dir, "cpu")
    dataset = VideoDataset(find_video_items(reference_videos), 8, 32, 32)
    examples = prepare_examples(backbone, dataset, "target", progress=False)
    assert len(examples) == 5
    assert all(e.latents.shape == (4, 8, 16, 16) for e in examples)
    assert {e.caption for e in examples} >= {"A car is running on the road", "A dog is sitting."}


def test_latent_cache_is_reused(tiny_model_dir, motion_data, tmp_path):
    backbone = open_backbone(tiny_model_dir, "cpu")
    dataset = VideoDataset(find_video_items(motion_data), 4, 32, 32)
    first = prepare_examples(backbone, dataset, "target", cache_dir=tmp_path, progress=False)
    cached = sorted(tmp_path.glob("*.safetensors"))
    assert len(cached) == len(first)
    with torch.no_grad():
        backbone.vae.encoder.conv_in.weight.zero_()
    second = prepare_examples(backbone, dataset, "target", cache_dir=tmp_path, progress=False)
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(first, second, strict=True))
