"""ModelScope / ZeroScope `UNet3DConditionModel`: what differs from the other per-frame UNets.

Temporal layers (diffusers 0.42, `unet_3d_condition.py`, `transformer_temporal.py`): `transformer_in` (a
temporal transformer on the input, level 0), one `temp_attentions` transformer and one `temp_convs` block per
resnet. Both `attn1` and `attn2` of a temporal transformer are self-attention over frames. Text embeddings are
passed as `(B, L, D)` and repeated over frames inside the UNet.
"""

from __future__ import annotations

import re
from typing import ClassVar

from .per_frame_unet import FEED_FORWARD, PROJECTIONS, SPATIAL_GROUPS, SPATIAL_LORA_TARGETS, PerFrameUNetBackbone

_TEMPORAL_LINEARS = r".*(?:transformer_in|\.temp_attentions\.\d+)\.transformer_blocks\.\d+"


class UNet3DBackbone(PerFrameUNetBackbone):
    """ZeroScope / ModelScope text-to-video UNet (`UNet3DConditionModel`)."""

    name = "unet3d"
    denoiser_class_names = ("UNet3DConditionModel",)
    parameter_group_patterns: ClassVar[dict[str, str]] = {
        **SPATIAL_GROUPS,
        "temporal": r"^(?:transformer_in\.|.*\.temp_attentions\.|.*\.temp_convs\.)",
        "temporal_attention": r"^(?:transformer_in\.|.*\.temp_attentions\.)",
        # the temporal attentions' queries and keys: which frame reads which, not what it reads
        "temporal_routing": r"^(?:transformer_in\.|.*\.temp_attentions\.).*\.attn[12]\.to_[qk]\.",
        "spatial": r"^(?!transformer_in\.|.*\.temp_attentions\.|.*\.temp_convs\.)",
        # everything but temporal attention blocks and temporal convs (transformer_in stays): MotionBooth's wo_temp
        "without_temporal_blocks": r"^(?!.*\.temp_attentions\.|.*\.temp_convs\.)",
    }
    lora_target_patterns: ClassVar[dict[str, str]] = {
        **SPATIAL_LORA_TARGETS,
        "temporal": rf"{_TEMPORAL_LINEARS}(?:\.attn[12]{PROJECTIONS}|{FEED_FORWARD})",
        "temporal_routing": rf"{_TEMPORAL_LINEARS}\.attn[12]\.to_[qk]",
    }
    checkpoint_units = re.compile(r"^(?:transformer_in|.*\.(?:attentions|temp_attentions|resnets|temp_convs)\.\d+)$")

    @staticmethod
    def is_temporal_site(name: str) -> bool:
        return name.startswith("transformer_in.") or ".temp_attentions." in name
