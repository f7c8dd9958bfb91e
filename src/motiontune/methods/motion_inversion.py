"""Motion Inversion: "Motion Inversion for Video Customization" (Wang et al., 2024, v2).

Everything in the model stays frozen; only zero-initialised embeddings inside the temporal
attentions of the chosen resolution levels train (Sec. 3.2, spec §3):

    TA_i(F) = softmax(W_q(F + m_i^QK) (W_k(F + m_i^QK))^T / sqrt(d_k)) W_v(F + m_i^V)

with one Motion Query-Key embedding m^QK `(1, F_max, C)` per temporal transformer block (shared by
its attn1 and attn2) and one Motion Value embedding m^V `(h*w, F_max, C)` per attention. The loss is
the plain epsilon-MSE of the reference video under its own prompt, t ~ U{0..T-1} (Sec. 3.4).

At inference the value embedding is debiased (Sec. 3.5): `object` uses its frame difference
(m'_0 = m_0, m'_f = m_f - m_{f-1}), `camera` drops it, `none` keeps it as trained.
Beyond the official code, the value embedding may be stored as a rank-r product (`value_rank`)
and is interpolated over space when generating at another resolution.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..attention import TemporalEmbedding
from ..errors import ConfigError
from .base import Method, check_tensor_shapes, copy_tensors

DEBIAS_MODES = {"none": "full", "object": "difference", "hybrid": "difference", "camera": "drop"}
PREFIX = "motion_inversion."


@dataclass
class MotionInversionConfig:
    levels: str = field(
        default="deepest",
        metadata={
            "help": "resolution levels whose temporal attentions carry embeddings: 'deepest' (the official "
            "choice: the lowest-resolution temporal blocks of the down and up paths) or a comma list, e.g. 1,2"
        },
    )
    query_key: bool = field(default=True, metadata={"help": "learn the Motion Query-Key embedding"})
    value: bool = field(default=True, metadata={"help": "learn the Motion Value embedding"})
    value_rank: int = field(
        default=0, metadata={"help": "store the value embedding as a rank-r product (0 = full, as the paper)"}
    )
    max_frames: int = field(default=32, metadata={"help": "frames the embeddings cover (more are interpolated)"})

    def __post_init__(self):
        if self.levels != "deepest" and not re.fullmatch(r"\d+(,\d+)*", self.levels):
            raise ConfigError(f"levels must be 'deepest' or a comma list of integers, got '{self.levels}'")
        if not (self.query_key or self.value):
            raise ConfigError("nothing to train: enable query_key or value")
        if self.value_rank < 0 or self.max_frames < 1:
            raise ConfigError("value_rank must be >= 0 and max_frames >= 1")


class MotionInversion(Method):
    name = "motion-inversion"
    summary = "Motion Inversion (Wang et al. 2024): motion embeddings in the temporal attentions, model frozen"
    Config = MotionInversionConfig
    paper_settings: ClassVar[dict] = {
        "learning_rate": 2e-2,
        "steps": 400,
        "batch_size": 1,
        "frames": 24,
        "height": 320,
        "width": 576,
    }
    paper_source = "official code (MotionInversion configs/config.yaml, ZeroScope): 576x320x24, lr 0.02, 400 steps"
    uses_token = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.embeddings: dict[str, TemporalEmbedding] = {}
        self.query_keys: dict[str, torch.nn.Parameter] = {}
        self.latent_hw: tuple[int, int] | None = None

    def requirements(self) -> set[str]:
        return {"temporal attention"}

    def target_sites(self) -> list:
        """Temporal attention sites of the down and up paths at the configured levels."""
        temporal = [s for s in self.backbone.sites if s.kind == "temporal" and s.block in ("down", "up")]
        if not temporal:
            raise ConfigError(f"backbone '{self.backbone.name}' has no temporal attention in its down/up blocks")
        available = sorted({s.level for s in temporal})
        if self.config.levels == "deepest":
            levels = {available[-1]}
        else:
            levels = {int(level) for level in self.config.levels.split(",")}
            missing = sorted(levels - set(available))
            if missing:
                raise ConfigError(f"no temporal attention at level(s) {missing}; this model has levels {available}")
        return [s for s in temporal if s.level in levels]

    @staticmethod
    def _block(site_name: str) -> str:
        return site_name.rsplit(".", 1)[0]

    def _build(self, value_grids: dict[str, tuple[int, int]]) -> None:
        """Create the embeddings (zero, i.e. an identity) and hand them to the attention controller."""
        controller = self.backbone.controller
        for site in self.target_sites():
            if site.name in controller.embeddings:
                raise ConfigError(f"{self.source}: another adapter already embeds motion in {site.name}")
            channels = self.backbone.site_modules(site.name)[0].to_q.in_features
            block = self._block(site.name)
            if self.config.query_key and block not in self.query_keys:
                self.query_keys[block] = torch.nn.Parameter(torch.zeros(1, self.config.max_frames, channels))
            embedding = TemporalEmbedding(
                channels,
                self.config.max_frames,
                value_grid=value_grids[site.name] if self.config.value else None,
                query_key=self.query_keys.get(block, False),
                value_rank=self.config.value_rank,
            ).to(self.backbone.device)
            self.embeddings[site.name] = embedding
            controller.embeddings[site.name] = embedding

    # --- training -----------------------------------------------------------------------------
    def bind_training_shape(self, latent_shape: torch.Size) -> None:
        self.latent_hw = tuple(latent_shape[-2:])

    def prepare_for_training(self) -> None:
        self.backbone.denoiser.requires_grad_(False)
        if self.embeddings:
            return
        if self.latent_hw is None:
            raise ConfigError("motion-inversion needs the training latent size (bind_training_shape) before training")
        grids = {s.name: self.backbone.grid_at_level(self.latent_hw, s.level) for s in self.target_sites()}
        self._build(grids)

    def extra_modules(self) -> torch.nn.Module:
        return torch.nn.ModuleList(self.embeddings.values())

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.extra_modules().parameters())

    # --- inference ----------------------------------------------------------------------------
    def prepare_inference(self, settings) -> None:
        """Apply the debiasing mode of Sec. 3.5 (`settings.debias`) to every value embedding."""
        mode = DEBIAS_MODES.get(settings.debias)
        if mode is None:
            raise ConfigError(f"debias must be one of {', '.join(DEBIAS_MODES)}, got '{settings.debias}'")
        for embedding in self.embeddings.values():
            embedding.value_mode = mode

    # --- adapter ------------------------------------------------------------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"{PREFIX}{block}.query_key": p for block, p in self.query_keys.items()}
        for site, embedding in self.embeddings.items():
            for name in ("value", "value_basis", "value_coefficients"):
                if getattr(embedding, name) is not None:
                    tensors[f"{PREFIX}{site}.{name}"] = getattr(embedding, name)
            if embedding.value_grid is not None:
                tensors[f"{PREFIX}{site}.value_grid"] = torch.tensor(embedding.value_grid)
        return {key: value.detach().clone() for key, value in tensors.items()}

    def adapter_tensor_kinds(self) -> dict[str, bool]:
        """Query-key embeddings per block, and per site a value embedding (full or factored) with its integer
        `value_grid`, as the config asks; listed without building the embeddings."""
        value = ("value_basis", "value_coefficients") if self.config.value_rank else ("value",)
        kinds = {}
        for site in self.target_sites():
            if self.config.query_key:
                kinds[f"{PREFIX}{self._block(site.name)}.query_key"] = True
            if self.config.value:
                kinds.update({f"{PREFIX}{site.name}.{name}": True for name in value})
                kinds[f"{PREFIX}{site.name}.value_grid"] = False
        return kinds

    def _file_grids(self, tensors: dict[str, torch.Tensor], source: str) -> dict[str, tuple[int, int] | None]:
        """The value embeddings' latent grids an adapter file gives, per site (None without value embeddings)."""
        grids = {}
        for site in self.target_sites():
            key = f"{PREFIX}{site.name}.value_grid"
            if self.config.value and key not in tensors:
                raise ConfigError(f"{source}: no Motion Value embedding for {site.name} (other model layout?)")
            if key in tensors and (tensors[key].shape != (2,) or (tensors[key] < 1).any()):
                raise ConfigError(f"{source}: adapter tensor '{key}' is not a latent grid (two positive sizes)")
            grids[site.name] = tuple(tensors[key].tolist()) if key in tensors else None
        return grids

    def _shapes(self, grids: dict[str, tuple[int, int] | None]) -> dict[str, tuple[int, ...]]:
        """The shape of every embedding `_build(grids)` creates, by file key."""
        frames, rank = self.config.max_frames, self.config.value_rank
        shapes = {}
        for site in self.target_sites():
            channels = self.backbone.site_modules(site.name)[0].to_q.in_features
            if self.config.query_key:
                shapes[f"{PREFIX}{self._block(site.name)}.query_key"] = (1, frames, channels)
            if grids[site.name]:
                tokens = grids[site.name][0] * grids[site.name][1]
                if rank:
                    shapes[f"{PREFIX}{site.name}.value_basis"] = (tokens, rank)
                    shapes[f"{PREFIX}{site.name}.value_coefficients"] = (rank, frames * channels)
                else:
                    shapes[f"{PREFIX}{site.name}.value"] = (tokens, frames, channels)
        return shapes

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        if not self.embeddings:
            grids = self._file_grids(tensors, source)
            check_tensor_shapes(self._shapes(grids), tensors, source)  # before sizes from the file are allocated
            self._build(grids)
        own = {f"{PREFIX}{block}.query_key": p for block, p in self.query_keys.items()}
        for site, embedding in self.embeddings.items():
            own.update({f"{PREFIX}{site}.{name}": p for name, p in embedding.named_parameters() if name != "query_key"})
        copy_tensors(own, tensors, source)

    def adapter_metadata(self) -> dict:
        metadata = super().adapter_metadata()
        metadata["targets"] = {"sites": list(self.embeddings), "query_key_blocks": list(self.query_keys)}
        return metadata
