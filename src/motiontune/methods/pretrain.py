"""Pre-training a base text-to-video model from scratch (used to build the ShapeWorld model).

Every denoiser weight trains on the plain diffusion loss, weighted by min-SNR-gamma
(Hang et al. 2023, Eq. 8): w_t = min(SNR_t, gamma) / SNR_t for epsilon targets and
min(SNR_t, gamma) / (SNR_t + 1) for v targets, with SNR_t = a_t / (1 - a_t).
The backbone's frame positions, when it has them, train with the UNet and are saved beside it.

With `box_edit_rate` > 0, that share of the captioned clips is denoised under MotionBooth's box edit
(Eq. 6-7, the default `ControlOptions`) at the clip's own object boxes: the object's words are
suppressed outside its box, amplified inside while t > tau, the other words suppressed. Large T2V
models draw a noun where its attention goes, which box control relies on; a tiny model trained on
4,000 clips does not learn that by itself, and this teaches it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..attention import BoxEdit, RowBoxEdits, SubjectBox
from ..control import ControlOptions
from ..diffusion import window_level
from ..errors import ConfigError
from ..io.adapters import DENOISER_PREFIX
from .base import Method, copy_into_parameters, copy_tensors, uniform_timesteps

POSITIONS = "frame_positions."


@dataclass
class PretrainConfig:
    snr_gamma: float = field(default=5.0, metadata={"help": "min-SNR-gamma loss weighting (0 = unweighted)"})
    caption_dropout: float = field(
        default=0.1, metadata={"help": "probability of training on the empty prompt (enables guidance)"}
    )

    box_edit_rate: float = field(
        default=0.0,
        metadata={
            "help": "share of captioned clips denoised under the box edit at their own object boxes "
            "(0 = off; needs clips with boxes and subject words)"
        },
    )

    def __post_init__(self):
        if not 0 <= self.box_edit_rate <= 1:
            raise ConfigError(f"box_edit_rate must be in [0, 1], got {self.box_edit_rate}")
        if self.snr_gamma < 0:
            raise ConfigError(f"snr_gamma must be >= 0, got {self.snr_gamma}")
        if not 0 <= self.caption_dropout < 1:
            raise ConfigError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")


class Pretrain(Method):
    name = "pretrain"
    summary = "pre-training a base model from scratch with min-SNR weighting (world train-base)"
    internal = True
    Config = PretrainConfig
    paper_settings: ClassVar[dict] = {"learning_rate": 1e-3}
    paper_source = "the ShapeWorld recipe (configs/shapeworld-base.yaml)"
    uses_token = False

    def prepare_for_training(self) -> None:
        if self.config.box_edit_rate and self.backbone.controller is None:
            raise ConfigError("pretrain's box_edit_rate needs the attention controller (use api.open_backbone)")
        self.backbone.denoiser.requires_grad_(True)
        for positions in self.backbone.frame_positions.values():
            positions.requires_grad_(True)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.backbone.denoiser.parameters(), *self.backbone.frame_positions.values()]

    def extra_modules(self) -> torch.nn.Module | None:
        positions = self.backbone.frame_positions.values()
        return torch.nn.ParameterList(positions) if positions else None

    def loss_weights(self, timesteps: torch.Tensor) -> torch.Tensor:
        if not self.config.snr_gamma:
            return torch.ones(timesteps.shape)
        return self.diffusion.min_snr_weight(timesteps, self.config.snr_gamma)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Weighted diffusion loss; a `caption_dropout` share of the batch sees the empty prompt, a
        `box_edit_rate` share of the others the box edit at their own boxes."""
        latents, text = batch["latents"], batch["text"]
        captioned = torch.ones(latents.shape[0], dtype=torch.bool)
        if self.config.caption_dropout:
            if not hasattr(self, "_empty"):
                with torch.no_grad():
                    self._empty = self.backbone.encode_prompt([""])
            dropped = torch.rand(latents.shape[0], generator=generator) < self.config.caption_dropout
            text = torch.where(dropped.to(text.device)[:, None, None], self._empty.to(text.dtype), text)
            captioned = ~dropped
        timesteps = uniform_timesteps(latents.shape[0], generator, self.diffusion.num_timesteps)
        noisy, _, target = self.diffusion.noised(latents, timesteps, generator)
        with contextlib.ExitStack() as editing:
            if self.config.box_edit_rate:
                edited = captioned & (torch.rand(latents.shape[0], generator=generator) < self.config.box_edit_rate)
                editing.enter_context(self.backbone.controller.editing(self.box_edits(batch, edited, timesteps)))
            prediction = self.backbone.predict_noise(noisy, timesteps.to(noisy.device), text)
        per_sample = (prediction.float() - target.float()).square().flatten(1).mean(1)
        return (self.loss_weights(timesteps).to(per_sample.device) * per_sample).mean()

    def box_edits(self, batch: dict, edited: torch.Tensor, timesteps: torch.Tensor) -> RowBoxEdits:
        """The default box edit at each `edited` row's own boxes, amplifying where its timestep is above tau."""
        if "boxes" not in batch:
            raise ConfigError("pretrain's box_edit_rate needs training clips with per-frame boxes and subject words")
        options = ControlOptions()
        edits: list[BoxEdit | None] = []
        for row, caption in enumerate(batch["captions"]):
            if not edited[row]:
                edits.append(None)
                continue
            subject = batch["subjects"][row]
            try:
                positions = self.backbone.phrase_positions(caption, subject)
            except ValueError:
                raise ConfigError(f"caption {caption!r} does not contain its subject words {subject!r}") from None
            edit = options.box_edit([SubjectBox(positions, batch["boxes"][row])], self.backbone.word_positions(caption))
            edit.amplify = self.diffusion.noise_level(int(timesteps[row])) > window_level(options.amplify_until)
            edits.append(edit)
        return RowBoxEdits(edits)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            f"{DENOISER_PREFIX}{name}": p.detach().clone() for name, p in self.backbone.denoiser.named_parameters()
        }
        tensors.update({f"{POSITIONS}{site}": p.detach().clone() for site, p in self.backbone.frame_positions.items()})
        return tensors

    def adapter_tensor_kinds(self) -> dict[str, bool]:
        """Every denoiser parameter's key and the frame positions', listed without copying the weights."""
        keys = [f"{DENOISER_PREFIX}{name}" for name, _ in self.backbone.denoiser.named_parameters()]
        return dict.fromkeys(keys + [f"{POSITIONS}{site}" for site in self.backbone.frame_positions], True)

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        positions = {f"{POSITIONS}{site}": p for site, p in self.backbone.frame_positions.items()}
        stray = [key for key in tensors if key.startswith(POSITIONS) and key not in positions]
        if stray:
            raise ConfigError(f"{source}: adapter tensor '{stray[0]}' has no matching frame positions in this model")
        copy_tensors(positions, tensors, source)
        copy_into_parameters(self.backbone.denoiser, tensors, DENOISER_PREFIX, source)
