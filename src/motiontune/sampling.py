"""One sampling loop for every method: any diffusers scheduler, batched guidance, per-step hooks.

k-diffusion style: `sample` is a plain function; `invert` and `noise_prior` are the other two pieces the
methods need (inversion of a reference video, DDIM's or the flow ODE's, and the blended initial noise).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm.auto import tqdm

from .backbones.base import Backbone
from .errors import ConfigError


@dataclass
class StepState:
    """Where the sampling loop is. Hooks may replace `latents` before the denoiser runs.

    `history` holds the latent-shaped tensors a multistep scheduler carries between steps (DPM-Solver++
    and UniPC keep past model outputs, UniPC also its last sample); a hook that moves content in space
    must move them too, and may replace them in the list.
    """

    index: int
    #: the scheduler's timestep (an integer on DDPM models, a float t = 1000 s on flow-matching ones)
    timestep: float
    #: the timestep's noise level in [0, 1] (`NoiseProcess.noise_level`): what timestep windows compare against
    noise_level: float
    num_steps: int
    latents: torch.Tensor
    generator: torch.Generator | None
    history: list[torch.Tensor] = field(default_factory=list)
    #: timesteps per latent frame `(F,)` for this step's denoiser call, where a hook sets them (a clean first frame)
    frame_timesteps: torch.Tensor | None = None


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


def make_scheduler(backbone: Backbone, name: str | None = None):
    """A scheduler of the named sampler (default: the model's, `ddim` on DDPM models, the folder's own on flow-matching
    ones: `unipc` on Wan folders), configured for the model's noise process from its folder."""
    process = backbone.noise_process
    return process.make_scheduler(name or process.default_sampler)


def guided_prediction(
    backbone: Backbone,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    text: torch.Tensor,
    uncond_text: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, Eq. 6) with both halves in one batch:
    `e = e_u + w (e_c - e_u)`. Rows of the conditional half are marked for attention edits. `timestep` is one for
    all rows (0-d), or one per row and latent frame `(B, F)` (a backbone that starts from an image)."""
    batch = latents.shape[0]
    if uncond_text is None or guidance_scale == 1.0:
        conditional = torch.ones(batch, dtype=torch.bool)
        return backbone.predict_noise(latents, timestep, text, conditional)
    conditional = torch.cat([torch.zeros(batch, dtype=torch.bool), torch.ones(batch, dtype=torch.bool)])
    timesteps = torch.cat([timestep, timestep]) if timestep.ndim == 2 else timestep
    both = backbone.predict_noise(torch.cat([latents, latents]), timesteps, torch.cat([uncond_text, text]), conditional)
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
    latents = latents * getattr(scheduler, "init_noise_sigma", 1.0)
    stochastic = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if stochastic else {}
    for index, timestep in enumerate(tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False)):
        slots = _history_slots(scheduler)
        history = [_read_slot(scheduler, slot) for slot in slots]
        level = backbone.noise_process.noise_level(float(timestep))
        state = StepState(index, float(timestep), level, num_steps, latents, generator, history)
        for hook in hooks:
            hook.before_step(state)
        latents = state.latents
        for slot, tensor in zip(slots, state.history, strict=True):
            _write_slot(scheduler, slot, tensor)
        model_input = latents
        if hasattr(scheduler, "scale_model_input"):  # flow-matching schedulers have none: their input is x_t itself
            model_input = scheduler.scale_model_input(latents, timestep)
        denoiser_timestep = timestep
        if state.frame_timesteps is not None:
            denoiser_timestep = state.frame_timesteps[None].expand(latents.shape[0], -1)
        noise = guided_prediction(backbone, model_input, denoiser_timestep, text, uncond_text, guidance_scale)
        latents = scheduler.step(noise, timestep, latents, return_dict=False, **step_kwargs)[0]
    for hook in hooks:
        if hasattr(hook, "after_sampling"):
            hook.after_sampling()
    return latents


@torch.no_grad()
def invert(
    backbone: Backbone,
    latents: torch.Tensor,
    text: torch.Tensor,
    num_steps: int = 50,
    progress: bool = True,
) -> torch.Tensor:
    """Deterministic inversion of clean latents to noise, no guidance: the sampler's ODE run backwards, as the
    model's noise process schedules it (`NoiseProcess.inversion_schedule`). On DDPM models this is DDIM inversion
    (Song et al. 2021, Eq. 13 run forward in time), on flow-matching models the Euler step `x' = x + (s' - s) v`."""
    process = backbone.noise_process
    x = latents.float()
    schedule = process.inversion_schedule(num_steps)
    for evaluate_at, from_t, to_t in tqdm(schedule, desc="inversion", disable=not progress, leave=False):
        timestep = torch.tensor(evaluate_at)
        output = backbone.predict_noise(x.to(latents.dtype), timestep, text).float()
        x = process.inversion_step(output, x, from_t, to_t)
    return x.to(latents.dtype)


def noise_prior(inverted: torch.Tensor, noise: torch.Tensor, prior: float) -> torch.Tensor:
    """Initial latents blended from an inverted reference: `z = sqrt(p) z_inv + sqrt(1 - p) eps`."""
    if not 0.0 <= prior <= 1.0:
        raise ConfigError(f"noise prior must be in [0, 1], got {prior}")
    return prior**0.5 * inverted + (1 - prior) ** 0.5 * noise
