"""MotionMatcher (motion-feature matching LoRA) and the MotionDirector baseline on the same LoRA interface."""

from __future__ import annotations

import math
import re

import pytest
import torch
from diffusers import DDPMScheduler

from backbone_facts import CROSS_ATTENTION, FEATURE_LEVELS, is_temporal_attention
from motiontune.app import api
from motiontune.app.cli import main
from motiontune.diffusion import DiscreteDiffusion
from motiontune.errors import ConfigError
from motiontune.io.adapters import read_metadata, save_adapter
from motiontune.methods import create_method, load_adapter
from motiontune.methods.motiondirector import appearance_debiased_loss
from motiontune.sampling import StepState
from motiontune.training import Example, TrainConfig, train

TINY = ["--frames", "4", "--height", "32", "--width", "32", "--quiet"]


pytestmark = pytest.mark.usefixtures("single_thread")


def _batch(backbone, frames: int = 3, size: int = 8, seed: int = 0) -> dict:
    latents = torch.randn(1, 4, frames, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        text = backbone.encode_prompt(["a red circle moving right"])
    return {"latents": latents, "text": text, "captions": ["a red circle moving right"]}


def _trained_looking(method, seed: int = 1) -> None:
    """Give the LoRA non-zero B factors, as after training (B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in method.lora_layers:
            weight = layer.lora_B[method.adapter_name].weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)


def _output(backbone, batch, timestep: int = 700) -> torch.Tensor:
    with torch.no_grad():
        return backbone.predict_noise(batch["latents"], torch.tensor([timestep]), batch["text"])


def _matcher(backbone, options=None):
    method = create_method("motionmatcher", backbone, options)
    method.prepare_for_training()
    return method


def test_lora_covers_spatial_self_attention_ff_and_temporal_layers(backbone):
    method = _matcher(backbone)
    names = {n for n, p in backbone.denoiser.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in backbone.denoiser.named_parameters() if ".lora_" in n}
    modules = {n.split(".lora_")[0] for n in names}
    for group in ("spatial_self", "temporal"):
        assert any(re.fullmatch(backbone.lora_target([group]), m) for m in modules), group
    assert all(re.fullmatch(backbone.lora_target(["spatial_self", "temporal"]), m) for m in modules)
    assert not any(CROSS_ATTENTION[backbone.name].search(m) for m in modules)
    assert any(is_temporal_attention(backbone, n) for n in names)
    if backbone.name == "unet3d":
        assert any(n.startswith("transformer_in.") for n in names)
    assert method.lora_layers[0].r[method.adapter_name] == 32
    timesteps = method.sample_timesteps(20_000, torch.Generator().manual_seed(0))
    assert timesteps.min() == 500 and timesteps.max() == 999


def test_feature_level_is_the_nearest_down_level_with_attention(backbone):
    for preferred, level in FEATURE_LEVELS[backbone.name].items():
        assert backbone.down_attention_level(preferred) == level
    method = _matcher(backbone)
    batch = _batch(backbone)
    cross, temporal = method.motion_features(batch["latents"], torch.tensor([499]), batch["text"])
    tokens = batch["text"].shape[1]
    cells = math.prod(backbone.grid_at_level((8, 8), method.feature_level))
    assert cross.shape == (1, 3, cells, tokens) and temporal.shape == (1, cells, 3, 3)
    torch.testing.assert_close(cross.sum(-1), torch.ones(1, 3, cells))
    torch.testing.assert_close(temporal.sum(-1), torch.ones(1, cells, 3))
    finer = _matcher(backbone, {"feature_level": 0})
    assert finer.feature_level == backbone.down_attention_level(0)
    cross, temporal = finer.motion_features(batch["latents"], torch.tensor([499]), batch["text"])
    cells = math.prod(backbone.grid_at_level((8, 8), finer.feature_level))
    assert cross.shape == (1, 3, cells, tokens) and temporal.shape == (1, cells, 3, 3)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_feature_loss_is_zero_when_the_denoiser_is_exact(backbone, prediction_type):
    """With the true eps (or v) as output, the DDIM step gives exactly the target x_{t-1}: zero loss."""
    method = _matcher(backbone)
    method.diffusion = DiscreteDiffusion(
        DDPMScheduler.from_config(backbone.scheduler.config, prediction_type=prediction_type)
    )
    batch = _batch(backbone)
    clean, alphas = batch["latents"], method.diffusion.alphas_cumprod
    real_predict = backbone.predict_noise

    state = {"calls": 0, "parametrization": prediction_type}

    def oracle_first(latents, timesteps, text, conditional=None):
        """The first call (the LoRA prediction) answers with the true eps or v; the frozen passes run the model."""
        state["calls"] += 1
        if state["calls"] > 1:
            return real_predict(latents, timesteps, text, conditional)
        alpha = alphas[timesteps].view(-1, 1, 1, 1, 1)
        eps = (latents - alpha.sqrt() * clean) / (1 - alpha).sqrt()
        return eps if state["parametrization"] == "epsilon" else alpha.sqrt() * eps - (1 - alpha).sqrt() * clean

    backbone.predict_noise = oracle_first
    exact = method.loss(batch, torch.Generator().manual_seed(0))
    state.update(calls=0, parametrization="v_prediction" if prediction_type == "epsilon" else "epsilon")
    mismatched = method.loss(batch, torch.Generator().manual_seed(0))
    assert exact.item() < 1e-10 < 1e-3 * mismatched.item()


def test_feature_loss_is_finite_at_a_zero_terminal_snr_timestep(backbone):
    method = _matcher(backbone)
    method.diffusion = DiscreteDiffusion(
        DDPMScheduler.from_config(
            backbone.scheduler.config, prediction_type="v_prediction", rescale_betas_zero_snr=True
        )
    )
    method.sample_timesteps = lambda batch, generator: torch.full((batch,), 999)
    loss = method.loss(_batch(backbone), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() > 0


def test_feature_gradients_reach_only_the_lora(backbone):
    method = _matcher(backbone)
    _trained_looking(method)
    batch = _batch(backbone)
    same = method.feature_loss(batch["latents"], batch["latents"], torch.tensor([600]), batch["text"])
    assert same.item() == 0.0
    backbone.denoiser.train()
    method.loss(batch, torch.Generator().manual_seed(0)).backward()
    with_grad = {n for n, p in backbone.denoiser.named_parameters() if p.grad is not None}
    assert with_grad and all(".lora_A." in n or ".lora_B." in n for n in with_grad)
    assert all(p.grad is None for p in backbone.text_encoder.parameters())
    assert any(".lora_A." in n and backbone.denoiser.get_parameter(n).grad.abs().sum() > 0 for n in with_grad)


def test_frozen_extractor_runs_without_the_lora_and_without_dropout(backbone):
    batch = _batch(backbone)
    timestep = torch.tensor([600])

    def down_output():
        with torch.no_grad(), backbone.down_blocks_only(1) as outputs:
            backbone.predict_noise(batch["latents"], timestep, batch["text"])
        return outputs[0]

    base = down_output()
    method = _matcher(backbone)
    _trained_looking(method)
    backbone.denoiser.train()
    with method.frozen_extractor():
        frozen = [down_output(), down_output()]
        assert not backbone.denoiser.training
    assert backbone.denoiser.training
    backbone.denoiser.eval()
    torch.testing.assert_close(frozen[0], base)
    torch.testing.assert_close(frozen[1], base)
    assert not torch.allclose(down_output(), base)


def test_target_pass_runs_once_without_grad_and_mid_up_blocks_are_skipped(backbone):
    if not hasattr(backbone.denoiser, "down_blocks"):
        pytest.skip("UNet blocks; test_wan.py checks a transformer's early exit")
    method = _matcher(backbone)
    unet = backbone.denoiser
    grad_modes: list[bool] = []
    counts = {"down_after_feature_level": 0, "mid": 0, "up": 0}
    unet.down_blocks[0].register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    for key, module in (
        ("down_after_feature_level", unet.down_blocks[2]),
        ("mid", unet.mid_block),
        ("up", unet.up_blocks[0]),
    ):
        module.register_forward_hook(lambda *_, key=key: counts.__setitem__(key, counts[key] + 1))
    method.loss(_batch(backbone), torch.Generator().manual_seed(0))
    # the LoRA prediction (grad), the target features (no grad), the predicted features (grad)
    assert grad_modes == [True, False, True]
    assert counts == {"down_after_feature_level": 1, "mid": 1, "up": 1}


def test_gradient_checkpointing_gives_the_same_gradients(backbone):
    method = _matcher(backbone)
    _trained_looking(method)
    batch = _batch(backbone)
    backbone.denoiser.train()

    def gradients():
        torch.manual_seed(0)
        method.loss(batch, torch.Generator().manual_seed(0)).backward()
        grads = [p.grad.clone() for p in method.trainable_parameters()]
        backbone.denoiser.zero_grad(set_to_none=True)
        return grads

    plain = gradients()
    backbone.enable_gradient_checkpointing()
    for a, b in zip(plain, gradients(), strict=True):
        torch.testing.assert_close(a, b)


def test_gradient_checkpointing_covers_the_feature_passes(backbone):
    """A feature pass with gradients (LoRA off, maps recorded) stays checkpointed: its recompute in backward runs in
    the state of its forward (`Backbone.checkpointed`), so it keeps far fewer bytes for backward than without."""
    method = _matcher(backbone)
    _trained_looking(method)
    batch = _batch(backbone)

    def saved_bytes() -> int:
        storages: dict[int, int] = {}

        def pack(tensor):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        latents = batch["latents"].clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), method.frozen_extractor():
            method.motion_features(latents, torch.tensor([400]), batch["text"])
        return sum(storages.values())

    stored = saved_bytes()
    backbone.enable_gradient_checkpointing()
    assert saved_bytes() < 0.5 * stored


def test_lora_is_on_only_from_the_window_start_and_composes_with_other_adapters(backbone):
    batch = _batch(backbone)
    base = _output(backbone, batch)
    method = _matcher(backbone)
    _trained_looking(method)
    (window,) = method.inference_hooks()

    def at(timestep):
        window.before_step(StepState(0, timestep, timestep / 1000, 50, batch["latents"], None))
        return _output(backbone, batch)

    assert not torch.allclose(at(600), base)
    torch.testing.assert_close(at(499), base)
    window.after_sampling()
    assert not torch.allclose(_output(backbone, batch), base)

    other = _matcher(backbone)
    assert other.adapter_name == "motionmatcher_2"
    _trained_looking(other, seed=2)
    both = _output(backbone, batch)
    assert not torch.allclose(both, base)
    with other.lora_disabled():
        only_first = _output(backbone, batch)
    assert not torch.allclose(both, only_first)
    only_second = at(400)
    assert not torch.allclose(only_second, base) and not torch.allclose(only_second, only_first)
    assert all(other.adapter_name in layer.active_adapters for layer in other.lora_layers)


def test_adapter_round_trip_through_load_adapter(backbone, any_model_dir, tmp_path):
    method = _matcher(backbone, {"lora_rank": 4, "lora_window_start": 300})
    _trained_looking(method)
    batch = _batch(backbone)
    expected = _output(backbone, batch)
    path = save_adapter(tmp_path / "mm.safetensors", method.adapter_tensors(), method.adapter_metadata())
    keys = method.adapter_tensors().keys()
    assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert read_metadata(path)["targets"]["feature_level"] == backbone.down_attention_level(2)

    fresh = api.open_backbone(any_model_dir, "cpu")
    loaded = load_adapter(path, fresh)
    assert loaded.name == "motionmatcher" and loaded.config == method.config
    torch.testing.assert_close(_output(fresh, batch), expected)

    other = api.open_backbone(any_model_dir, "cpu")
    wrong_rank = create_method("motionmatcher", other, {"lora_rank": 8})
    with pytest.raises(ConfigError, match=r"mm\.safetensors: LoRA tensor .* has shape"):
        wrong_rank.load_adapter_tensors(method.adapter_tensors(), "mm.safetensors")


def test_options_are_checked(backbone):
    with pytest.raises(ConfigError, match="loss must be feature or pixel"):
        create_method("motionmatcher", backbone, {"loss": "l1"})
    with pytest.raises(ConfigError, match=r"min_timestep must be in \[1, 999\]"):
        create_method("motionmatcher", backbone, {"min_timestep": 0})
    with pytest.raises(ConfigError, match="feature_level must be >= 0, got -1"):
        create_method("motionmatcher", backbone, {"feature_level": -1})
    with pytest.raises(ConfigError, match="unknown motiondirector option"):
        create_method("motiondirector", backbone, {"loss": "pixel"})
    with pytest.raises(ConfigError, match="timestep_sampling must be coarse or uniform, got 'late'"):
        create_method("motiondirector", backbone, {"timestep_sampling": "late"})


def test_motiondirector_draws_uniform_timesteps_or_newmoves_coarse_ones(backbone):
    def share_above_half(options):
        method = create_method("motiondirector", backbone, {"lora_rank": 4, **options})
        timesteps = method.sample_timesteps(20_000, torch.Generator().manual_seed(0))
        return (timesteps >= 500).float().mean().item()

    assert share_above_half({}) == pytest.approx(0.5, abs=0.02)
    # p(t) ∝ 1 - 0.5 cos(pi t / T): the upper half holds (1/2 + 1/(2 pi)) / 1 of the mass, about 0.659
    assert share_above_half({"timestep_sampling": "coarse"}) == pytest.approx(0.5 + 0.5 / math.pi, abs=0.02)


def test_motionmatcher_draws_coarse_timesteps_inside_its_window(backbone):
    method = create_method(
        "motionmatcher", backbone, {"lora_rank": 4, "min_timestep": 200, "timestep_sampling": "coarse"}
    )
    timesteps = method.sample_timesteps(20_000, torch.Generator().manual_seed(0)).double()
    assert timesteps.min() >= 200 and timesteps.max() <= 999

    # p(t) ∝ 1 - 0.5 cos(pi t / T) on [200, 1000): P(t >= 600) = mass of [600, 1000) over mass of [200, 1000)
    def mass(a: float, b: float) -> float:
        return (b - a) - 0.5 * 1000 / math.pi * (math.sin(math.pi * b / 1000) - math.sin(math.pi * a / 1000))

    expected = mass(600, 1000) / mass(200, 1000)
    assert (timesteps >= 600).double().mean().item() == pytest.approx(expected, abs=0.02)
    with pytest.raises(ConfigError, match="timestep_sampling must be coarse or uniform, got 'late'"):
        create_method("motionmatcher", backbone, {"timestep_sampling": "late"})


def test_pixel_loss_trains_the_same_lora(backbone):
    method = _matcher(backbone, {"loss": "pixel", "lora_rank": 4})
    batch = _batch(backbone)
    optimizer = torch.optim.AdamW(method.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = method.loss(batch, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.5 and losses[-1] < 0.8 * losses[0]


def test_appearance_debiased_loss_by_hand():
    # frames [1, 2, 3] against zeros, anchor frame 0, beta 1 (alpha = sqrt 2):
    # MSE = 14/3; phi = sqrt2 * [1, 2, 3] - 1, so MSE(phi) = (31 - 12 sqrt2) / 3; total 15 - 4 sqrt2
    prediction = torch.tensor([1.0, 2.0, 3.0]).view(1, 1, 3, 1, 1)
    loss = appearance_debiased_loss(prediction, torch.zeros_like(prediction), torch.tensor([0]))
    assert loss.item() == pytest.approx(15 - 4 * math.sqrt(2))
    # beta 0 leaves twice the plain MSE; the anchor is per clip
    assert appearance_debiased_loss(prediction, torch.zeros_like(prediction), torch.tensor([0]), 0.0).item() == (
        pytest.approx(28 / 3)
    )
    pair = torch.cat([prediction, prediction])
    per_clip = appearance_debiased_loss(pair, torch.zeros_like(pair), torch.tensor([0, 2]))
    anchor_two = appearance_debiased_loss(prediction, torch.zeros_like(prediction), torch.tensor([2]))
    assert per_clip.item() == pytest.approx((loss.item() + anchor_two.item()) / 2)


def test_motiondirector_trains_only_a_temporal_lora(backbone, tmp_path):
    method = create_method("motiondirector", backbone, {"lora_rank": 4})
    method.prepare_for_training()
    before = {n: p.detach().clone() for n, p in backbone.denoiser.named_parameters()}
    batch = _batch(backbone)
    example = Example(batch["latents"][0], batch["captions"][0], batch["text"][0], "target", "clip.mp4")
    config = TrainConfig(tmp_path / "md", steps=2, learning_rate=1e-2, checkpoint_every=0, progress=False)
    train(method, [example], config)
    changed = {n for n, p in backbone.denoiser.named_parameters() if n in before and not torch.equal(p, before[n])}
    assert changed and all(".lora_B." in n or ".lora_A." in n for n in changed)
    assert all(is_temporal_attention(backbone, n) for n in changed)
    assert method.inference_hooks() == []


def test_cli_train_and_generate_with_both_adapters(tiny_model_dir, motion_data, tmp_path):
    matcher = tmp_path / "mm"
    args = ["train", "--method", "motionmatcher", "--model", str(tiny_model_dir), "--data", str(motion_data)]
    assert main([*args, "--steps", "2", *TINY, "--output", str(matcher), "--lora-rank", "4", "--loss", "feature"]) == 0
    metadata = read_metadata(matcher / "adapter.safetensors")
    assert metadata["method"] == "motionmatcher" and metadata["hyperparameters"]["lora_rank"] == 4

    director = api.train(
        "motiondirector",
        motion_data,
        tmp_path / "md",
        model=tiny_model_dir,
        steps=2,
        frames=4,
        height=32,
        width=32,
        progress=False,
        method_options={"lora_rank": 4},
    )
    assert read_metadata(director.adapter)["method"] == "motiondirector"

    output = tmp_path / "video.mp4"
    adapters = ["--adapter", str(matcher / "adapter.safetensors"), "--adapter", str(director.adapter)]
    generate = ["generate", "--model", str(tiny_model_dir), *adapters, "--prompt", "a red circle moving"]
    assert main([*generate, "--steps", "2", "--quiet", "--output", str(output)]) == 0
    assert output.exists() and output.with_suffix(".gif").exists()


def test_feature_passes_leave_bf16_autocast_unless_asked(backbone):
    """bf16 rounding of the maps is as large as the map differences: the extractor runs in full precision."""
    batch = _batch(backbone)
    method = _matcher(backbone)

    def loss(autocast: bool) -> float:
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return method.loss(batch, torch.Generator().manual_seed(0)).item()

    full = loss(False)
    assert loss(True) == pytest.approx(full, rel=0.05)
    method.config.feature_autocast = True
    assert loss(True) > 3 * full
