"""Motion Inversion: embedding placement, identity at zero, debiasing, compact storage, round trips."""

from __future__ import annotations

import pytest
import torch

from backbone_facts import clip_frames
from motiontune.app import api
from motiontune.app.api import open_backbone
from motiontune.app.cli import main
from motiontune.attention import TemporalEmbedding
from motiontune.errors import ConfigError, InputError
from motiontune.generation import GenerationConfig, generate_latents
from motiontune.io.adapters import read_metadata
from motiontune.methods import create_method, load_adapter
from motiontune.methods.motion_inversion import MotionInversion, MotionInversionConfig

LATENT_SHAPE = torch.Size([4, 4, 8, 8])


def _inputs(backbone, frames=4, size=8):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, backbone.latent_channels, frames, size, size, generator=generator)
    return latents, backbone.encode_prompt(["a red circle"])


def _prepared(backbone, **options) -> MotionInversion:
    method = create_method("motion-inversion", backbone, options)
    method.bind_training_shape(LATENT_SHAPE)
    method.prepare_for_training()
    return method


def _randomise(method: MotionInversion, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in method.trainable_parameters():
            parameter.normal_(0, 0.5)


def test_default_sites_are_the_deepest_temporal_blocks_of_down_and_up_paths(backbone):
    method = _prepared(backbone)
    deepest = max(s.level for s in backbone.sites if s.kind == "temporal" and s.block in ("down", "up"))
    expected = {
        s.name for s in backbone.sites if s.kind == "temporal" and s.block in ("down", "up") and s.level == deepest
    }
    assert set(method.embeddings) == expected
    assert {backbone.controller.sites[name].block for name in expected} == {"down", "up"}
    attn1 = next(name for name in method.embeddings if name.endswith("attn1"))
    attn2 = attn1.removesuffix("attn1") + "attn2"
    if attn2 in method.embeddings:  # both attentions of a UNet's temporal transformer share one query-key embedding
        assert method.embeddings[attn1].query_key is method.embeddings[attn2].query_key
        assert method.embeddings[attn1].value is not method.embeddings[attn2].value
    grid = backbone.grid_at_level((8, 8), deepest)
    assert method.embeddings[attn1].value.shape[0] == grid[0] * grid[1]


def test_unknown_levels_are_refused(backbone):
    with pytest.raises(ConfigError, match="level"):
        _prepared(backbone, levels="7")
    with pytest.raises(ConfigError, match="comma list"):
        MotionInversionConfig(levels="deep")


def test_zero_initialised_embeddings_are_an_identity_and_only_they_train(backbone):
    latents, text = _inputs(backbone)
    before = backbone.predict_noise(latents, torch.tensor(500), text)
    method = _prepared(backbone)
    assert torch.allclose(before, backbone.predict_noise(latents, torch.tensor(500), text), atol=1e-6)
    batch = {"latents": latents, "text": text, "captions": ["a red circle"], "sources": ["target"]}
    method.loss(batch, torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is None for p in backbone.denoiser.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.trainable_parameters())


def test_debias_modes_on_a_known_value_embedding():
    embedding = TemporalEmbedding(1, 3, value_grid=(1, 1), query_key=False)
    with torch.no_grad():
        embedding.value.copy_(torch.tensor([1.0, 4.0, 9.0]).view(1, 3, 1))
    assert embedding.value_for(3, 2)[0, :, 0].tolist() == [1.0, 4.0, 9.0]
    embedding.value_mode = "difference"
    difference = embedding.value_for(3, 2)
    assert difference.shape == (2, 3, 1)
    assert difference[1, :, 0].tolist() == [1.0, 3.0, 5.0]
    embedding.value_mode = "drop"
    assert embedding.value_for(3, 2) is None


def test_value_embedding_interpolates_over_space_and_time():
    embedding = TemporalEmbedding(2, 4, value_grid=(2, 2), query_key=False)
    with torch.no_grad():
        embedding.value.copy_(torch.arange(4.0).view(1, 4, 1).expand(4, 4, 2))
    value = embedding.value_for(7, 2 * 16, grid=(4, 4))
    assert value.shape == (32, 7, 2)
    assert torch.allclose(value[5, :, 1], torch.linspace(0, 3, 7))


def test_generation_at_another_resolution_uses_interpolated_values(backbone):
    method = _prepared(backbone)
    _randomise(method)
    settings = GenerationConfig(frames=clip_frames(backbone, 6), height=32, width=48, steps=2, progress=False)
    latents = generate_latents(backbone, ["a red circle"], [method], settings)
    assert latents.shape[-2:] == backbone.latent_size(32, 48) and torch.isfinite(latents).all()


def test_debias_changes_generation_and_unknown_mode_is_refused(backbone):
    method = _prepared(backbone)
    _randomise(method)
    outputs = {}
    for debias in ("none", "object", "camera"):
        settings = GenerationConfig(
            frames=clip_frames(backbone), height=32, width=32, steps=2, progress=False, debias=debias
        )
        outputs[debias] = generate_latents(backbone, ["a red circle"], [method], settings)
    assert not torch.allclose(outputs["none"], outputs["object"], atol=1e-4)
    assert not torch.allclose(outputs["object"], outputs["camera"], atol=1e-4)
    with pytest.raises(ConfigError, match="debias"):
        generate_latents(
            backbone,
            ["x"],
            [method],
            GenerationConfig(frames=clip_frames(backbone), height=32, width=32, debias="pixel"),
        )


def test_low_rank_value_is_an_identity_at_zero_and_smaller(backbone):
    latents, text = _inputs(backbone)
    before = backbone.predict_noise(latents, torch.tensor(500), text)
    method = _prepared(backbone, value_rank=2, query_key=False)
    assert torch.allclose(before, backbone.predict_noise(latents, torch.tensor(500), text), atol=1e-6)
    name, embedding = next(iter(method.embeddings.items()))
    h, w = backbone.grid_at_level(tuple(LATENT_SHAPE[-2:]), backbone.controller.sites[name].level)
    assert embedding.value is None and embedding.full_value().shape[0] == h * w
    full = sum(p.numel() for p in _prepared(open_backbone(backbone.path, "cpu")).trainable_parameters())
    assert sum(p.numel() for p in method.trainable_parameters()) < full / 2


@pytest.mark.parametrize("options", [{}, {"value_rank": 2}, {"value": False}])
def test_adapter_round_trip(backbone, tmp_path, options):
    from motiontune.io.adapters import save_adapter

    method = _prepared(backbone, **options)
    _randomise(method)
    path = save_adapter(tmp_path / "mi.safetensors", method.adapter_tensors(), method.adapter_metadata())
    fresh = open_backbone(backbone.path, "cpu")
    loaded = load_adapter(path, fresh)
    assert isinstance(loaded, MotionInversion)
    for key, value in method.adapter_tensors().items():
        assert torch.equal(loaded.adapter_tensors()[key], value), key
    latents, text = _inputs(backbone)
    method.prepare_inference(GenerationConfig(debias="object"))
    loaded.prepare_inference(GenerationConfig(debias="object"))
    expected = backbone.predict_noise(latents, torch.tensor(500), text)
    assert torch.allclose(fresh.predict_noise(latents, torch.tensor(500), text), expected, atol=1e-6)


def test_two_adapters_on_the_same_sites_are_refused(backbone, tmp_path):
    from motiontune.io.adapters import save_adapter

    method = _prepared(backbone)
    path = save_adapter(tmp_path / "mi.safetensors", method.adapter_tensors(), method.adapter_metadata())
    with pytest.raises(ConfigError, match="already embeds"):
        load_adapter(path, backbone)


def test_trains_on_one_real_video_and_generates_from_the_cli(tiny_model_dir, reference_videos, tmp_path):
    out = tmp_path / "run"
    video = reference_videos / "car_turn.mp4"
    result = api.train(
        "motion-inversion",
        data=video,
        output=out,
        model=tiny_model_dir,
        token=None,
        steps=3,
        frames=8,
        height=32,
        width=32,
        checkpoint_every=0,
        progress=False,
    )
    metadata = read_metadata(result.adapter)
    assert metadata["method"] == "motion-inversion" and metadata["training"]["latent_shape"][1:] == [8, 16, 16]
    assert any(
        p.abs().sum() > 0
        for p in load_adapter(result.adapter, open_backbone(tiny_model_dir, "cpu")).trainable_parameters()
    )
    video_out = tmp_path / "car.mp4"
    code = main(
        [
            "generate",
            "--model",
            str(tiny_model_dir),
            "--adapter",
            str(result.adapter),
            "--prompt",
            "a bus",
            "--steps",
            "2",
            "--debias",
            "camera",
            "--output",
            str(video_out),
            "--quiet",
        ]
    )
    assert code == 0 and video_out.exists() and video_out.with_suffix(".png").exists()


def test_one_video_without_caption_is_a_clear_error(tmp_path, tiny_model_dir):
    lone = tmp_path / "lone.mp4"
    lone.write_bytes(b"")
    with pytest.raises(InputError, match="no caption"):
        api.train("motion-inversion", data=lone, output=tmp_path / "o", model=tiny_model_dir, token=None, steps=1)
