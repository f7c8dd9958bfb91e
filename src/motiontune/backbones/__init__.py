"""Backbones: one file per architecture. `load_backbone` picks the one that serves a model folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import InputError
from .animatediff import AnimateDiffBackbone, attach_motion_adapter
from .base import FRAME_POSITIONS_FILE, AttentionSite, Backbone, ModelComponents, load_components
from .unet3d import UNet3DBackbone
from .wan import WanBackbone

BACKBONES: dict[str, type[Backbone]] = {cls.name: cls for cls in (UNet3DBackbone, AnimateDiffBackbone, WanBackbone)}

__all__ = ["BACKBONES", "AttentionSite", "Backbone", "ModelComponents", "load_backbone"]


#: image denoisers that become a video model with a motion adapter
IMAGE_UNETS = ("UNet2DConditionModel",)


def family_defaults(model_dir: str | os.PathLike) -> tuple[str, dict[str, dict]]:
    """The defaults of the family whose pipeline a model folder's `model_index.json` names, with their source label
    (`Backbone.family_defaults`; empty for a family without any, or a folder without an index)."""
    index = Path(model_dir) / "model_index.json"
    try:
        pipeline = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return "", {}
    for cls in BACKBONES.values():
        if pipeline in cls.pipeline_class_names and cls.family_defaults:
            return f"{pipeline} defaults", cls.family_defaults
    return "", {}


def backbone_for(components: ModelComponents) -> type[Backbone]:
    """The backbone class that declares it serves the folder's denoiser (as `model_index.json` named it)."""
    class_name = type(components.denoiser).__name__
    for cls in BACKBONES.values():
        if class_name in cls.denoiser_class_names:
            return cls
    if class_name in IMAGE_UNETS:
        raise InputError(
            f"{components.path}: an image model ({class_name}); for AnimateDiff pass its motion adapter folder "
            "with --motion-adapter DIR"
        )
    raise InputError(f"{components.path}: unsupported denoiser '{class_name}' (supported: {', '.join(BACKBONES)})")


def load_backbone(
    model: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    motion_adapter: str | os.PathLike | None = None,
) -> Backbone:
    """Load a diffusers text-to-video model folder (or cached hub id) as a backbone, with its frame positions
    when the folder has them, and its fingerprint taken before anything can change its weights.

    `motion_adapter`: a `MotionAdapter` folder that turns a Stable Diffusion folder into AnimateDiff."""
    components = load_components(model, dtype=dtype)
    if motion_adapter is not None:
        components = attach_motion_adapter(components, motion_adapter)
    backbone = backbone_for(components)(components)
    positions = components.path / FRAME_POSITIONS_FILE
    if positions.exists():
        backbone.load_frame_positions(positions)
    backbone.fingerprint()
    return backbone.to(device)
