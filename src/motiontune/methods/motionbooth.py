"""MotionBooth subject learning: "MotionBooth: Motion-Aware Customized Text-to-Video Generation" (Wu et al., 2024).

The UNet is fine-tuned on a few masked images of one subject, each a 1-frame video captioned
"a <token> <class word>", alternated with captioned real videos (spec §1.3-1.4, official code):

    L = L_sub + lambda_1 L_vid + lambda_2 L_stca,    lambda_1 = 1.0, lambda_2 = 0.01    (Eq. 5)

* L_sub (Eq. 2): the epsilon-MSE inside the subject mask M, resized bilinearly to the latent grid
  and binarised by `> 0`, summed and divided by the number of masked latent pixels (not x channels);
* L_vid (Eq. 3): the plain epsilon-MSE of a video batch;
* L_stca (Eq. 4): BCE between the subject tokens' cross-attention map A (mean over the layers at
  the latent/4 grid, heads and the tokens of "<token> <class word>") and M resized bilinearly (soft).
  A model without cross-attention at that level (`attention_level`, default 2) uses the nearest level
  that has it, the deeper one on a tie (`backbone.cross_attention_level`: a 2-level UNet uses level 1).

One image batch (all subject images, up to `image_batch_size`) alternates with one video batch
(`--batch-size` videos, default 1) over micro-steps, with 2 micro-steps per optimizer step, so each
update gets 1/2 grad(L_sub + lambda_2 L_stca) + 1/2 grad(lambda_1 L_vid), as the official code does.
Without videos every micro-step is an image batch. t ~ U{0..T-1}; text encoder, VAE and the token
embedding stay frozen (the token's embedding trains with `train_token`, an option beyond the paper).

Where the rest of MotionBooth lives (each piece where its layer is):
* subject images and masks, "a <token> <class word>" examples: `motiontune.io.subject_data`;
* the cross-attention box edit (Eq. 6-7, amplify then suppress outside the boxes): `attention.BoxEdit`,
  armed per step by `control.BoxControl`;
* the camera latent shift (Eq. 8, fill strips from the unshifted frame): `control.shift_frame` and
  `control.CameraShift`; its deviations from the official `shift_latent` in docs/design.md;
* control scripts (the official JSON), `--box`, `--camera-speed`, `--shift-window`: `control.motion_script`,
  `control.read_script`, `control.control_hooks`;
* the paper's claims measured on ShapeWorld: `motiontune bench motionbooth` (`app/bench_motionbooth.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from ..io.adapters import DENOISER_PREFIX
from .base import TOKEN_KEY, Method, copy_into_parameters, denoising_loss

#: `trained_parameters` options of the official code and the backbone parameter group of each.
TRAINED_GROUPS = {"full": "all", "cross": "cross", "cross_kv": "cross_kv", "wo_temp": "without_temporal_blocks"}


@dataclass
class MotionBoothConfig:
    class_word: str = field(
        default="", metadata={"help": "class noun of the subject, e.g. dog; training captions read 'a <token> <class>'"}
    )
    trained_parameters: str = field(
        default="full",
        metadata={
            "help": "UNet parameters to train: full, cross (spatial cross-attention), cross_kv (its keys and "
            "values) or wo_temp (all but temporal attention blocks and temporal convs)"
        },
    )
    masked_loss: bool = field(
        default=True, metadata={"help": "subject region loss inside the mask (off: plain MSE, the w/o-mask ablation)"}
    )
    video_loss_weight: float = field(default=1.0, metadata={"help": "lambda_1: weight of the video preservation loss"})
    attention_loss_weight: float = field(
        default=0.01, metadata={"help": "lambda_2: weight of the subject-token cross-attention loss (0 = off)"}
    )
    train_token: bool = field(
        default=False,
        metadata={
            "help": "also train the token's text embedding (the paper keeps it frozen; a model's defaults may not)"
        },
    )
    image_batch_size: int = field(default=10, metadata={"help": "subject images per image batch (capped at all)"})
    attention_level: int = field(
        default=2,
        metadata={
            "help": "resolution level of the cross-attention layers of the attention loss (2: latent/4); "
            "a model without cross-attention there uses the nearest level that has it"
        },
    )

    def __post_init__(self):
        self.class_word = " ".join(self.class_word.split())
        if not self.class_word:
            raise ConfigError("motionbooth needs the subject's class word for its captions (e.g. --class-word dog)")
        if self.trained_parameters not in TRAINED_GROUPS:
            known = ", ".join(TRAINED_GROUPS)
            raise ConfigError(f"trained_parameters must be one of {known}, got '{self.trained_parameters}'")
        if self.video_loss_weight < 0 or self.attention_loss_weight < 0:
            raise ConfigError("video_loss_weight and attention_loss_weight must be >= 0")
        if self.image_batch_size < 1 or self.attention_level < 0:
            raise ConfigError("image_batch_size must be >= 1 and attention_level >= 0")


def subject_region_loss(prediction: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Eq. 2 as the official `masked_mse_loss`: sum of squared errors where the latent mask is on,
    divided by the number of masked latent pixels; 0 when nothing is masked.

    `prediction`, `target`: `(B, C, F, h, w)`; `masks`: `(B, 1, H, W)` in {0, 1} at pixel resolution.
    """
    latent_mask = F.interpolate(masks.float(), size=prediction.shape[-2:], mode="bilinear", align_corners=False) > 0
    latent_mask = latent_mask[:, :, None].float()
    squared = (prediction.float() - target.float()) ** 2 * latent_mask
    count = latent_mask.sum() * prediction.shape[2]
    return squared.sum() / count if count > 0 else squared.sum() * 0


def attention_target(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The L_stca target: masks `(B, 1, H, W)` resized bilinearly to the attention grid, left soft."""
    return F.interpolate(masks.float(), size=grid, mode="bilinear", align_corners=False)


def subject_attention_loss(attention: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Eq. 4: mean BCE -[M log A + (1 - M) log(1 - A)] of the map `(B, F, h, w)` against the resized masks."""
    target = attention_target(masks, tuple(attention.shape[-2:])).expand_as(attention)
    with torch.autocast(attention.device.type, enabled=False):
        return F.binary_cross_entropy(attention.float(), target.float())


class MotionBooth(Method):
    name = "motionbooth"
    summary = "MotionBooth (Wu et al. 2024): a subject from masked images, with video preservation"
    Config = MotionBoothConfig
    paper_settings: ClassVar[dict] = {
        "learning_rate": 5e-6,
        "steps": 300,
        "batch_size": 1,
        "gradient_accumulation": 2,
        "frames": 24,
        "height": 320,
        "width": 576,
    }
    paper_source = "official code (MotionBooth, ZeroScope): 576x320x24, lr 5e-6, 300 steps of 1 image + 1 video batch"
    training_data = "subject images"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            self.attention_level = self.backbone.cross_attention_level(self.config.attention_level)
        except ValueError as error:
            raise ConfigError(f"motionbooth's attention loss: {error}") from None
        self.attention_sites = [
            site for site in self.backbone.sites if site.kind == "cross" and site.level == self.attention_level
        ]
        self._attention_names = {site.name for site in self.attention_sites}
        self._positions: dict[str, list[int]] = {}

    @property
    def subject_phrase(self) -> str:
        """The phrase whose tokens stand for the subject: "<token> <class word>" (e.g. "sks dog")."""
        return f"{self.token} {self.config.class_word}"

    def subject_caption(self) -> str:
        """The caption of every subject image: "a <token> <class word>" (official `train_prompt`)."""
        return f"a {self.subject_phrase}"

    def requirements(self) -> set[str]:
        return {f"parameter group {self._group()}", "cross attention"}

    def _group(self) -> str:
        return TRAINED_GROUPS[self.config.trained_parameters]

    # --- training -----------------------------------------------------------------------------
    def prepare_for_training(self) -> None:
        if self.config.attention_loss_weight and self.backbone.controller is None:
            raise ConfigError("motionbooth's attention loss needs the attention controller (use api.open_backbone)")
        unet = self.backbone.denoiser
        unet.requires_grad_(False)
        for name in self.backbone.parameter_names(self._group()):
            unet.get_parameter(name).requires_grad_(True)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.backbone.denoiser.parameters() if p.requires_grad]

    def pick_examples(self, examples: Sequence, size: int, generator: torch.Generator, micro_step: int) -> list[int]:
        """Even micro-steps: up to `image_batch_size` distinct subject images; odd ones: `size` videos."""
        images = [i for i, example in enumerate(examples) if example.mask is not None]
        videos = [i for i, example in enumerate(examples) if example.mask is None]
        if not images:
            raise InputError("motionbooth needs subject images with masks among its training examples")
        if videos and micro_step % 2:
            return [videos[j] for j in torch.randint(len(videos), (size,), generator=generator).tolist()]
        count = min(self.config.image_batch_size, len(images))
        return [images[j] for j in torch.randperm(len(images), generator=generator)[:count].tolist()]

    def _token_positions(self, caption: str) -> list[int]:
        if caption not in self._positions:
            try:
                self._positions[caption] = self.backbone.phrase_positions(caption, self.subject_phrase)
            except ValueError:
                raise InputError(f"caption {caption!r} does not contain the subject '{self.subject_phrase}'") from None
        return self._positions[caption]

    def subject_attention(self, maps: dict[str, torch.Tensor], captions: list[str]) -> torch.Tensor:
        """A `(B, F, h, w)`: recorded cross-attention probabilities of the subject tokens, averaged over
        heads and tokens, then over the layers at `attention_level` (official `aggregate_attention`)."""
        layers = []
        for site in self.attention_sites:
            probs = maps[site.name]
            per_example = [
                probs[b, ..., self._token_positions(caption)].float().mean(-1).mean(1)
                for b, caption in enumerate(captions)
            ]
            layers.append(torch.stack(per_example))
        return torch.stack(layers).mean(0)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        batch = self.conditioned(batch)
        latents = batch["latents"]
        timesteps = self.sample_timesteps(latents.shape[0], generator)
        if "masks" not in batch:
            loss = denoising_loss(self.backbone, self.diffusion, batch, timesteps, generator)
            return self.config.video_loss_weight * loss
        noisy, _, target = self.diffusion.noised(latents, timesteps, generator)
        with self._recording() as maps:
            prediction = self.backbone.predict_noise(noisy, timesteps.to(noisy.device), batch["text"])
        if self.config.masked_loss:
            loss = subject_region_loss(prediction, target, batch["masks"])
        else:
            loss = F.mse_loss(prediction.float(), target.float())
        if self.config.attention_loss_weight:
            attention = self.subject_attention(maps, batch["captions"])
            loss = loss + self.config.attention_loss_weight * subject_attention_loss(attention, batch["masks"])
        return loss

    @contextlib.contextmanager
    def _recording(self) -> Iterator[dict[str, torch.Tensor]]:
        """Record the attention-loss sites with gradients (under gradient checkpointing too: a recompute in backward
        runs with the recording as it was, `Backbone.checkpointed`)."""
        if not self.config.attention_loss_weight:
            yield {}
            return
        names = self._attention_names
        with self.backbone.controller.record(lambda site: site.name in names, with_grad=True) as maps:
            yield maps

    # --- adapter ------------------------------------------------------------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        unet = self.backbone.denoiser
        names = self.backbone.parameter_names(self._group())
        tensors = {f"{DENOISER_PREFIX}{name}": unet.get_parameter(name).detach().clone() for name in names}
        return {**tensors, **(self.trained_token.tensors() if self.trained_token else {})}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        copy_into_parameters(self.backbone.denoiser, tensors, DENOISER_PREFIX, source)
        if self.trained_token is not None:
            self.trained_token.load(tensors, source)

    def adapter_tensor_kinds(self) -> dict[str, bool]:
        """The trained parameters' keys, listed without copying the weights."""
        keys = [f"{DENOISER_PREFIX}{name}" for name in self.backbone.parameter_names(self._group())]
        return dict.fromkeys(keys + ([TOKEN_KEY] if self.trained_token else []), True)

    def adapter_metadata(self) -> dict:
        metadata = super().adapter_metadata()
        metadata["targets"] = {"groups": [self._group()], "attention_level": self.attention_level}
        metadata["subject"] = {"phrase": self.subject_phrase, "caption": self.subject_caption()}
        return metadata
