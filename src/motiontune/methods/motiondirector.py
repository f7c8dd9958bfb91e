"""MotionDirector-style baseline (Zhao et al., 2023, arXiv 2310.08465): a temporal LoRA with the
appearance-debiased temporal loss.

A rank-32 LoRA on every temporal attention and feed-forward layer (`transformer_in` included) is
trained with t ~ U{0, ..., 999} (`timestep_sampling: coarse`: NewMove's coarse-noise timesteps) on

    L = MSE(eps_hat, eps) + MSE(phi(eps_hat), phi(eps)),   phi(e) = sqrt(beta^2 + 1) e - beta e_a

where `e_a` is the frame `a` of `e` (a random anchor frame per clip, shared by prediction and target)
and beta = 1, so alpha = sqrt(2) (official `MotionDirector_train.py`). For v-prediction models the
same loss applies to v. The paper's spatial path (per-frame spatial LoRAs that absorb appearance and
are thrown away) is left out: only the temporal LoRA is kept at inference anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from .base import check_timestep_sampling, drawn_timesteps
from .lora import LoraMethod, check_lora_options


def appearance_debiased_loss(
    prediction: torch.Tensor, target: torch.Tensor, anchors: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """MSE plus MSE of the anchor-debiased videos `(B, C, F, h, w)`, anchor frame `anchors[b]` per clip."""
    index = anchors.to(prediction.device).view(-1, 1, 1, 1, 1).expand(-1, prediction.shape[1], 1, *prediction.shape[3:])

    def debiased(video: torch.Tensor) -> torch.Tensor:
        return (beta**2 + 1) ** 0.5 * video - beta * video.gather(2, index)

    return F.mse_loss(prediction, target) + F.mse_loss(debiased(prediction), debiased(target))


@dataclass
class MotionDirectorConfig:
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank"})
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input while training"})
    debias_beta: float = field(default=1.0, metadata={"help": "beta of the appearance-debiased loss"})
    train_token: bool = field(
        default=False, metadata={"help": "also train the token's text embedding (prompts must then hold the token)"}
    )
    timestep_sampling: str = field(
        default="uniform",
        metadata={
            "help": "uniform (MotionDirector) or coarse (NewMove's p(t) ∝ 1 - 0.5 cos(pi t/T): noisy steps 3x as often)"
        },
    )

    def __post_init__(self):
        check_lora_options(self.lora_rank, self.lora_dropout)
        check_timestep_sampling(self.timestep_sampling)


class MotionDirector(LoraMethod):
    name = "motiondirector"
    summary = "MotionDirector-style baseline: a temporal LoRA with the appearance-debiased loss"
    Config = MotionDirectorConfig
    paper_settings: ClassVar[dict] = {
        "learning_rate": 5e-4,
        "steps": 150,
        "batch_size": 1,
        "frames": 16,
        "height": 384,
        "width": 384,
    }
    paper_source = "official code (MotionDirector single-video config, ZeroScope): 384x384x16, lr 5e-4, 150 steps"
    lora_groups: ClassVar[list[str]] = ["temporal"]

    def sample_timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        steps = self.diffusion.num_timesteps
        return drawn_timesteps(batch, generator, self.config.timestep_sampling, steps)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        latents = batch["latents"]
        timesteps = self.sample_timesteps(latents.shape[0], generator)
        noisy, _, target = self.diffusion.noised(latents, timesteps, generator)
        prediction = self.backbone.predict_noise(noisy, timesteps.to(noisy.device), self.conditioned(batch)["text"])
        anchors = torch.randint(latents.shape[2], (latents.shape[0],), generator=generator)
        return appearance_debiased_loss(prediction.float(), target.float(), anchors, self.config.debias_beta)
