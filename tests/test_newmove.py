"""NewMove (and the DreamBooth baseline on the same interface): what trains, the loss, the samplers."""

from __future__ import annotations

import pytest
import torch

from backbone_facts import clip_frames, is_temporal, is_temporal_attention
from motiontune.errors import ConfigError, InputError
from motiontune.io.data import VideoDataset, find_video_items
from motiontune.methods import create_method
from motiontune.methods.base import coarse_noise_timesteps, uniform_timesteps
from motiontune.training import TrainConfig, prepare_examples, train


def _examples(backbone, folder, source="target"):
    dataset = VideoDataset(find_video_items(folder), clip_frames(backbone), 32, 32)
    return prepare_examples(backbone, dataset, source, progress=False)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _changed(before: dict, module: torch.nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if name in before and not torch.equal(before[name], p)}


def _train(method, examples, tmp_path, steps=3, lr=1e-3):
    config = TrainConfig(tmp_path / "out", steps=steps, learning_rate=lr, checkpoint_every=0, progress=False)
    return train(method, examples, config)


def test_newmove_changes_only_temporal_layers_and_cross_attention_kv(backbone, motion_data, tmp_path):
    examples = _examples(backbone, motion_data)
    unet, text, vae = _snapshot(backbone.denoiser), _snapshot(backbone.text_encoder), _snapshot(backbone.vae)
    _train(create_method("newmove", backbone, token="sks"), examples, tmp_path)
    changed = _changed(unet, backbone.denoiser)
    allowed = set(backbone.parameter_names("temporal")) | set(backbone.parameter_names("cross_kv"))
    assert changed <= allowed
    assert changed & set(backbone.parameter_names("cross_kv"))
    assert {n for n in changed if is_temporal(backbone, n)} == set(backbone.parameter_names("temporal"))
    assert not _changed(text, backbone.text_encoder) and not _changed(vae, backbone.vae)


@pytest.mark.parametrize(
    ("options", "groups"),
    [
        ({"spatial": "none"}, ["temporal"]),
        ({"spatial": "all"}, ["temporal", "spatial"]),
        ({"temporal": False}, ["cross_kv"]),
    ],
)
def test_ablation_switches_select_the_trained_parameters(backbone, options, groups):
    method = create_method("newmove", backbone, options, token="sks")
    method.prepare_for_training()
    trainable = {n for n, p in backbone.denoiser.named_parameters() if p.requires_grad}
    assert trainable == {n for g in groups for n in backbone.parameter_names(g)}


def test_nothing_to_train_and_bad_switches_are_rejected(backbone):
    with pytest.raises(ConfigError, match="nothing to train"):
        create_method("newmove", backbone, {"spatial": "none", "temporal": False}, token="sks")
    with pytest.raises(ConfigError, match="spatial must be one of"):
        create_method("newmove", backbone, {"spatial": "qkv"}, token="sks")
    with pytest.raises(ConfigError, match=r"^temporal_part must be one of all, routing, got 'values'$"):
        create_method("newmove", backbone, {"temporal_part": "values"}, token="sks")
    with pytest.raises(ConfigError, match="unknown newmove option"):
        create_method("newmove", backbone, {"lr": 1.0}, token="sks")


def test_loss_falls_on_a_fixed_batch(backbone, motion_data):
    examples = _examples(backbone, motion_data)
    method = create_method("newmove", backbone, token="sks")
    method.prepare_for_training()
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=3e-3)
    batch = {
        "latents": torch.stack([e.latents for e in examples[:2]]),
        "text": torch.stack([e.text for e in examples[:2]]),
        "captions": [e.caption for e in examples[:2]],
    }
    losses = []
    for _ in range(20):
        loss = method.loss(batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_coarse_noise_sampling_favours_noisy_timesteps_three_to_one():
    generator = torch.Generator().manual_seed(0)
    t = coarse_noise_timesteps(200_000, generator, 1000, alpha=0.5)
    noisy, clean = (t >= 900).sum().item(), (t < 100).sum().item()
    assert 2.7 < noisy / clean < 3.1
    assert t.min() >= 0 and t.max() <= 999
    u = uniform_timesteps(200_000, generator, 1000)
    assert 0.95 < (u >= 900).sum().item() / (u < 100).sum().item() < 1.05
    assert torch.equal(
        coarse_noise_timesteps(5, torch.Generator().manual_seed(3)),
        coarse_noise_timesteps(5, torch.Generator().manual_seed(3)),
    )


def test_newmove_draws_coarse_or_uniform_timesteps_by_switch(backbone):
    coarse = create_method("newmove", backbone, token="sks").sample_timesteps(50_000, torch.Generator().manual_seed(0))
    uniform = create_method("newmove", backbone, {"timestep_sampling": "uniform"}, token="sks").sample_timesteps(
        50_000, torch.Generator().manual_seed(0)
    )
    assert coarse.float().mean() > 560 and abs(uniform.float().mean() - 499.5) < 10


def test_lora_variant_trains_only_low_rank_factors(backbone, motion_data, tmp_path):
    examples = _examples(backbone, motion_data)
    before = _snapshot(backbone.denoiser)
    method = create_method("newmove", backbone, {"adapter": "lora", "lora_rank": 4}, token="sks")
    path = _train(method, examples, tmp_path)
    trainable = {n for n, p in backbone.denoiser.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not _changed(before, backbone.denoiser)
    keys = method.adapter_tensors().keys()
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in keys)
    assert any(is_temporal_attention(backbone, k) for k in keys) and any("attn2.to_k" in k for k in keys)
    assert path.exists()


def test_token_training_changes_only_the_token_rows(backbone, motion_data, tmp_path):
    examples = _examples(backbone, motion_data)
    weight = backbone.text_encoder.get_input_embeddings().weight
    before = weight.detach().clone()
    method = create_method("newmove", backbone, {"train_token": True}, token="sks")
    _train(method, examples, tmp_path)
    rows = (weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert rows == backbone.token_ids("sks")


def test_dreambooth_baseline_trains_spatial_layers_only(backbone, motion_data, tmp_path):
    examples = _examples(backbone, motion_data)
    before = _snapshot(backbone.denoiser)
    _train(create_method("dreambooth", backbone, token="sks"), examples, tmp_path)
    changed = _changed(before, backbone.denoiser)
    assert changed and changed <= set(backbone.parameter_names("spatial"))
    assert not changed & set(backbone.parameter_names("temporal"))


def test_regularization_videos_are_mixed_into_batches(backbone, motion_data, regularization_data, tmp_path):
    from motiontune.training import _draw_batch

    examples = _examples(backbone, motion_data) + _examples(backbone, regularization_data, "regularization")
    generator = torch.Generator().manual_seed(0)
    sources = [s for _ in range(200) for s in _draw_batch(examples, 1, generator, "cpu")["sources"]]
    share = sources.count("regularization") / len(sources)
    assert 0.3 < share < 0.5


@pytest.mark.parametrize("share", [0.0, 0.25, 0.75])
def test_regularization_share_sets_the_mix(backbone, motion_data, regularization_data, share):
    from motiontune.training import _draw_batch

    examples = _examples(backbone, motion_data) + _examples(backbone, regularization_data, "regularization")
    method = create_method("newmove", backbone, {"regularization_share": share}, token="sks")
    generator = torch.Generator().manual_seed(0)
    sources = [s for _ in range(100) for s in _draw_batch(examples, 8, generator, "cpu", method)["sources"]]
    assert abs(sources.count("regularization") / len(sources) - share) < 0.05
    targets = {e.path for e in examples if e.source == "target"}
    drawn = {p for _ in range(20) for p in [examples[i].path for i in method.pick_examples(examples, 8, generator, 0)]}
    assert targets <= drawn  # every target clip is drawn
    only_targets = _examples(backbone, motion_data)
    assert all(examples[i].source == "target" for i in method.pick_examples(only_targets, 8, generator, 0))
    with pytest.raises(ConfigError, match=r"regularization_share must be in \[0, 1\), got 1"):
        create_method("newmove", backbone, {"regularization_share": 1.0}, token="sks")


def test_captions_and_prompts_must_carry_the_token(backbone):
    method = create_method("newmove", backbone, token="sks")
    with pytest.raises(InputError, match=r"clip\.mp4: caption 'a square moving' does not contain the token 'sks'"):
        method.check_caption("a square moving", "target", "clip.mp4")
    method.check_caption("a square moving right", "regularization", "reg.mp4")
    with pytest.raises(InputError, match="does not contain the adapter's token 'sks'"):
        method.check_prompt("a blue square")
