"""The sampling loop, DDIM inversion and the noise prior."""

from __future__ import annotations

import pytest
import torch

from motiontune.diffusion import (
    DDPM_SAMPLERS,
    DiscreteDiffusion,
    FlowMatching,
    min_snr_weight,
    to_clean,
    to_epsilon,
    training_target,
    window_level,
)
from motiontune.errors import ConfigError
from motiontune.generation import GenerationConfig, generate_latents
from motiontune.sampling import guided_prediction, invert, make_scheduler, noise_prior, sample


@pytest.fixture
def backbone(unet3d_backbone):
    """The tiny UNet3D only: the sampling loop, inversion and noise process only call the contract;
    test_animatediff.py samples and inverts on AnimateDiff, test_wan.py with flow matching on Wan."""
    return unet3d_backbone


def _settings(**overrides) -> GenerationConfig:
    return GenerationConfig(**{"frames": 3, "height": 32, "width": 32, "steps": 4, "progress": False, **overrides})


def test_sampling_is_bit_identical_for_a_seed_and_differs_across_seeds(backbone):
    first = generate_latents(backbone, ["a red circle"], settings=_settings(seed=7))
    second = generate_latents(backbone, ["a red circle"], settings=_settings(seed=7))
    other = generate_latents(backbone, ["a red circle"], settings=_settings(seed=8))
    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


@pytest.mark.parametrize("name", sorted(DDPM_SAMPLERS))
def test_every_sampler_runs_from_the_folder_config(backbone, name):
    latents = generate_latents(backbone, ["a red circle"], settings=_settings(sampler=name, steps=3))
    assert latents.shape == (1, 4, 3, 16, 16) and torch.isfinite(latents).all()


def test_unknown_sampler_is_rejected(backbone):
    with pytest.raises(ConfigError, match="unknown sampler 'nope'"):
        make_scheduler(backbone, "nope")


def test_guidance_combines_both_halves_of_one_batch(backbone):
    latents = torch.randn(1, 4, 2, 8, 8)
    text, uncond = backbone.encode_prompt(["a red circle"]), backbone.encode_prompt([""])
    t = torch.tensor(500)
    cond_only = backbone.predict_noise(latents, t, text)
    uncond_only = backbone.predict_noise(latents, t, uncond)
    guided = guided_prediction(backbone, latents, t, text, uncond, 7.5)
    assert torch.allclose(guided, uncond_only + 7.5 * (cond_only - uncond_only), atol=1e-4)
    assert torch.equal(guided_prediction(backbone, latents, t, text, uncond, 1.0), cond_only)


class _Recorder:
    def __init__(self):
        self.timesteps = []

    def before_step(self, state):
        self.timesteps.append(state.timestep)
        if state.index == 0:
            state.latents = torch.zeros_like(state.latents)


def test_hooks_run_before_every_step_and_may_replace_latents(backbone):
    recorder = _Recorder()
    text, uncond = backbone.encode_prompt(["a"]), backbone.encode_prompt([""])
    noise = torch.randn(1, 4, 2, 8, 8)
    hooked = sample(backbone, noise, text, uncond, make_scheduler(backbone), 5, hooks=[recorder], progress=False)
    zero_start = sample(backbone, torch.zeros_like(noise), text, uncond, make_scheduler(backbone), 5, progress=False)
    assert recorder.timesteps == sorted(recorder.timesteps, reverse=True) and len(recorder.timesteps) == 5
    assert torch.equal(hooked, zero_start)


class _HistoryHook:
    """Records how many remembered tensors each step exposes and zeroes them from step `zero_from` on."""

    def __init__(self, zero_from: int):
        self.sizes: list[int] = []
        self.zero_from = zero_from

    def before_step(self, state):
        self.sizes.append(len(state.history))
        if state.index >= self.zero_from:
            state.history[:] = [torch.zeros_like(t) for t in state.history]


@pytest.mark.parametrize("name, sizes", [("dpm++", [0, 1, 2, 2]), ("unipc", [0, 2, 3, 3]), ("ddim", [0, 0, 0, 0])])
def test_hooks_see_and_may_replace_what_a_multistep_sampler_remembers(backbone, name, sizes):
    text, uncond = backbone.encode_prompt(["a"]), backbone.encode_prompt([""])
    noise = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    runs = []
    for zero_from in (99, 2):
        hook = _HistoryHook(zero_from)
        scheduler = make_scheduler(backbone, name)
        runs.append(sample(backbone, noise, text, uncond, scheduler, 4, hooks=[hook], progress=False))
        assert hook.sizes == sizes
    assert torch.equal(runs[0], runs[1]) == (name == "ddim")


def test_ddim_inversion_round_trips_exactly_when_the_model_predicts_no_noise(backbone):
    with torch.no_grad():
        backbone.denoiser.conv_out.weight.zero_()
        backbone.denoiser.conv_out.bias.zero_()
    x0 = torch.randn(1, 4, 3, 8, 8) * 0.5
    uncond = backbone.encode_prompt([""])
    inverted = invert(backbone, x0, uncond, 10, progress=False)
    back = sample(backbone, inverted, uncond, None, make_scheduler(backbone), 10, guidance_scale=1.0, progress=False)
    assert torch.allclose(back, x0, atol=1e-5)


def test_ddim_inversion_comes_back_close_and_closer_with_more_steps(backbone):
    with torch.no_grad():
        backbone.denoiser.conv_out.weight.mul_(0.1)
        backbone.denoiser.conv_out.bias.mul_(0.1)
    x0 = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    uncond = backbone.encode_prompt([""])
    errors = []
    for steps in (10, 40):
        inverted = invert(backbone, x0, uncond, steps, progress=False)
        back = sample(backbone, inverted, uncond, None, make_scheduler(backbone), steps, 1.0, progress=False)
        errors.append((back - x0).abs().mean().item())
    assert errors[1] < errors[0] and errors[1] < 0.05 * x0.abs().mean().item() * 4


def test_clean_latent_from_every_parametrisation_and_at_zero_snr():
    clean, noise = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.25])
    alpha = torch.tensor(0.36)
    noisy = 0.6 * clean + 0.8 * noise
    velocity = 0.6 * noise - 0.8 * clean
    for output, kind in ((noise, "epsilon"), (velocity, "v_prediction"), (clean, "sample")):
        torch.testing.assert_close(to_clean(output, noisy, alpha, kind), clean)
    zero = torch.tensor(0.0)
    torch.testing.assert_close(to_clean(-clean, noise, zero, "v_prediction"), clean)
    with pytest.raises(ConfigError, match="unsupported prediction type 'flow'"):
        to_clean(noise, noisy, alpha, "flow")


def test_noise_prior_blends_by_square_roots():
    inverted, noise = torch.full((2,), 2.0), torch.full((2,), -1.0)
    assert torch.allclose(noise_prior(inverted, noise, 0.36), torch.full((2,), 0.6 * 2 - 0.8))
    assert torch.equal(noise_prior(inverted, noise, 0.0), noise)
    with pytest.raises(ConfigError, match="noise prior"):
        noise_prior(inverted, noise, 1.5)


def test_generation_from_an_inverted_reference(backbone, motion_data):
    reference = sorted(motion_data.glob("*.mp4"))[0]
    settings = _settings(reference=reference, noise_prior=1.0, steps=6, guidance_scale=1.0)
    with torch.no_grad():
        backbone.denoiser.conv_out.weight.zero_()
        backbone.denoiser.conv_out.bias.zero_()
    from motiontune.io.video import read_video

    target = backbone.encode_video(read_video(reference, 3, 32, 32)[None])
    latents = generate_latents(backbone, [""], settings=settings)
    assert torch.allclose(latents, target, atol=1e-4)
    with pytest.raises(ConfigError, match="--reference"):
        _settings(noise_prior=0.5)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_prediction_type_conversions_by_hand(kind):
    """a = 0.64: x_t = 0.8 x0 + 0.6 eps; with x0 = 1, eps = 2: x_t = 2, v = 0.8 * 2 - 0.6 * 1 = 1."""
    alpha, clean, noise = torch.tensor(0.64), torch.tensor(1.0), torch.tensor(2.0)
    noisy = alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
    target = training_target(clean, noise, alpha, kind)
    assert target.item() == pytest.approx({"epsilon": 2.0, "v_prediction": 1.0, "sample": 1.0}[kind])
    assert to_epsilon(target, noisy, alpha, kind).item() == pytest.approx(2.0)
    assert to_clean(target, noisy, alpha, kind).item() == pytest.approx(1.0)
    snr = alpha / (1 - alpha)  # 16 / 9
    expected = {"epsilon": 9 / 16, "v_prediction": 1 / (16 / 9 + 1), "sample": 1.0}[kind]
    assert min_snr_weight(snr, 1.0, kind).item() == pytest.approx(expected)
    with pytest.raises(ConfigError, match="unsupported prediction type 'flow'"):
        training_target(clean, noise, alpha, "flow")


def test_the_noise_process_adds_noise_and_converts_as_the_scheduler_does(backbone):
    """The backbone's DDPM process against diffusers' own `add_noise` / `get_velocity`, and noise levels."""
    from diffusers import DDPMScheduler

    process = backbone.noise_process
    scheduler = DDPMScheduler.from_config(backbone.scheduler.config, prediction_type="v_prediction")
    v_process = DiscreteDiffusion(scheduler)
    clean, noise = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(process.add_noise(clean, noise, t), scheduler.add_noise(clean, noise, t))
    torch.testing.assert_close(v_process.target(clean, noise, t), scheduler.get_velocity(clean, noise, t))
    noisy = process.add_noise(clean, noise, t)
    torch.testing.assert_close(v_process.to_epsilon(v_process.target(clean, noise, t), noisy, t), noise)
    torch.testing.assert_close(process.to_clean(noise, noisy, t), clean, atol=1e-4, rtol=1e-4)
    assert process.num_timesteps == 1000 and process.noise_level(700) == 0.7


def test_the_flow_matching_process_by_hand():
    """s = t / T = 0.25: x_t = 0.75 x0 + 0.25 eps, v = eps - x0; x0 = x_t - s v, eps = x_t + (1 - s) v."""
    process = FlowMatching({"num_train_timesteps": 1000})
    clean, noise, t = torch.tensor([[1.0]]), torch.tensor([[3.0]]), torch.tensor([250])
    noisy = process.add_noise(clean, noise, t)
    velocity = process.target(clean, noise, t)
    assert noisy.item() == pytest.approx(1.5) and velocity.item() == pytest.approx(2.0)
    assert process.to_clean(velocity, noisy, t).item() == pytest.approx(1.0)
    assert process.to_epsilon(velocity, noisy, t).item() == pytest.approx(3.0)
    assert process.noise_level(250) == 0.25 == window_level(250)


def test_timestep_windows_compare_noise_levels(backbone):
    """A hook sees each step's noise level; on this 1000-step model it is t / 1000, the window values' scale."""

    class Levels:
        def __init__(self):
            self.seen: list[tuple[int, float]] = []

        def before_step(self, state):
            self.seen.append((state.timestep, state.noise_level))

    recorder = Levels()
    latents = torch.randn(1, 4, 2, 4, 4)
    text = backbone.encode_prompt(["a red circle"])
    sample(backbone, latents, text, None, make_scheduler(backbone), 4, 1.0, hooks=[recorder], progress=False)
    assert recorder.seen and all(level == t / 1000 for t, level in recorder.seen)
