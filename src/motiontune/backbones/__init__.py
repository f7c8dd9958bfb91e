"""Backbones: one file per architecture. `load_backbone` picks the one that serves a model folder."""

from __future__ import annotations

import os

import torch

from ..errors import InputError
from .base import FRAME_POSITIONS_FILE, AttentionSite, Backbone, ModelComponents, load_components
from .unet3d import UNet3DBackbone

BACKBONES: dict[str, type[Backbone]] = {cls.name: cls for cls in (UNet3DBackbone,)}

__all__ = ["BACKBONES", "AttentionSite", "Backbone", "ModelComponents", "load_backbone"]


def backbone_for(unet: torch.nn.Module) -> type[Backbone]:
    """The backbone class that declares it serves this denoiser class."""
    class_name = type(unet).__name__
    for cls in BACKBONES.values():
        if class_name in cls.unet_class_names:
            return cls
    raise InputError(f"unsupported denoiser '{class_name}' (supported: {', '.join(BACKBONES)})")


def load_backbone(
    model: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Backbone:
    """Load a diffusers text-to-video model folder (or cached hub id) as a backbone, with its frame positions
    when the folder has them, and its fingerprint taken before anything can change its weights."""
    components = load_components(model, dtype=dtype)
    backbone = backbone_for(components.unet)(components)
    positions = components.path / FRAME_POSITIONS_FILE
    if positions.exists():
        backbone.load_frame_positions(positions)
    backbone.fingerprint()
    return backbone.to(device)
