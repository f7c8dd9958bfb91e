"""Methods: one file each, one interface (`methods.base.Method`). Build one by name or from an adapter."""

from __future__ import annotations

import os

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

__all__ = ["METHODS", "Method", "create_method", "load_adapter"]


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
