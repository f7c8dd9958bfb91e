"""NewMove: "Customizing Motion in Text-to-Video Diffusion Models" (Materzynska et al., 2023).

Fine-tune all temporal layers and the spatial cross-attention keys/values on a few videos of one
motion captioned with a rare token V* (Sec. 3.2), mixed with real regularization videos
(Eq. 3: min sum over D^m ∪ D^r of L(x, c)), with the loss of Eq. 1 under coarse-noise timestep
sampling p(t) ∝ 1 - alpha cos(pi t / T), alpha = 0.5. The token embedding stays frozen unless `train_token`.

Every ablation of the paper's Table 2 is a switch: `spatial` none/kv/all (a), `temporal` (b),
`train_token` (c), `timestep_sampling` uniform/coarse (d), regularization none/real (the
training data, e), and `adapter` full/lora with `lora_rank` 32 (f). The LoRA variant's adapter
(`methods.lora`) stays active next to other adapters, e.g. a MotionMatcher LoRA, when they compose.
Beyond the paper, `temporal_part routing` trains only the temporal attentions' queries and keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import ConfigError
from ..io.adapters import DENOISER_PREFIX
from .base import TOKEN_KEY, Method, check_timestep_sampling, copy_into_parameters, drawn_timesteps, uniform_picks
from .lora import inject_lora, load_lora_tensors, lora_layers, lora_parameters, lora_tensors

SPATIAL_GROUPS = {"none": [], "kv": ["cross_kv"], "all": ["spatial"]}
#: what of the temporal layers trains: all of them (the paper), or only their queries and keys (`routing`: which
#: frame, or on a DiT which token of which frame, reads which; the values that carry the look stay frozen)
TEMPORAL_GROUPS = {"all": "temporal", "routing": "temporal_routing"}


@dataclass
class NewMoveConfig:
    spatial: str = field(
        default="kv",
        metadata={"help": "spatial parameters to train: none, kv (cross-attention keys/values) or all"},
    )
    temporal: bool = field(default=True, metadata={"help": "train all temporal layers (convs and transformers)"})
    temporal_part: str = field(
        default="all",
        metadata={"help": "all temporal parameters (the paper) or routing (their attention queries and keys only)"},
    )
    train_token: bool = field(default=False, metadata={"help": "also train the token's text embedding"})
    timestep_sampling: str = field(
        default="coarse", metadata={"help": "coarse (p(t) ∝ 1 - alpha cos(pi t/T)) or uniform"}
    )
    coarse_alpha: float = field(default=0.5, metadata={"help": "alpha of coarse-noise timestep sampling"})
    adapter: str = field(default="full", metadata={"help": "full fine-tuning or lora on the same layers"})
    lora_rank: int = field(default=32, metadata={"help": "LoRA rank when --adapter lora"})
    regularization_share: float | None = field(
        default=None,
        metadata={
            "help": "share of each batch drawn from the regularization videos (0.25 = 1 in 4); "
            "unset: every clip drawn uniformly from targets and regularization videos together (Eq. 3 literally)"
        },
    )

    def __post_init__(self):
        if self.spatial not in SPATIAL_GROUPS:
            raise ConfigError(f"spatial must be one of {', '.join(SPATIAL_GROUPS)}, got '{self.spatial}'")
        if self.temporal_part not in TEMPORAL_GROUPS:
            raise ConfigError(f"temporal_part must be one of {', '.join(TEMPORAL_GROUPS)}, got '{self.temporal_part}'")
        check_timestep_sampling(self.timestep_sampling)
        if self.adapter not in ("full", "lora"):
            raise ConfigError(f"adapter must be full or lora, got '{self.adapter}'")
        if self.lora_rank < 1:
            raise ConfigError(f"lora_rank must be at least 1, got {self.lora_rank}")
        if not (self.temporal or self.spatial != "none" or self.train_token):
            raise ConfigError("nothing to train: enable temporal, spatial or train_token")
        if self.regularization_share is not None and not 0 <= self.regularization_share < 1:
            raise ConfigError(f"regularization_share must be in [0, 1), got {self.regularization_share}")


class NewMove(Method):
    name = "newmove"
    summary = "NewMove (Materzynska et al. 2023): temporal layers + cross-attention k/v, full or LoRA"
    Config = NewMoveConfig
    paper_settings: ClassVar[dict] = {
        "learning_rate": 5e-6,
        "steps": 3000,
        "batch_size": 1,
        "frames": 16,
        "height": 384,
        "width": 384,
    }
    paper_source = "official code (customizing_motion, ZeroScope): 384x384x16, lr 5e-6, 3000 steps, batch 1"
    _injected = False
    #: the LoRA's unique name in the model (`adapter: lora` with something to train), else None
    adapter_name: str | None = None

    def requirements(self) -> set[str]:
        kind = "LoRA target" if self.config.adapter == "lora" else "parameter group"
        return {f"{kind} {group}" for group in self._groups()}

    def _groups(self) -> list[str]:
        temporal = [TEMPORAL_GROUPS[self.config.temporal_part]] if self.config.temporal else []
        return temporal + SPATIAL_GROUPS[self.config.spatial]

    def _full_weight_names(self) -> list[str]:
        """The denoiser parameters a full-weight adapter holds."""
        return [name for group in self._groups() for name in self.backbone.parameter_names(group)]

    # --- training -----------------------------------------------------------------------------
    def prepare_for_training(self) -> None:
        self._inject()

    def _inject(self) -> None:
        if self._injected:
            return
        self._injected = True
        groups = self._groups()
        if self.config.adapter == "lora":
            if groups:
                target = self.backbone.lora_target(groups)
                self.adapter_name = inject_lora(self.backbone.denoiser, target, self.config.lora_rank, self.name)
            return
        self.backbone.denoiser.requires_grad_(False)
        for group in groups:
            for name in self.backbone.parameter_names(group):
                self.backbone.denoiser.get_parameter(name).requires_grad_(True)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        if self.config.adapter == "lora":
            self._inject()
            if self.adapter_name is None:
                return []
            return lora_parameters(lora_layers(self.backbone.denoiser, self.adapter_name), self.adapter_name)
        return [p for p in self.backbone.denoiser.parameters() if p.requires_grad]

    def pick_examples(self, examples: Sequence, size: int, generator: torch.Generator, micro_step: int) -> list[int]:
        """Each clip is a regularization video with probability `regularization_share`, else a target video
        (uniform within each set); without a share, uniform over the union D^m ∪ D^r (Eq. 3)."""
        share = self.config.regularization_share
        regularization = [i for i, e in enumerate(examples) if e.source == "regularization"]
        targets = [i for i, e in enumerate(examples) if e.source != "regularization"]
        if share is None or not regularization or not targets:
            return uniform_picks(examples, size, generator)
        from_regularization = (torch.rand(size, generator=generator) < share).tolist()
        pools = [regularization if flag else targets for flag in from_regularization]
        return [pool[int(torch.randint(len(pool), (1,), generator=generator))] for pool in pools]

    def sample_timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        steps = self.diffusion.num_timesteps
        return drawn_timesteps(batch, generator, self.config.timestep_sampling, steps, self.config.coarse_alpha)

    # --- adapter ------------------------------------------------------------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        unet = self.backbone.denoiser
        if self.config.adapter == "lora":
            self._inject()
            tensors = lora_tensors(unet, self.adapter_name) if self.adapter_name is not None else {}
        else:
            tensors = {f"{DENOISER_PREFIX}{name}": unet.get_parameter(name) for name in self._full_weight_names()}
        tensors = {key: value.detach().clone() for key, value in tensors.items()}
        return {**tensors, **(self.trained_token.tensors() if self.trained_token else {})}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        unet = self.backbone.denoiser
        if self.config.adapter == "lora":
            self._inject()
            if self.adapter_name is not None:
                load_lora_tensors(unet, self.adapter_name, tensors, source)
        else:
            copy_into_parameters(unet, tensors, DENOISER_PREFIX, source)
        if self.trained_token is not None:
            self.trained_token.load(tensors, source)

    def adapter_tensor_kinds(self) -> dict[str, bool]:
        """A full-weight adapter's keys listed without copying the weights; a LoRA's from its injected factors."""
        if self.config.adapter == "lora":
            return super().adapter_tensor_kinds()
        keys = [f"{DENOISER_PREFIX}{name}" for name in self._full_weight_names()] + (
            [TOKEN_KEY] if self.trained_token else []
        )
        return dict.fromkeys(keys, True)

    def adapter_metadata(self) -> dict:
        metadata = super().adapter_metadata()
        metadata["targets"] = {
            "groups": self._groups(),
            "lora_target": self.backbone.lora_target(self._groups()) if self.config.adapter == "lora" else None,
            "token_ids": self.trained_token.ids() if self.trained_token else [],
        }
        return metadata
