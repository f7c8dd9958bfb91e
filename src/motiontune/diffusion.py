"""The noise process a denoiser was trained on: adding noise, the training target, and every conversion between
the denoiser's output kinds. The one place prediction types (eps, v [Salimans & Ho 2022], x0, flow velocity) are
told apart.

A backbone hands its process out as `Backbone.noise_process`; methods, training and sampling ask it, never a
scheduler's config. Timesteps are the model's own numbers; `noise_level(t)` puts them on [0, 1] (0 = clean,
1 = pure noise) for every process, so timestep windows are stated once for every backbone: a window value w
(`--amplify-until 700`, `--shift-window 800,600`, MotionMatcher's LoRA window 500) is the noise level
w / `WINDOW_SCALE`, i.e. timestep w of a 1000-step DDPM model, sigma w / 1000 of a flow-matching one.
"""

from __future__ import annotations

import abc
import itertools
from typing import ClassVar

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from .errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"unsupported prediction type '{prediction_type}'")


def to_epsilon(output: torch.Tensor, latents: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str):
    """The noise a denoiser output implies for `x_t = sqrt(a) x0 + sqrt(1 - a) eps`."""
    _check(prediction_type)
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * latents
    return (latents - alpha_bar.sqrt() * output) / (1 - alpha_bar).sqrt()


def to_clean(output: torch.Tensor, latents: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str):
    """The clean latent a denoiser output implies: `x0 = sqrt(a) x - sqrt(1 - a) v` for v targets, which stays
    finite at a zero-terminal-SNR timestep (a = 0), where `(x - sqrt(1 - a) eps) / sqrt(a)` does not."""
    _check(prediction_type)
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * latents - (1 - alpha_bar).sqrt() * output
    if prediction_type == "sample":
        return output
    return (latents - (1 - alpha_bar).sqrt() * output) / alpha_bar.sqrt()


def training_target(clean: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str):
    """What the denoiser learns to output for `x_t = sqrt(a) x0 + sqrt(1 - a) eps`: eps, x0, or
    v = sqrt(a) eps - sqrt(1 - a) x0."""
    _check(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * clean
    return clean


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023) of the MSE on this prediction type's target:
    min(SNR, gamma) / SNR for eps, min(SNR, gamma) / (SNR + 1) for v, min(SNR, gamma) for x0."""
    _check(prediction_type)
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


#: window values are noise levels times this (the timesteps of a 1000-step DDPM model)
WINDOW_SCALE = 1000


def window_level(value: float) -> float:
    """The noise level a timestep-window value stands for (`value / WINDOW_SCALE`)."""
    return value / WINDOW_SCALE


#: the samplers of DDPM-trained models, each configured from the folder's own scheduler config
DDPM_SAMPLERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}


class NoiseProcess(abc.ABC):
    """What methods, training and sampling may ask of a forward noise process."""

    num_timesteps: int
    #: the sampler `generate` uses unless told otherwise
    default_sampler: ClassVar[str]

    @abc.abstractmethod
    def samplers(self) -> tuple[str, ...]:
        """Names of the samplers that fit this process."""

    @abc.abstractmethod
    def make_scheduler(self, name: str):
        """A diffusers scheduler of the named sampler, configured for this process and model folder."""

    @abc.abstractmethod
    def inversion_schedule(self, num_steps: int) -> list[tuple[float, float | None, float]]:
        """Ascending `(evaluate_at, from_t, to_t)` for inverting a clean latent in `num_steps` steps: the denoiser
        runs at `evaluate_at` on x at `from_t` (None: the clean latent) and `inversion_step` carries x to `to_t`."""

    @abc.abstractmethod
    def inversion_step(
        self, output: torch.Tensor, noisy: torch.Tensor, from_t: float | None, to_t: float
    ) -> torch.Tensor:
        """x at `to_t` from x at `from_t` and the denoiser's output: the sampler's ODE step run backwards."""

    def _unknown_sampler(self, name: str) -> ConfigError:
        return ConfigError(f"unknown sampler '{name}' for this model (choose from {', '.join(self.samplers())})")

    @abc.abstractmethod
    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t for clean latents `(B, ...)`, noise of the same shape and one timestep per row."""

    @abc.abstractmethod
    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to output for x_t."""

    @abc.abstractmethod
    def to_epsilon(self, output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The noise a denoiser output implies."""

    @abc.abstractmethod
    def to_clean(self, output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The clean latent a denoiser output implies."""

    def noise_level(self, timestep: int | float) -> float:
        """The timestep's place on [0, 1] (0 clean, 1 pure noise): t / T, for DDPM and flow matching alike."""
        return float(timestep) / self.num_timesteps

    def noised(
        self, clean: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw eps (CPU generator) and return `(x_t, eps, target)`."""
        noise = torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
        return self.add_noise(clean, noise, timesteps), noise, self.target(clean, noise, timesteps)

    @staticmethod
    def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.device, torch.float32).view(-1, *[1] * (like.ndim - 1))


class DiscreteDiffusion(NoiseProcess):
    """A DDPM forward process over T discrete timesteps (Ho et al. 2020, Eq. 4),
    `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`, with the cumulative alphas and prediction type of a diffusers
    scheduler (so a zero-terminal-SNR or v-prediction folder is served as its config says)."""

    default_sampler = "ddim"

    def __init__(self, scheduler) -> None:
        self.config = scheduler.config
        self.alphas_cumprod = scheduler.alphas_cumprod.float()
        self.prediction_type = scheduler.config.prediction_type
        self.num_timesteps = int(scheduler.config.num_train_timesteps)
        _check(self.prediction_type)

    def alpha_bar(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """a_t for each batch row, shaped to broadcast over `like` `(B, ...)`, in float32 on its device."""
        return self._rows(self.alphas_cumprod[timesteps.cpu()], like)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha_bar(timesteps, clean)
        return (alpha.sqrt() * clean.float() + (1 - alpha).sqrt() * noise.float()).to(clean.dtype)

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha_bar(timesteps, clean)
        return training_target(clean.float(), noise.float(), alpha, self.prediction_type).to(clean.dtype)

    def to_epsilon(self, output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return to_epsilon(output, noisy, self.alpha_bar(timesteps, noisy), self.prediction_type)

    def to_clean(self, output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return to_clean(output, noisy, self.alpha_bar(timesteps, noisy), self.prediction_type)

    def samplers(self) -> tuple[str, ...]:
        return tuple(DDPM_SAMPLERS)

    def make_scheduler(self, name: str):
        if name not in DDPM_SAMPLERS:
            raise self._unknown_sampler(name)
        return DDPM_SAMPLERS[name].from_config(self.config)

    def inversion_schedule(self, num_steps: int) -> list[tuple[float, float | None, float]]:
        """DDIM's timesteps ascending; the denoiser runs at the next timestep on the current x (Song et al. 2021,
        Eq. 13 run forward, the usual DDIM-inversion approximation)."""
        scheduler = DDIMScheduler.from_config(self.config)
        scheduler.set_timesteps(num_steps)
        ascending = scheduler.timesteps.flip(0).tolist()
        return [(to_t, from_t, to_t) for from_t, to_t in zip([None, *ascending[:-1]], ascending, strict=True)]

    def inversion_step(
        self, output: torch.Tensor, noisy: torch.Tensor, from_t: float | None, to_t: float
    ) -> torch.Tensor:
        """`x' = sqrt(a') x0_hat + sqrt(1 - a') eps`, `x0_hat = (x - sqrt(1 - a) eps) / sqrt(a)`, where a belongs to
        `from_t` (DDIM's final alpha for the clean latent)."""
        if from_t is None:
            alpha = DDIMScheduler.from_config(self.config).final_alpha_cumprod.float()
        else:
            alpha = self.alphas_cumprod[int(from_t)]
        alpha = alpha.to(noisy.device)
        eps = to_epsilon(output, noisy, alpha, self.prediction_type)
        clean = (noisy - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        alpha_next = self.alphas_cumprod[int(to_t)].to(noisy.device)
        return alpha_next.sqrt() * clean + (1 - alpha_next).sqrt() * eps

    def min_snr_weight(self, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
        alpha = self.alphas_cumprod[timesteps.cpu()]
        return min_snr_weight(alpha / (1 - alpha), gamma, self.prediction_type)


class FlowMatching(NoiseProcess):
    """Rectified flow / flow matching (Lipman et al. 2023; Esser et al. 2024, as Wan and diffusers'
    `FlowMatchEulerDiscreteScheduler` use it): `x_t = (1 - s) x0 + s eps` with s = t / T, the denoiser predicts
    the velocity `v = eps - x0`, so `x0 = x_t - s v` and `eps = x_t + (1 - s) v`; the noise level is s itself.

    `shift` is the sampling schedule's time shift (Esser et al. 2024, Eq. 23: s' = shift s / (1 + (shift - 1) s),
    more steps at high noise), as the folder's scheduler states it; training draws t as the methods say."""

    def __init__(self, scheduler_config: dict | None = None) -> None:
        """`scheduler_config`: the folder's scheduler config (Wan: UniPC on flow sigmas with `flow_shift`, or a
        `FlowMatchEulerDiscreteScheduler` with `shift`); None: 1000 steps, no shift."""
        self.config = dict(scheduler_config or {})
        self.num_timesteps = int(self.config.get("num_train_timesteps", 1000))
        self.shift = float(self.config.get("shift") or self.config.get("flow_shift") or 1.0)

    @property
    def default_sampler(self) -> str:
        """The folder's own: `unipc` for UniPC on flow sigmas (Wan 2.1 / 2.2 folders), else `flow-euler`."""
        if self.config.get("_class_name") == "UniPCMultistepScheduler" and self.config.get("use_flow_sigmas"):
            return "unipc"
        return "flow-euler"

    def samplers(self) -> tuple[str, ...]:
        return ("flow-euler", "unipc")

    def make_scheduler(self, name: str):
        """`flow-euler`: the Euler ODE step `x' = x + (s' - s) v` (diffusers' FlowMatchEulerDiscreteScheduler);
        `unipc`: UniPC on flow sigmas (Wan's own default). Each from the folder's config when the folder's scheduler
        is of that kind, else built with this model's shift."""
        folder_class = self.config.get("_class_name")
        if name == "flow-euler":
            if folder_class == "FlowMatchEulerDiscreteScheduler":
                return FlowMatchEulerDiscreteScheduler.from_config(self.config)
            return FlowMatchEulerDiscreteScheduler(num_train_timesteps=self.num_timesteps, shift=self.shift)
        if name == "unipc":
            if folder_class == "UniPCMultistepScheduler" and self.config.get("use_flow_sigmas"):
                return UniPCMultistepScheduler.from_config(self.config)
            return UniPCMultistepScheduler(
                num_train_timesteps=self.num_timesteps,
                prediction_type="flow_prediction",
                use_flow_sigmas=True,
                flow_shift=self.shift,
            )
        raise self._unknown_sampler(name)

    def inversion_schedule(self, num_steps: int) -> list[tuple[float, float | None, float]]:
        """The Euler sampler's sigmas ascending (0 to 1); the velocity is taken where x is."""
        scheduler = self.make_scheduler("flow-euler")
        scheduler.set_timesteps(num_steps)
        ascending = (scheduler.sigmas.flip(0).double() * self.num_timesteps).tolist()
        return [(from_t, from_t, to_t) for from_t, to_t in itertools.pairwise(ascending)]

    def inversion_step(
        self, output: torch.Tensor, noisy: torch.Tensor, from_t: float | None, to_t: float
    ) -> torch.Tensor:
        """The flow ODE `dx/ds = v` run forward in s: `x' = x + (s' - s) v`."""
        return noisy + (to_t - (from_t or 0.0)) / self.num_timesteps * output

    def sigma(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self._rows(timesteps.float().cpu() / self.num_timesteps, like)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        s = self.sigma(timesteps, clean)
        return ((1 - s) * clean.float() + s * noise.float()).to(clean.dtype)

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noise - clean

    def to_epsilon(self, output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noisy + (1 - self.sigma(timesteps, noisy)) * output

    def to_clean(self, output: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return noisy - self.sigma(timesteps, noisy) * output
