"""One sampling loop for every method: any diffusers scheduler, batched guidance, per-step hooks.

k-diffusion style: `sample` is a plain function; `ddim_invert` and `noise_prior` are the other
two pieces the methods need (DDIM inversion of a reference video and the blended initial noise).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from tqdm.auto import tqdm

from .backbones.base import Backbone
from .diffusion import to_epsilon
from .errors import ConfigError

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}


@dataclass
class StepState:
    """Where the sampling loop is. Hooks may replace `latents` before the denoiser runs.

    `history` holds the latent-shaped tensors a multistep scheduler carries between steps (DPM-Solver++
    and UniPC keep past model outputs, UniPC also its last sample); a hook that moves content in space
    must move them too, and may replace them in the list.
    """

    index: int
    timestep: int
    #: the timestep's noise level in [0, 1] (`NoiseProcess.noise_level`): what timestep windows compare against
    noise_level: float
    num_steps: int
    latents: torch.Tensor
    generator: torch.Generator | None
    history: list[torch.Tensor] = field(default_factory=list)


class StepHook(Protocol):
    """Called before every denoising step (latent shift, attention edits, adapter windows)."""

    def before_step(self, state: StepState) -> None: ...


class AfterSampling(Protocol):
    def after_sampling(self) -> None: ...


def _history_slots(scheduler) -> list[tuple[str, int | None]]:
    """Where `scheduler` keeps latent-shaped tensors between steps: `(attribute, list index or None)`."""
    outputs = getattr(scheduler, "model_outputs", None) or []
    slots: list[tuple[str, int | None]] = [("model_outputs", i) for i, t in enumerate(outputs) if t is not None]
    if getattr(scheduler, "last_sample", None) is not None:
        slots.append(("last_sample", None))
    return slots


def _read_slot(scheduler, slot: tuple[str, int | None]) -> torch.Tensor:
    name, index = slot
    return getattr(scheduler, name) if index is None else getattr(scheduler, name)[index]


def _write_slot(scheduler, slot: tuple[str, int | None], tensor: torch.Tensor) -> None:
    name, index = slot
    if index is None:
        setattr(scheduler, name, tensor)
    else:
        getattr(scheduler, name)[index] = tensor


def make_scheduler(backbone: Backbone, name: str = "ddim"):
    """A scheduler of the named kind, configured from the model folder's own scheduler config."""
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown sampler '{name}' (choose from {', '.join(SCHEDULERS)})")
    return SCHEDULERS[name].from_config(backbone.scheduler.config)


def guided_prediction(
    backbone: Backbone,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    uncond_text: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6) with both halves in one batch:
    `e = e_u + w (e_c - e_u)`. Rows of the conditional half are marked for attention edits."""
    batch = latents.shape[0]
    if uncond_text is None or guidance_scale == 1.0:
        conditional = torch.ones(batch, dtype=torch.bool)
        return backbone.predict_noise(latents, timestep, text, conditional)
    conditional = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)])
    both = backbone.predict_noise(torch.cat([latents, latents]), timestep, torch.cat([uncond_text, text]), conditional)
    uncond, cond = both.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


@torch.no_grad()
def sample(
    backbone: Backbone,
    latents: torch.Tensor,
    text: torch.Tensor,
    uncond_text: torch.Tensor | None,
    scheduler,
    num_steps: int = 50,
    guidance_scale: float = 9.0,
    generator: torch.Generator | None = None,
    hooks: Sequence[StepHook] = (),
    progress: bool = True,
) -> torch.Tensor:
    """Denoise `latents` (scaled by the scheduler's initial sigma here) from pure noise to a sample.

    With the default DDIM scheduler this is Song et al. (2021) Eq. 12 with eta = 0.
    """
    scheduler.set_timesteps(num_steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    stochastic = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if stochastic else {}
    for index, timestep in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False)):
        slots = _history_slots(scheduler)
        history = [_read_slot(scheduler, slot) for slot in slots]
        level = backbone.noise_process.noise_level(int(timestep))
        state = StepState(index, int(timestep), level, num_steps, latents, generator, history)
        for hook in hooks:
            hook.before_step(state)
        latents = state.latents
        for slot, tensor in zip(slots, state.history, strict=True):
            _write_slot(scheduler, slot, tensor)
        model_input = scheduler.scale_model_input(latents, timestep)
        noise = guided_prediction(backbone, model_input, timestep, text, uncond_text, guidance_scale)
        latents = scheduler.step(noise, timestep, latents, return_dict=False, **step_kwargs)[0]
    for hook in hooks:
        if hasattr(hook, "after_sampling"):
            hook.after_sampling()
    return latents


@torch.no_grad()
def ddim_invert(
    backbone: Backbone,
    latents: torch.Tensor,
    text: torch.Tensor,
    num_steps: int = 50,
    progress: bool = True,
) -> torch.Tensor:
    """Deterministic DDIM inversion (Song et al. 2021, Eq. 13 run forward in time), no guidance.

    Ascends the DDIM timesteps of `num_steps` steps:
    `x_next = sqrt(a_next) * x0_hat + sqrt(1 - a_next) * eps`, `x0_hat = (x - sqrt(1 - a) eps) / sqrt(a)`.
    """
    scheduler = DDIMScheduler.from_config(backbone.scheduler.config)
    scheduler.set_timesteps(num_steps)
    alphas = scheduler.alphas_cumprod.to(latents.device, torch.float32)
    prediction_type = scheduler.config.prediction_type
    ascending = scheduler.timesteps.flip(0).tolist()
    previous_alpha = scheduler.final_alpha_cumprod.to(latents.device, torch.float32)
    x = latents.float()
    for timestep in tqdm(ascending, desc="DDIM inversion", disable=not progress, leave=False):
        output = backbone.predict_noise(x.to(latents.dtype), torch.tensor(timestep), text).float()
        eps = to_epsilon(output, x, previous_alpha, prediction_type)
        x0 = (x - (1 - previous_alpha).sqrt() * eps) / previous_alpha.sqrt()
        alpha = alphas[timestep]
        x = alpha.sqrt() * x0 + (1 - alpha).sqrt() * eps
        previous_alpha = alpha
    return x.to(latents.dtype)


def noise_prior(inverted: torch.Tensor, noise: torch.Tensor, prior: float) -> torch.Tensor:
    """Initial latents blended from an inverted reference: `z = sqrt(p) z_inv + sqrt(1 - p) eps`."""
    if not 0.0 <= prior <= 1.0:
        raise ConfigError(f"noise prior must be in [0, 1], got {prior}")
    return prior**0.5 * inverted + (1 - prior) ** 0.5 * noise
