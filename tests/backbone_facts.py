"""What tests may know of each tiny model's architecture (the code under test learns it from the backbone)."""

from __future__ import annotations

import re

#: the module names of each backbone's temporal layers
TEMPORAL_LAYERS = {
    "unet3d": re.compile(r"^transformer_in\.|\.temp_attentions\.|\.temp_convs\."),
    "animatediff": re.compile(r"\.motion_modules\."),
}
#: the module names of each backbone's temporal attention transformers
TEMPORAL_ATTENTION = {
    "unet3d": re.compile(r"^transformer_in\.|\.temp_attentions\."),
    "animatediff": re.compile(r"\.motion_modules\."),
}


def is_temporal(backbone, name: str) -> bool:
    """Whether parameter or module `name` of `backbone`'s denoiser belongs to a temporal layer."""
    return bool(TEMPORAL_LAYERS[backbone.name].search(name))


def is_temporal_attention(backbone, name: str) -> bool:
    """Whether `name` belongs to a temporal attention transformer (not a temporal convolution)."""
    return bool(TEMPORAL_ATTENTION[backbone.name].search(name))
