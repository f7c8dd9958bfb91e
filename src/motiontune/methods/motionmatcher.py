"""MotionMatcher: "Motion Customization of Text-to-Video Diffusion Models via Motion Feature Matching"
(Wu et al., 2025, arXiv 2502.13234), as its official code realises it.

One LoRA (rank 32) on the spatial self-attention and feed-forward layers and on every temporal
attention and feed-forward layer (`lora_layers temporal`: on the temporal ones only). Per step, with
t ~ U{500, ..., 999}:

    x_hat_{t-1} = sqrt(a_{t-1}) (x_t - sqrt(1 - a_t) eps_theta) / sqrt(a_t) + sqrt(1 - a_{t-1}) eps_theta
    x_{t-1}     = sqrt(a_{t-1}) x_0 + sqrt(1 - a_{t-1}) eps

(one DDIM step with the LoRA model's noise, and the ground-truth noisy video). The frozen model (LoRA
off) runs both at t - 1 up to the end of its down blocks; its head-averaged cross-attention maps M_CA
(all tokens) and temporal self-attention maps M_TSA (F x F per position) at the latent/4 level
(`feature_level`) are the motion features, and

    L_mot = lambda_CA MSE(M_CA(x_hat_{t-1}), M_CA(x_{t-1})) + lambda_TSA MSE(M_TSA(x_hat_{t-1}), M_TSA(x_{t-1}))

with lambda_CA = lambda_TSA = 2000 (Fig. 2-4). `loss: pixel` trains the same LoRA with the plain
denoising MSE instead (the paper's pixel-level baseline). At inference the LoRA is on only for
t >= 500, the range it was trained on. With `train_token` the token's embedding trains through the LoRA
model's prediction only (the frozen feature passes see the encoded captions detached); `timestep_sampling
coarse` draws t from [min_timestep, T) with NewMove's coarse-noise weights. The LoRA itself
(`methods.lora`) composes with other adapters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..attention import AttentionController
from ..diffusion import window_level
from ..errors import ConfigError
from ..sampling import StepHook, StepState
from .base import check_timestep_sampling, denoising_loss, drawn_timesteps
from .lora import LoraMethod, check_lora_options

LORA_LAYERS = ("spatial_self,temporal", "temporal")


@dataclass
class MotionMatcherConfig:
    loss: str = field(
        default="feature",
        metadata={"help": "feature (motion-feature matching) or pixel (plain denoising MSE on the same LoRA)"},
    )
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank"})
    lora_layers: str = field(
        default="spatial_self,temporal",
        metadata={
            "help": "where the LoRA sits: spatial_self,temporal (the official code: spatial self-attention, "
            "temporal attention and their feed-forwards) or temporal (MotionDirector's temporal LoRA)"
        },
    )
    lora_dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input while training"})
    min_timestep: int = field(default=500, metadata={"help": "training timesteps are drawn from [min_timestep, T)"})
    timestep_sampling: str = field(
        default="uniform",
        metadata={
            "help": "how training timesteps are drawn from [min_timestep, T): uniform (the paper's) or coarse "
            "(NewMove's p(t) ∝ 1 - 0.5 cos(pi t / T), noisy steps drawn more)"
        },
    )
    cross_attention_weight: float = field(
        default=2000.0, metadata={"help": "lambda_CA, weight of the cross-attention map MSE"}
    )
    temporal_attention_weight: float = field(
        default=2000.0, metadata={"help": "lambda_TSA, weight of the temporal self-attention map MSE"}
    )
    feature_level: int = field(
        default=2,
        metadata={
            "help": "resolution level of the matched attention maps: the latent grid halved this many times "
            "(2 = latent/4, ZeroScope's down_blocks.2 as the official code; a model without attention there uses "
            "the nearest level that has it)"
        },
    )
    train_token: bool = field(
        default=False, metadata={"help": "also train the token's text embedding (prompts must then hold the token)"}
    )
    lora_window_start: int = field(
        default=500,
        metadata={"help": "at inference the LoRA is on only for timesteps >= this (noise level x 1000 on any model)"},
    )
    feature_autocast: bool = field(
        default=False,
        metadata={
            "help": "run the frozen feature passes under the training autocast: faster, but bf16 rounding of "
            "the attention maps is as large as the differences the loss matches (default: full precision)"
        },
    )

    def __post_init__(self):
        if self.loss not in ("feature", "pixel"):
            raise ConfigError(f"loss must be feature or pixel, got '{self.loss}'")
        check_lora_options(self.lora_rank, self.lora_dropout)
        if self.lora_layers not in LORA_LAYERS:
            raise ConfigError(f"lora_layers must be one of {', '.join(LORA_LAYERS)}, got '{self.lora_layers}'")
        if not 1 <= self.min_timestep <= 999:
            raise ConfigError(f"min_timestep must be in [1, 999], got {self.min_timestep}")
        check_timestep_sampling(self.timestep_sampling)
        if self.feature_level < 0:
            raise ConfigError(f"feature_level must be >= 0, got {self.feature_level}")


class LoraWindow:
    """Step hook: one adapter on for timesteps >= `start` (a window value: noise level start / 1000), off below;
    switched back on after sampling."""

    def __init__(self, method: LoraMethod, start: int):
        self.method = method
        self.start = start

    def before_step(self, state: StepState) -> None:
        self.method.set_lora_enabled(state.noise_level >= window_level(self.start))

    def after_sampling(self) -> None:
        self.method.set_lora_enabled(True)


class MotionMatcher(LoraMethod):
    name = "motionmatcher"
    summary = "MotionMatcher (Wu et al. 2025): a LoRA trained by matching motion features (attention maps)"
    Config = MotionMatcherConfig
    paper_settings: ClassVar[dict] = {
        "learning_rate": 5e-4,
        "steps": 400,
        "batch_size": 1,
        "frames": 16,
        "height": 384,
        "width": 384,
    }
    paper_source = "official code (motionmatcher configs, ZeroScope): 384x384x16, lr 5e-4, 400 steps, batch 1"

    @property
    def lora_groups(self) -> list[str]:
        return self.config.lora_layers.split(",")

    def requirements(self) -> set[str]:
        return super().requirements() | {"cross attention", "temporal attention"}

    def sharding_obstacle(self) -> str | None:
        if self.config.loss != "feature":
            return None
        return (
            "its motion features stop the denoiser after its middle block, which a sharded denoiser does not "
            "survive (a crash in FSDP2's block hooks, torch 2.13); --loss pixel trains sharded"
        )

    @property
    def feature_level(self) -> int:
        return self.backbone.down_attention_level(self.config.feature_level)

    def sample_timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        steps = self.diffusion.num_timesteps
        return drawn_timesteps(batch, generator, self.config.timestep_sampling, steps, low=self.config.min_timestep)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        timesteps = self.sample_timesteps(batch["latents"].shape[0], generator)
        if self.config.loss == "pixel":
            return denoising_loss(self.backbone, self.diffusion, self.conditioned(batch), timesteps, generator)
        latents, text = batch["latents"], self.conditioned(batch)["text"]
        noisy, noise, _ = self.diffusion.noised(latents, timesteps, generator)
        timesteps = timesteps.to(latents.device)
        output = self.backbone.predict_noise(noisy, timesteps, text)
        eps = self.diffusion.to_epsilon(output.float(), noisy.float(), timesteps)
        clean = self.diffusion.to_clean(output.float(), noisy.float(), timesteps)
        predicted = self.diffusion.add_noise(clean, eps, timesteps - 1)
        target = self.diffusion.add_noise(latents.float(), noise.float(), timesteps - 1)
        return self.feature_loss(predicted.to(latents.dtype), target.to(latents.dtype), timesteps - 1, text.detach())

    def feature_loss(
        self, predicted: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor
    ) -> torch.Tensor:
        """L_mot between two noisy videos `(B, C, F, h, w)` at `timesteps`; only `predicted` carries gradients."""
        with self.frozen_extractor():
            with torch.no_grad():
                target_cross, target_temporal = self.motion_features(target, timesteps, text)
            cross, temporal = self.motion_features(predicted, timesteps, text)
        cross_loss = F.mse_loss(cross, target_cross)
        temporal_loss = F.mse_loss(temporal, target_temporal)
        return self.config.cross_attention_weight * cross_loss + self.config.temporal_attention_weight * temporal_loss

    @contextlib.contextmanager
    def frozen_extractor(self) -> Iterator[None]:
        """The pretrained model as feature extractor: this LoRA off, dropout off (eval mode) and, unless
        `feature_autocast`, no mixed-precision autocast (the maps of close videos differ by less than bf16
        resolves). Under gradient checkpointing the recompute in backward runs in this state too
        (`Backbone.checkpointed`)."""
        unet = self.backbone.denoiser
        training = unet.training
        unet.eval()
        precision = contextlib.nullcontext()
        if not self.config.feature_autocast:
            precision = torch.autocast(self.backbone.device.type, enabled=False)
        try:
            with self.lora_disabled(), precision:
                yield
        finally:
            unet.train(training)

    def motion_features(
        self, latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """M_CA `(B, F, h*w, T)` and M_TSA `(B, h*w, F, F)` at the feature level, averaged over heads and
        layers; the denoiser runs only up to the end of that level's down block."""
        backbone = self.backbone
        controller = backbone.controller or AttentionController(backbone)
        level = self.feature_level
        sites = [s for s in backbone.sites if s.block == "down" and s.level == level and s.kind != "spatial_self"]
        names = {s.name for s in sites}
        recording = controller.record(lambda site: site.name in names, with_grad=torch.is_grad_enabled())
        with recording as maps, backbone.down_blocks_only(level):
            backbone.predict_noise(latents, timesteps, text)
        cross = [maps[s.name].float().mean(2).flatten(2, 3) for s in sites if s.kind == "cross"]
        temporal = [maps[s.name].float().mean(3).flatten(1, 2) for s in sites if s.kind == "temporal"]
        return torch.stack(cross).mean(0), torch.stack(temporal).mean(0)

    def inference_hooks(self) -> list[StepHook]:
        return [LoraWindow(self, self.config.lora_window_start)]

    def adapter_metadata(self) -> dict:
        metadata = super().adapter_metadata()
        metadata["targets"]["feature_level"] = self.feature_level
        return metadata
