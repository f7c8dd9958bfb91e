"""What tests may know of each tiny model's architecture (the code under test learns it from the backbone)."""

from __future__ import annotations

import re

#: the module names of each backbone's temporal layers
TEMPORAL_LAYERS = {
    "unet3d": re.compile(r"^transformer_in\.|\.temp_attentions\.|\.temp_convs\."),
    "animatediff": re.compile(r"\.motion_modules\."),
    "wan": re.compile(r"(?:^|\.)blocks\.\d+\.attn1\."),
}
#: the module names of each backbone's temporal attention transformers
TEMPORAL_ATTENTION = {
    "unet3d": re.compile(r"^transformer_in\.|\.temp_attentions\."),
    "animatediff": re.compile(r"\.motion_modules\."),
    "wan": re.compile(r"(?:^|\.)blocks\.\d+\.attn1\."),
}

#: the module names of each backbone's text cross-attention
CROSS_ATTENTION = {
    "unet3d": re.compile(r"\.attentions\.\d+\.transformer_blocks\.\d+\.attn2"),
    "animatediff": re.compile(r"\.attentions\.\d+\.transformer_blocks\.\d+\.attn2"),
    "wan": re.compile(r"(?:^|\.)blocks\.\d+\.attn2"),
}
#: MotionMatcher's feature level for a preferred level: the tiny UNets' third down block has no attention, so
#: level 2 falls back to 1; a transformer takes its middle (the tiny Wan's two blocks are both at depth 0)
FEATURE_LEVELS = {"unet3d": {2: 1, 0: 0}, "animatediff": {2: 1, 0: 0}, "wan": {2: 0, 0: 0}}
#: backbones whose autoencoder is an image autoencoder run frame by frame (latents scaled by `scaling_factor`)
PER_FRAME_AUTOENCODER = ("unet3d", "animatediff")


def is_temporal(backbone, name: str) -> bool:
    """Whether parameter or module `name` of `backbone`'s denoiser belongs to a temporal layer."""
    return bool(TEMPORAL_LAYERS[backbone.name].search(name))


def is_temporal_attention(backbone, name: str) -> bool:
    """Whether `name` belongs to a temporal attention transformer (not a temporal convolution)."""
    return bool(TEMPORAL_ATTENTION[backbone.name].search(name))


def clip_frames(backbone, at_least: int = 4) -> int:
    """The fewest pixel frames, at least `at_least`, that the backbone's autoencoder takes (any count on a
    per-frame autoencoder, 4k+1 on Wan's)."""
    latent = 1
    while backbone.pixel_frames(latent) < at_least:
        latent += 1
    return backbone.pixel_frames(latent)
