"""Pre-training a base text-to-video model from scratch (used to build the ShapeWorld model).

Every denoiser weight trains on the plain diffusion loss, weighted by min-SNR-gamma
(Hang et al. 2023, Eq. 8): w_t = min(SNR_t, gamma) / SNR_t for epsilon targets and
min(SNR_t, gamma) / (SNR_t + 1) for v targets, with SNR_t = a_t / (1 - a_t).
The backbone's frame positions, when it has them, train with the UNet and are saved beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from .base import Method, copy_into_parameters, copy_tensors, noised, uniform_timesteps

POSITIONS = "frame_positions."


@dataclass
class PretrainConfig:
    snr_gamma: float = field(default=5.0, metadata={"help": "min-SNR-gamma loss weighting (0 = unweighted)"})
    caption_dropout: float = field(
        default=0.1, metadata={"help": "probability of training on the empty prompt (enables guidance)"}
    )

    def __post_init__(self):
        if self.snr_gamma < 0:
            raise ConfigError(f"snr_gamma must be >= 0, got {self.snr_gamma}")
        if not 0 <= self.caption_dropout < 1:
            raise ConfigError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")


class Pretrain(Method):
    name = "pretrain"
    summary = "pre-training a base model from scratch with min-SNR weighting (world train-base)"
    internal = True
    Config = PretrainConfig
    default_learning_rate = 1e-3
    uses_token = False

    def prepare_for_training(self) -> None:
        self.backbone.unet.requires_grad_(True)
        for positions in self.backbone.frame_positions.values():
            positions.requires_grad_(True)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.backbone.unet.parameters(), *self.backbone.frame_positions.values()]

    def extra_modules(self) -> torch.nn.Module | None:
        positions = self.backbone.frame_positions.values()
        return torch.nn.ParameterList(positions) if positions else None

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        if not self.config.snr_gamma:
            return torch.ones(timesteps.shape)
        alpha = self.scheduler.alphas_cumprod[timesteps.cpu()]
        snr = alpha / (1 - alpha)
        clipped = snr.clamp(max=self.config.snr_gamma)
        if self.scheduler.config.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped / snr.clamp(min=torch.finfo(snr.dtype).tiny)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Weighted diffusion loss; a `caption_dropout` share of the batch sees the empty prompt."""
        latents, text = batch["latents"], batch["text"]
        if self.config.caption_dropout:
            if not hasattr(self, "_empty"):
                with torch.no_grad():
                    self._empty = self.backbone.encode_prompt([""])
            dropped = torch.rand(latents.shape[0], generator=generator) < self.config.caption_dropout
            text = torch.where(dropped.to(text.device)[:, None, None], self._empty.to(text.dtype), text)
        timesteps = uniform_timesteps(latents.shape[0], generator, self.scheduler.config.num_train_timesteps)
        noisy, _, target = noised(self.scheduler, latents, timesteps, generator)
        prediction = self.backbone.predict_noise(noisy, timesteps.to(noisy.device), text)
        per_sample = (prediction.float() - target.float()).square().flatten(1).mean(1)
        return (self.loss_weights(timesteps).to(per_sample.device) * per_sample).mean()

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"unet.{name}": p.detach().clone() for name, p in self.backbone.unet.named_parameters()}
        tensors.update({f"{POSITIONS}{site}": p.detach().clone() for site, p in self.backbone.frame_positions.items()})
        return tensors

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        positions = {f"{POSITIONS}{site}": p for site, p in self.backbone.frame_positions.items()}
        stray = [key for key in tensors if key.startswith(POSITIONS) and key not in positions]
        if stray:
            raise ConfigError(f"{source}: adapter tensor '{stray[0]}' has no matching frame positions in this model")
        copy_tensors(positions, tensors, source)
        copy_into_parameters(self.backbone.unet, tensors, "unet.", source)
