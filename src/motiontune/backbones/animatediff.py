"""AnimateDiff's `UNetMotionModel` (Stable Diffusion 1.5 + a `MotionAdapter`): what differs from the other
per-frame UNets.

Temporal layers (diffusers 0.42, `unet_motion_model.py`): `motion_modules` (an `AnimateDiffTransformer3D` each,
sinusoidal frame positions added before both of its attentions) after every spatial transformer or resnet of the
down, mid and up blocks; `attn1` and `attn2` of a motion module are both self-attention over frames. There is no
temporal layer on the input and no temporal convolution. Text embeddings reach the UNet per frame, `(B*F, L, D)`
(the AnimateDiff pipeline repeats them), so `denoiser_text` repeats them here. The folder is either a saved
`AnimateDiffPipeline` (`unet/` holds the `UNetMotionModel`) or a Stable Diffusion folder plus a motion adapter
folder, which `load_components` merges with `UNetMotionModel.from_unet2d`.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from ..errors import InputError
from .base import ModelComponents, first_line
from .per_frame_unet import FEED_FORWARD, PROJECTIONS, SPATIAL_GROUPS, SPATIAL_LORA_TARGETS, PerFrameUNetBackbone


class AnimateDiffBackbone(PerFrameUNetBackbone):
    """AnimateDiff: an SD 1.5 UNet with motion modules (`UNetMotionModel`)."""

    name = "animatediff"
    denoiser_class_names = ("UNetMotionModel",)
    parameter_group_patterns: ClassVar[dict[str, str]] = {
        **SPATIAL_GROUPS,
        "temporal": r"\.motion_modules\.",
        "temporal_attention": r"\.motion_modules\.",
        # the motion modules' queries and keys: which frame reads which, not what it reads
        "temporal_routing": r"\.motion_modules\..*\.attn[12]\.to_[qk]\.",
        "spatial": r"^(?!.*\.motion_modules\.)",
        # everything but the motion modules: MotionBooth's wo_temp
        "without_temporal_blocks": r"^(?!.*\.motion_modules\.)",
    }
    lora_target_patterns: ClassVar[dict[str, str]] = {
        **SPATIAL_LORA_TARGETS,
        "temporal": rf".*\.motion_modules\.\d+\.transformer_blocks\.\d+(?:\.attn[12]{PROJECTIONS}|{FEED_FORWARD})",
        "temporal_routing": r".*\.motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]\.to_[qk]",
    }
    checkpoint_units = re.compile(r"^.*\.(?:attentions|motion_modules|resnets)\.\d+$")

    @staticmethod
    def is_temporal_site(name: str) -> bool:
        return ".motion_modules." in name

    def denoiser_text(self, text: torch.Tensor, frames: int) -> torch.Tensor:
        """`UNetMotionModel` reads text per frame: `(B, L, D)` -> `(B*F, L, D)`, frame-major within each clip."""
        return text.repeat_interleave(frames, dim=0)

    def save_temporal_layers(self, folder: Path) -> None:
        """The motion modules as a `MotionAdapter` folder (diffusers' `UNetMotionModel.save_motion_modules`)."""
        self.denoiser.save_motion_modules(str(folder))


def attach_motion_adapter(components: ModelComponents, folder: str | os.PathLike) -> ModelComponents:
    """A Stable Diffusion folder's components with its image UNet turned into a `UNetMotionModel` by the motion
    adapter in `folder` (`UNetMotionModel.from_unet2d`, as `AnimateDiffPipeline` does when it is built)."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InputError(f"{path}: motion adapter folder does not exist")
    if not isinstance(components.denoiser, UNet2DConditionModel):
        raise InputError(
            f"{components.path}: --motion-adapter needs a Stable Diffusion folder (an image UNet), this model's "
            f"denoiser is a {type(components.denoiser).__name__}"
        )
    try:
        adapter = MotionAdapter.from_pretrained(path, dtype=components.denoiser.dtype)
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot load the motion adapter ({first_line(error)})") from None
    try:
        unet = UNetMotionModel.from_unet2d(components.denoiser, adapter)
    except (RuntimeError, ValueError) as error:
        raise InputError(f"{path}: motion adapter does not fit the UNet of {components.path} ({error})") from None
    unet.requires_grad_(False)
    return replace(components, denoiser=unet, motion_adapter=path)
