"""DreamBooth-style baseline for motion (NewMove Sec. 4.3): full fine-tuning of all spatial layers.

Temporal layers stay frozen and timesteps are drawn uniformly, as in Ruiz et al. (2023) adapted to
video; it shares NewMove's implementation with different switches, so the comparison is fair.
"""

from __future__ import annotations

from dataclasses import dataclass

from .newmove import NewMove, NewMoveConfig


@dataclass
class DreamBoothConfig(NewMoveConfig):
    spatial: str = "all"
    temporal: bool = False
    timestep_sampling: str = "uniform"


class DreamBooth(NewMove):
    name = "dreambooth"
    summary = "DreamBooth-style baseline: full fine-tuning of the spatial layers"
    Config = DreamBoothConfig
    paper_source = "NewMove's DreamBooth baseline (spatial layers) on NewMove's official settings"
