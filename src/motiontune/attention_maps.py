"""Where the words of a prompt look: their cross-attention maps during sampling, drawn over the frames.

The map of a word is what MotionBooth's box control steers (Wu et al. 2024, Eq. 6-7) and its subject-token loss
trains (Eq. 4): `A = mean over steps, sites, heads and the word's tokens of softmax(Q K^T / sqrt(d))`, read on the
conditional rows at the cross-attention sites of one resolution level (level 2, latent/4, as MotionBooth's
`aggregate_attention`; the nearest level with cross-attention on other denoisers). Each map is normalised to [0, 1]
per frame for display.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .backbones.base import AttentionSite, Backbone
from .control import prompt_phrase_positions
from .errors import ConfigError
from .sampling import StepState

#: MotionBooth's attention level: cross-attention at a quarter of the latent grid
ATTENTION_LEVEL = 2


class WordAttention:
    """A sampling hook that accumulates, per word, its cross-attention map `(F_latent, h, w)` over the steps.

    Sample inside its recording and pass it as a hook: `attention = WordAttention(backbone, prompt, words)`,
    `with attention.recording(): generate(..., hooks=[attention])`, then `attention.maps()`."""

    def __init__(self, backbone: Backbone, prompt: str, words: Sequence[str], level: int = ATTENTION_LEVEL):
        if backbone.controller is None:
            raise ConfigError("attention maps need the attention controller (open the model with api.open_backbone)")
        self.backbone, self.words = backbone, list(words)
        self.positions = [
            prompt_phrase_positions(backbone, prompt, phrase, "'{}' is", "--attention-maps") for phrase in self.words
        ]
        level = backbone.cross_attention_level(level)
        self.sites = {site.name for site in backbone.sites if site.kind == "cross" and site.level == level}
        self._sum: torch.Tensor | None = None
        self._steps = 0
        self._recorded: dict[str, torch.Tensor] = {}

    def _reduce(self, site: AttentionSite, probs: torch.Tensor) -> torch.Tensor:
        """`(B, F, heads, h, w, T)` -> `(B, words, F, h, w)`: each word's tokens, averaged with the heads."""
        heads = probs.float().mean(2)
        return torch.stack([heads[..., positions].mean(-1) for positions in self.positions], dim=1)

    @contextlib.contextmanager
    def recording(self) -> Iterator[WordAttention]:
        """The block in which the sampling runs: the controller records the sites (reduced as they are stored)."""
        with self.backbone.controller.record(lambda site: site.name in self.sites, reduce=self._reduce) as maps:
            self._recorded = maps
            try:
                yield self
            finally:
                self._fold()

    def _fold(self) -> None:
        """Add the last denoiser call's maps to the sums: its conditional rows (guidance puts them second, after
        the unconditional ones), averaged over the sites."""
        if not self._recorded:
            return
        sites = torch.stack([self._recorded[name] for name in sorted(self._recorded)]).mean(0)
        step = sites[sites.shape[0] // 2 :].mean(0) if sites.shape[0] > 1 else sites[0]
        self._sum = step if self._sum is None else self._sum + step
        self._steps += 1
        self._recorded.clear()

    def before_step(self, state: StepState) -> None:
        self._fold()

    def after_sampling(self) -> None:
        self._fold()

    def maps(self) -> dict[str, torch.Tensor]:
        """Per word, its mean map `(F_latent, h, w)` over the steps sampled (empty before any)."""
        if self._sum is None:
            return {}
        return {word: self._sum[k] / self._steps for k, word in enumerate(self.words)}


def heat_overlay(frames: np.ndarray, attention: torch.Tensor, opacity: float = 0.55) -> np.ndarray:
    """Frames `(F, H, W, 3)` uint8 with a word's map `(F_latent, h, w)` over them as a heat map (each frame's map
    scaled to [0, 1]; a pixel frame shows the latent frame at its point in time)."""
    import cv2

    count, height, width = frames.shape[:3]
    latent = attention.float().cpu().numpy()
    picks = np.linspace(0, len(latent) - 1, count).round().astype(int)
    out = np.empty_like(frames)
    for k, frame in enumerate(frames):
        heat = cv2.resize(latent[picks[k]], (width, height), interpolation=cv2.INTER_LINEAR)
        low, high = heat.min(), heat.max()
        heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
        coloured = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        out[k] = ((1 - opacity) * frame + opacity * coloured).round().astype(np.uint8)
    return out


def write_attention_sheet(frames: np.ndarray, maps: dict[str, torch.Tensor], path: Path) -> Path:
    """A PNG contact sheet: the video, then one row per word with its attention over the frames."""
    from .io.video import write_contact_sheet

    rows = [frames, *[heat_overlay(frames, attention) for attention in maps.values()]]
    labels = ["video", *[f"attention: {word}" for word in maps]]
    return write_contact_sheet(rows, path, labels=labels)
