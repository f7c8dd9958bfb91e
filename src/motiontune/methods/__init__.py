"""Methods: one file each, one interface (`methods.base.Method`). Build one by name or from an adapter."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..adapters import read_adapter
from ..backbones.base import Backbone
from ..errors import ConfigError
from .base import Method
from .dreambooth import DreamBooth
from .motion_inversion import MotionInversion
from .motionbooth import MotionBooth
from .motiondirector import MotionDirector
from .motionmatcher import MotionMatcher
from .newmove import NewMove
from .pretrain import Pretrain

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (NewMove, DreamBooth, MotionInversion, MotionBooth, MotionMatcher, MotionDirector, Pretrain)
}
PLANNED: tuple[str, ...] = ()

__all__ = ["METHODS", "Method", "create_method", "load_adapter", "load_adapters"]


def method_class(name: str) -> type[Method]:
    if name in METHODS:
        return METHODS[name]
    if name in PLANNED:
        raise ConfigError(f"method '{name}' is not available in this version yet")
    raise ConfigError(f"unknown method '{name}' (choose from {', '.join(METHODS)})")


def create_method(name: str, backbone: Backbone, options: dict | None = None, token: str | None = None) -> Method:
    """A method by name with its hyper-parameters given as a dict (unknown keys are rejected)."""
    cls = method_class(name)
    return cls(backbone, cls.config_from_dict(options or {}), token=token)


def load_adapter(path: str | os.PathLike, backbone: Backbone) -> Method:
    """Rebuild the method an adapter file was trained with, and apply its tensors to `backbone`."""
    tensors, metadata = read_adapter(path, device=backbone.device)
    if metadata.get("backbone") != backbone.name:
        raise ConfigError(f"{path}: adapter is for backbone '{metadata.get('backbone')}', model is '{backbone.name}'")
    cls = method_class(metadata.get("method", "?"))
    method = cls(backbone, cls.config_from_dict(metadata.get("hyperparameters", {})), token=metadata.get("token"))
    method.source = str(path)
    method.load_adapter_tensors(tensors, str(path))
    return method


def _holds_lora(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return any(".lora_A." in key for key in handle.keys())  # noqa: SIM118


def load_adapters(paths: list[str | os.PathLike], backbone: Backbone) -> list[Method]:
    """Apply several adapters to one backbone, so that their changes add up.

    LoRAs and Motion Inversion embeddings add by construction. Full weights changed by several adapters
    combine by task arithmetic, w = w_0 + sum_i (w_i - w_0), instead of the last adapter overwriting the
    others. Full-weight adapters load before LoRAs (a LoRA wraps the layers it targets), so the order
    of `paths` does not change the result. Methods come back in the order of `paths`.
    """
    from safetensors import safe_open

    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return [load_adapter(paths[0], backbone)]
    parameters = dict(backbone.unet.named_parameters())
    base: dict[str, torch.Tensor] = {}
    loaded: dict[int, Method] = {}
    for index in sorted(range(len(paths)), key=lambda i: _holds_lora(paths[i])):
        path = paths[index]
        with safe_open(str(path), framework="pt") as handle:
            names = [key.removeprefix("unet.") for key in handle.keys()]  # noqa: SIM118
        before = {name: parameters[name].detach().clone() for name in names if name in parameters}
        loaded[index] = load_adapter(path, backbone)
        with torch.no_grad():
            for name, previous in before.items():
                if name in base:
                    parameters[name].add_(previous - base[name])
                else:
                    base[name] = previous
    return [loaded[index] for index in range(len(paths))]
