"""LoRA adapters on the denoiser (Hu et al., 2021), shared by every LoRA method: NewMove's `adapter: lora`
variant, MotionMatcher and the MotionDirector baseline.

An adapter is injected with peft by name on the linears whose module names match a regex
(`Backbone.lora_target`): `h = W x + (alpha / r) B A dropout(x)` (Eq. 3 with its alpha / r scaling),
alpha = r (scale 1) and B = 0 at start. Names are unique per model (`motionmatcher`, `motionmatcher_2`,
...), and the adapters already in the model stay active when another is injected, so adapters compose:
a layer's output is `W x` plus the sum of the updates of its active adapters. Tensors are saved and loaded by key in the
peft / diffusers format `unet.<module>.lora_A.weight` and `unet.<module>.lora_B.weight` (no adapter
name in the key, so a file loads under whatever name the adapter gets).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from typing import ClassVar

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from ..backbones.base import set_active_adapters
from ..errors import ConfigError
from ..io.adapters import DENOISER_PREFIX
from ..sharding import as_placed
from .base import Method


def check_lora_options(rank: int, dropout: float) -> None:
    """A LoRA config's `lora_rank` (at least 1) and `lora_dropout` (in [0, 1)), else a ConfigError."""
    if rank < 1:
        raise ConfigError(f"lora_rank must be at least 1, got {rank}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"lora_dropout must be in [0, 1), got {dropout}")


def smallest_target_width(unet: torch.nn.Module, target_modules: str) -> int:
    """The smallest input or output width of the linears whose names match `target_modules` in full (peft's rule),
    plain or already wrapped by a LoRA; a ConfigError when none matches."""
    widths = [
        min(module.in_features, module.out_features)
        for module_name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear | LoraLayer) and re.fullmatch(target_modules, module_name)
    ]
    if not widths:
        raise ConfigError(f"no linear layer of this model matches the LoRA target '{target_modules}'")
    return min(widths)


def inject_lora(unet: torch.nn.Module, target_modules: str, rank: int, name: str, dropout: float = 0.0) -> str:
    """Add a LoRA of `rank` on the linears matching `target_modules` (a regex); return its unique name.

    The name is `name`, or `name_2`, `name_3`, ... when the model already holds an adapter of that name.
    peft makes a new adapter the only active one on every LoRA layer; the adapters that were active
    before stay active here, so several adapters compose (their updates add up). peft freezes the
    model's own weights; the new factors train. A rank above the smallest width of those linears (where the
    LoRA cannot add anything a lower rank would not) is refused before anything is allocated.
    """
    width = smallest_target_width(unet, target_modules)
    if rank > width:
        raise ConfigError(f"lora_rank {rank} is larger than {width}, the smallest width of the layers the LoRA adapts")
    existing = set(getattr(unet, "peft_config", {}))
    unique, number = name, 1
    while unique in existing:
        number += 1
        unique = f"{name}_{number}"
    before = {id(m): list(m.active_adapters) for m in unet.modules() if isinstance(m, LoraLayer)}
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=dropout, target_modules=target_modules)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, unet, adapter_name=unique)
    for module in unet.modules():
        if isinstance(module, LoraLayer):
            previous = [a for a in before.get(id(module), []) if a in module.lora_A]
            set_active_adapters(module, previous + ([unique] if unique in module.lora_A else []))
    unet.train(unet.training)  # the new modules start in training mode: give them the model's mode
    return unique


def lora_layers(unet: torch.nn.Module, name: str) -> list[LoraLayer]:
    """The LoRA layers of `unet` that hold adapter `name`, in module order."""
    return [m for m in unet.modules() if isinstance(m, LoraLayer) and name in m.lora_A]


def lora_parameters(layers: list[LoraLayer], name: str) -> list[torch.nn.Parameter]:
    """The A and B factors of adapter `name` on `layers`."""
    return [p for layer in layers for p in (layer.lora_A[name].weight, layer.lora_B[name].weight)]


def set_lora_enabled(layers: list[LoraLayer], name: str, enabled: bool) -> None:
    """Switch one adapter on or off on its layers; other adapters on the same layers are left as they are."""
    for layer in layers:
        others = [a for a in layer.active_adapters if a != name]
        set_active_adapters(layer, [*others, name] if enabled else others)


def _factors(unet: torch.nn.Module, name: str) -> dict[str, torch.nn.Parameter]:
    """Adapter `name`'s factors by file key `unet.<module>.lora_A.weight` / `unet.<module>.lora_B.weight`."""
    factors = {}
    for module_name, module in unet.named_modules():
        if isinstance(module, LoraLayer) and name in module.lora_A:
            factors[f"{DENOISER_PREFIX}{module_name}.lora_A.weight"] = module.lora_A[name].weight
            factors[f"{DENOISER_PREFIX}{module_name}.lora_B.weight"] = module.lora_B[name].weight
    return factors


def lora_tensors(unet: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """A copy of adapter `name`'s factors under their file keys (the keys of peft's adapter state dict)."""
    return {key: value.detach().clone() for key, value in _factors(unet, name).items()}


def load_lora_tensors(unet: torch.nn.Module, name: str, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy the `unet.` tensors of a file into adapter `name`; every factor must be there with its shape."""
    factors = _factors(unet, name)
    given = {key: value for key, value in tensors.items() if key.startswith(DENOISER_PREFIX)}
    if set(given) != set(factors):
        wrong = sorted(set(given) ^ set(factors))[0]
        raise ConfigError(f"{source}: LoRA tensors do not match this model ({wrong.removeprefix(DENOISER_PREFIX)})")
    for key, value in given.items():
        if value.shape != factors[key].shape:
            raise ConfigError(
                f"{source}: LoRA tensor '{key.removeprefix(DENOISER_PREFIX)}' has shape {tuple(value.shape)}, "
                f"model expects {tuple(factors[key].shape)} (trained with another rank or model size?)"
            )
    with torch.no_grad():
        for key, value in given.items():
            factors[key].copy_(as_placed(value.to(factors[key].dtype), factors[key]))


class LoraMethod(Method):
    """A method whose adapter is one LoRA over the backbone's `lora_groups` linears.

    The config needs `lora_rank` and `lora_dropout`; with `train_token` (an option of the model's defaults, not
    of the papers, which prompt with plain words) the token's text embedding trains too and is saved with the
    LoRA.
    """

    lora_groups: ClassVar[list[str]]
    uses_token = False
    adapter_name: str | None = None

    def requirements(self) -> set[str]:
        return {f"LoRA target {group}" for group in self.lora_groups}

    def prepare_for_training(self) -> None:
        self._inject()

    def _inject(self) -> None:
        if self.adapter_name is not None:
            return
        target = self.backbone.lora_target(self.lora_groups)
        unet = self.backbone.denoiser
        self.adapter_name = inject_lora(unet, target, self.config.lora_rank, self.name, self.config.lora_dropout)
        self.lora_layers = lora_layers(unet, self.adapter_name)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        self._inject()
        return lora_parameters(self.lora_layers, self.adapter_name)

    def set_lora_enabled(self, enabled: bool) -> None:
        set_lora_enabled(self.lora_layers, self.adapter_name, enabled)

    @contextlib.contextmanager
    def lora_disabled(self) -> Iterator[None]:
        """The model without this method's LoRA (other adapters unchanged) inside the block."""
        was_enabled = self.adapter_name in self.lora_layers[0].active_adapters
        self.set_lora_enabled(False)
        try:
            yield
        finally:
            self.set_lora_enabled(was_enabled)

    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        self._inject()
        tensors = lora_tensors(self.backbone.denoiser, self.adapter_name)
        return {**tensors, **(self.trained_token.tensors() if self.trained_token else {})}

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        self._inject()
        load_lora_tensors(self.backbone.denoiser, self.adapter_name, tensors, source)
        if self.trained_token is not None:
            self.trained_token.load(tensors, source)

    def adapter_metadata(self) -> dict:
        metadata = super().adapter_metadata()
        metadata["targets"] = {
            "groups": self.lora_groups,
            "lora_target": self.backbone.lora_target(self.lora_groups),
            "token_ids": self.trained_token.ids() if self.trained_token else [],
        }
        return metadata
