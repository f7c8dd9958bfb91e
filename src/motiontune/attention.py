"""The attention controller: the only code in motiontune that touches attention.

One `AttentionController` installs a `ControlledProcessor` on every attention site a backbone
declares. Each processor takes the SDPA fast path unless the controller asks it to

* record attention probabilities (cross-attention per token, temporal F x F maps), with or
  without gradients;
* edit cross-attention scores inside per-frame boxes before the softmax (MotionBooth Eq. 6-7);
* inject learnable embeddings into temporal attention query/key and value (Motion Inversion), on
  top of the frame positions a base model may have (`Backbone.add_frame_positions`);
* compute softmax attention with explicit matrices instead of SDPA (`explicit_attention`), the
  naive reference that benchmarks and tests compare the fast path with.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from .backbones import load_backbone
from .backbones.base import AttentionSite, Backbone
from .utils import rows_joined


@dataclass
class ForwardContext:
    """What one denoiser call looks like: set by the backbone call site, read by processors."""

    batch: int
    frames: int
    latent_hw: tuple[int, int]
    conditional: torch.Tensor | None = None


@dataclass
class SubjectBox:
    """One subject for a box edit: its token positions and a box per frame, `(F, 4)` as x1, y1, x2, y2 in [0, 1]."""

    token_positions: list[int]
    boxes: torch.Tensor


def box_span(low: float, high: float, cells: int) -> tuple[int, int]:
    """Grid cells `[start, stop)` a box side `[low, high]` (fractions) covers, rounded as the official code does;
    a box in the frame but narrower than one cell keeps the cell holding its centre, so it does not vanish on a
    coarse grid (the official rounding leaves it no cell)."""
    start, stop = (min(max(round(cells * side), 0), cells) for side in (low, high))
    if stop <= start and high > 0 and low < 1:
        start = min(max(int(cells * (low + high) / 2), 0), cells - 1)
        stop = start + 1
    return start, stop


@dataclass
class BoxEdit:
    """Cross-attention editing of MotionBooth (Eq. 6-7; code semantics of its `AttnEditProcessor`).

    Scores `S = QK^T / sqrt(d)` of the conditional batch rows become, per frame k:
    `S + strength * (1 - |B_k| / |Q|)` for subject tokens inside box `B_k` while `amplify` is on,
    and `-inf` for subject tokens outside their box. With `suppress_other_words`, every other prompt
    word (`word_positions`: the prompt's own tokens) is suppressed everywhere, as the official code does;
    start, end and padding tokens are never touched. `background_positions` (the official `bg_phrase`)
    are the mirror image: `-inf` inside any box, amplified outside all boxes while `amplify` is on.
    """

    subjects: list[SubjectBox]
    strength: float = 10.0
    amplify: bool = True
    word_positions: list[int] = field(default_factory=list)
    suppress_other_words: bool = True
    background_positions: list[int] = field(default_factory=list)

    def bias_and_mask(self, frames: int, grid: tuple[int, int], tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive bias `(F, h*w, T)` and suppression mask `(F, h*w, T)` for one layer's grid."""
        h, w = grid
        bias = torch.zeros(frames, h, w, tokens)
        suppress = torch.zeros(frames, h, w, tokens, dtype=torch.bool)
        subject_tokens: set[int] = set()
        covered = torch.zeros(frames, h, w, dtype=torch.bool)
        for subject in self.subjects:
            boxes = subject.boxes
            if boxes.shape[0] != frames:
                raise ValueError(f"box edit has boxes for {boxes.shape[0]} frames, video has {frames}")
            inside = torch.zeros(frames, h, w, dtype=torch.bool)
            for k, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
                (r1, r2), (c1, c2) = box_span(y1, y2, h), box_span(x1, x2, w)
                inside[k, r1:r2, c1:c2] = True
            area = inside.flatten(1).sum(1).float() / (h * w)
            positions = [p for p in subject.token_positions if p < tokens]
            subject_tokens.update(positions)
            if self.amplify:
                gain = self.strength * (1 - area)[:, None, None, None]
                bias[..., positions] += gain * inside[..., None]
            suppress[..., positions] |= ~inside[..., None]
            covered |= inside
        background = [p for p in self.background_positions if p < tokens]
        if background:
            if self.amplify:
                area = (~covered).flatten(1).sum(1).float() / (h * w)
                bias[..., background] += self.strength * (1 - area)[:, None, None, None] * (~covered)[..., None]
            suppress[..., background] |= covered[..., None]
        if self.suppress_other_words:
            others = [j for j in self.word_positions if j < tokens and j not in subject_tokens and j not in background]
            suppress[..., others] = True
        return bias.flatten(1, 2), suppress.flatten(1, 2)

    def rows_bias_and_mask(
        self, conditional: torch.Tensor, frames: int, grid: tuple[int, int], tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias and mask `(B, F, h*w, T)` for a batch: the edit on the `conditional` rows `(B,)`, none on the others."""
        bias, suppress = self.bias_and_mask(frames, grid, tokens)
        rows = conditional.to(torch.bool)[:, None, None, None]
        return rows * bias, rows & suppress


@dataclass
class RowBoxEdits:
    """One box edit per batch row (`None`: that row is not edited), e.g. each training clip at its own boxes."""

    edits: list[BoxEdit | None]

    def rows_bias_and_mask(
        self, conditional: torch.Tensor, frames: int, grid: tuple[int, int], tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bias and mask `(B, F, h*w, T)`, row by row (`conditional` is ignored: each row says for itself)."""
        if len(self.edits) != len(conditional):
            raise ValueError(f"{len(self.edits)} row edits for a batch of {len(conditional)}")
        none = (
            torch.zeros(frames, grid[0] * grid[1], tokens),
            torch.zeros(frames, grid[0] * grid[1], tokens, dtype=torch.bool),
        )
        rows = [none if edit is None else edit.bias_and_mask(frames, grid, tokens) for edit in self.edits]
        return torch.stack([bias for bias, _ in rows]), torch.stack([suppress for _, suppress in rows])


VALUE_MODES = ("full", "drop", "difference")


def per_frame(embedding: torch.Tensor, frames: int) -> torch.Tensor:
    """Rows for `frames` frames of a per-frame embedding `(N, F_max, C)`: fewer slice, more interpolate over time."""
    if embedding.shape[1] >= frames:
        return embedding[:, :frames]
    return F.interpolate(embedding.transpose(1, 2), size=frames, mode="linear", align_corners=True).transpose(1, 2)


class TemporalEmbedding(torch.nn.Module):
    """Learnable embeddings added inside one temporal attention (Motion Inversion Sec. 3).

    `query_key` `(1, F_max, C)` is added to the normalised input feeding `to_q` and `to_k` (it may be a
    parameter shared with another site); the value embedding `(h*w, F_max, C)` is added to the input
    feeding `to_v`, stored in full or as a rank-r product `basis (h*w, r) @ coefficients (r, F_max*C)`.
    Both start at zero, so an untrained embedding is an identity. Fewer frames slice, more frames
    interpolate over time; another latent grid interpolates the value embedding over space.
    `value_mode` is Motion Inversion's inference debiasing (Sec. 3.3): `full` (training), `drop`
    (camera motion) or `difference` (`m'_0 = m_0`, `m'_f = m_f - m_{f-1}`, object motion).
    """

    def __init__(
        self,
        channels: int,
        max_frames: int,
        value_grid: tuple[int, int] | None = None,
        query_key: bool | torch.nn.Parameter = True,
        value_rank: int = 0,
    ):
        super().__init__()
        if isinstance(query_key, torch.nn.Parameter):
            self.query_key = query_key
        else:
            self.query_key = torch.nn.Parameter(torch.zeros(1, max_frames, channels)) if query_key else None
        self.value_grid = tuple(value_grid) if value_grid else None
        self.value_mode = "full"
        self.value = self.value_basis = self.value_coefficients = None
        if value_grid and value_rank:
            tokens = value_grid[0] * value_grid[1]
            self.value_basis = torch.nn.Parameter(torch.zeros(tokens, value_rank))
            self.value_coefficients = torch.nn.Parameter(torch.randn(value_rank, max_frames * channels) / value_rank)
        elif value_grid:
            self.value = torch.nn.Parameter(torch.zeros(value_grid[0] * value_grid[1], max_frames, channels))
        self.max_frames, self.channels = max_frames, channels

    def query_key_for(self, frames: int) -> torch.Tensor | None:
        return None if self.query_key is None else per_frame(self.query_key, frames)

    def full_value(self) -> torch.Tensor | None:
        """The value embedding `(h*w, F_max, C)`, expanded from its factors when stored low-rank."""
        if self.value_basis is not None:
            return (self.value_basis @ self.value_coefficients).view(-1, self.max_frames, self.channels)
        return self.value

    def value_for(self, frames: int, rows: int, grid: tuple[int, int] | None = None) -> torch.Tensor | None:
        """Value embedding for `rows = B*h*w` batch rows of a `grid`-sized site, after `value_mode`."""
        value = self.full_value()
        if value is None or self.value_mode == "drop":
            return None
        value = per_frame(value, frames)
        if self.value_mode == "difference":
            value = torch.cat([value[:, :1], value[:, 1:] - value[:, :-1]], dim=1)
        if grid is not None and tuple(grid) != self.value_grid:
            h, w = self.value_grid
            planes = value.permute(1, 2, 0).reshape(1, frames * self.channels, h, w)
            planes = F.interpolate(planes, size=tuple(grid), mode="bilinear", align_corners=False)
            value = planes.reshape(frames, self.channels, -1).permute(2, 0, 1)
        if rows % value.shape[0]:
            raise ValueError(f"value embedding has {value.shape[0]} positions, attention has {rows} rows")
        return value.repeat(rows // value.shape[0], 1, 1)


@dataclass(frozen=True)
class ControllerState:
    """A snapshot of what an `AttentionController` does (`AttentionController.state`)."""

    recordings: tuple[tuple[Callable[[AttentionSite], bool], bool], ...]
    box_edit: object
    explicit: Callable[[AttentionSite], bool] | None
    context: ForwardContext | None


@dataclass
class _Recording:
    select: Callable[[AttentionSite], bool]
    with_grad: bool
    #: what is kept of a site's map (`(site, canonical view) -> tensor`); the whole view when None
    reduce: Callable[[AttentionSite, torch.Tensor], torch.Tensor] | None = None
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


class AttentionController:
    """Installs processors on a backbone's attention sites and holds what they should do."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone
        self.sites = {site.name: site for site in backbone.sites}
        self.context: ForwardContext | None = None
        self.box_edit: BoxEdit | RowBoxEdits | None = None
        self.embeddings: dict[str, TemporalEmbedding] = {}
        self._recordings: list[_Recording] = []
        self._fast = AttnProcessor2_0()
        self._explicit = AttnProcessor()
        self._explicit_select: Callable[[AttentionSite], bool] | None = None
        for name, site in self.sites.items():
            for module in backbone.site_modules(name):
                if site.layout == "video":
                    original = getattr(module.processor, "original", module.processor)
                    module.set_processor(ControlledTokenProcessor(self, site, original))
                else:
                    module.set_processor(ControlledProcessor(self, site))
        backbone.controller = self

    def sites_of(self, kind: str) -> list[AttentionSite]:
        return [site for site in self.sites.values() if site.kind == kind]

    def begin(self, batch: int, frames: int, latent_hw: tuple[int, int], conditional=None) -> None:
        """Called by the backbone before each denoiser call with the shape of what it denoises."""
        self.context = ForwardContext(batch, frames, latent_hw, conditional)

    def grid(self, site: AttentionSite) -> tuple[int, int]:
        return self.backbone.grid_at_level(self.context.latent_hw, site.level)

    def canonical(self, site: AttentionSite, probs: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of `site` in the canonical view of its kind, for the current call: spatial self
        and cross attention `(B, F, heads, h, w, keys)`, temporal attention `(B, h, w, heads, F, F)`. Methods read
        maps only in these views, whatever the backbone's token order. From layout `"frames"` `(B*F*heads, h*w,
        keys)`, `"pixels"` `(B*h*w*heads, F, F)`; from `"video"` a cross map `(B, heads, F*h*w, keys)` or the
        per-position temporal maps `(B, h*w, heads, F, F)` the transformer processor takes out of 3D attention."""
        context = self.context
        h, w = self.grid(site)
        if site.layout == "video" and site.kind != "temporal":
            return probs.unflatten(2, (context.frames, h, w)).permute(0, 2, 1, 3, 4, 5)
        if site.layout == "frames":
            return probs.view(context.batch, context.frames, -1, h, w, probs.shape[-1])
        return probs.view(context.batch, h, w, -1, *probs.shape[-2:])

    def store(self, site: AttentionSite, probs: torch.Tensor, recordings: list) -> None:
        """Keep `site`'s attention probabilities, in its canonical view, in each recording that asked for them
        (with their graph where the recording trains through them)."""
        view = self.canonical(site, probs)
        for recording in recordings:
            kept = view if recording.with_grad else view.detach()
            recording.maps[site.name] = kept if recording.reduce is None else recording.reduce(site, kept)

    def conditional_rows(self) -> torch.Tensor:
        """Which rows of the current call are conditional (guidance's text rows): what it was told, else all."""
        context = self.context
        if context.conditional is None:
            return torch.ones(context.batch, dtype=torch.bool)
        return context.conditional

    @contextlib.contextmanager
    def record(
        self,
        select: Callable[[AttentionSite], bool],
        with_grad: bool = False,
        reduce: Callable[[AttentionSite, torch.Tensor], torch.Tensor] | None = None,
    ) -> Iterator[dict]:
        """Record attention probabilities of the selected sites during the block; yields `{site: probs}` in each
        site's canonical view (`canonical`): cross-attention `(B, F, heads, h, w, T)`, temporal attention
        `(B, h, w, heads, F, F)`; with `reduce`, what it keeps of each view (batch first, e.g. some tokens averaged
        over heads), so that a long recording holds no full maps. A site recorded twice in one block (e.g.
        recomputed under gradient checkpointing) keeps its last map.
        """
        recording = _Recording(select, with_grad, reduce)
        self._recordings.append(recording)
        try:
            yield recording.maps
        finally:
            self._recordings.remove(recording)

    @contextlib.contextmanager
    def rows_in_parts(self, batch: int) -> Iterator[Callable[[torch.Tensor], contextlib.AbstractContextManager]]:
        """For a batch whose rows the backbone runs in several denoiser calls (e.g. each through its expert): yields
        `part(rows)`, a block around the call of the rows `rows` (a bool mask over the batch). Maps recorded in the
        parts are put together into whole-batch maps (batch is the first dimension of every canonical view)."""
        parts: list[tuple[torch.Tensor, list[dict]]] = []

        @contextlib.contextmanager
        def part(rows: torch.Tensor) -> Iterator[None]:
            saved = [recording.maps for recording in self._recordings]
            fresh = [{} for _ in self._recordings]
            for recording, maps in zip(self._recordings, fresh, strict=True):
                recording.maps = maps
            try:
                yield
            finally:
                for recording, maps in zip(self._recordings, saved, strict=True):
                    recording.maps = maps
            parts.append((rows.cpu(), fresh))

        yield part
        for index, recording in enumerate(self._recordings):
            names = {name for _, maps in parts for name in maps[index]}
            for name in names:
                pieces = [(rows, maps[index][name]) for rows, maps in parts if name in maps[index]]
                recording.maps[name] = rows_joined(pieces, batch)

    @contextlib.contextmanager
    def editing(self, edit: BoxEdit | RowBoxEdits | None) -> Iterator[None]:
        previous, self.box_edit = self.box_edit, edit
        try:
            yield
        finally:
            self.box_edit = previous

    def state(self) -> ControllerState:
        """What the processors would do now: the recordings (which sites, with gradients or not), the box edit,
        the explicit selection and the call's shape."""
        recordings = tuple((recording.select, recording.with_grad) for recording in self._recordings)
        return ControllerState(recordings, self.box_edit, self._explicit_select, self.context)

    @contextlib.contextmanager
    def restored(self, state: ControllerState) -> Iterator[None]:
        """Inside the block the processors act as they did when `state` was taken (its recordings write to maps
        nobody reads): the recompute of a checkpointed forward in backward repeats that forward exactly."""
        saved = (self._recordings, self.box_edit, self._explicit_select, self.context)
        self._recordings = [_Recording(select, with_grad) for select, with_grad in state.recordings]
        self.box_edit, self._explicit_select, self.context = state.box_edit, state.explicit, state.context
        try:
            yield
        finally:
            self._recordings, self.box_edit, self._explicit_select, self.context = saved

    def recordings_for(self, site: AttentionSite) -> list[_Recording]:
        return [recording for recording in self._recordings if recording.select(site)]

    @contextlib.contextmanager
    def explicit_attention(self, select: Callable[[AttentionSite], bool] = lambda site: True) -> Iterator[None]:
        """Inside the block the selected sites compute `softmax(QK^T / sqrt(d)) V` with explicit score
        matrices (diffusers' `AttnProcessor`, or the controller's own path where it records, edits or
        injects) instead of SDPA: the same values, computed the naive way."""
        previous, self._explicit_select = self._explicit_select, select
        try:
            yield
        finally:
            self._explicit_select = previous

    def explicit_for(self, site: AttentionSite) -> bool:
        """Whether `site` computes explicit softmax attention now (inside `explicit_attention`)."""
        return self._explicit_select is not None and self._explicit_select(site)


class ControlledProcessor:
    """Attention processor of one site: SDPA unless the controller asks to record, edit, inject or go explicit."""

    def __init__(self, controller: AttentionController, site: AttentionSite):
        self.controller = controller
        self.site = site

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        controller = self.controller
        recordings = controller.recordings_for(self.site)
        edit = controller.box_edit if self.site.kind == "cross" and controller.context is not None else None
        embedding = controller.embeddings.get(self.site.name)
        positions = controller.backbone.frame_positions.get(self.site.name)
        explicit = controller.explicit_for(self.site)
        if not (recordings or edit or embedding or positions is not None):
            processor = controller._explicit if explicit else controller._fast
            return processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            key_input = value_input = query_input = hidden_states
        else:
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
            query_input, key_input, value_input = hidden_states, encoder_hidden_states, encoder_hidden_states
        frames = hidden_states.shape[1]
        query_keys = [per_frame(positions, frames)] if positions is not None else []
        if embedding is not None and embedding.query_key is not None:
            query_keys.append(embedding.query_key_for(frames))
        if query_keys:
            query_input = key_input = hidden_states + sum(query_keys).to(hidden_states.dtype)
        if embedding is not None:
            grid = controller.grid(self.site) if controller.context is not None else None
            value = embedding.value_for(frames, hidden_states.shape[0], grid)
            if value is not None:
                value_input = hidden_states + value.to(hidden_states.dtype)

        query = attn.to_q(query_input)
        key = attn.to_k(key_input)
        value = attn.to_v(value_input)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if recordings or edit or explicit:
            out = self._explicit_attention(attn, query, key, value, attention_mask, recordings, edit)
        else:
            batch = query.shape[0]
            heads = attn.heads
            q, k, v = (x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (query, key, value))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attn.scale)
            out = out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1])

        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _explicit_attention(self, attn, query, key, value, attention_mask, recordings, edit) -> torch.Tensor:
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        scores = torch.baddbmm(
            torch.zeros(query.shape[0], query.shape[1], key.shape[1], dtype=query.dtype, device=query.device),
            query,
            key.transpose(-1, -2),
            beta=0,
            alpha=attn.scale,
        )
        if attention_mask is not None:
            scores = scores + attn.prepare_attention_mask(attention_mask, key.shape[1], query.shape[0] // attn.heads)
        if edit is not None:
            scores = self._edit_scores(scores, attn.heads, edit)
        probs = scores.float().softmax(dim=-1).to(value.dtype)
        if recordings:
            self.controller.store(self.site, probs, recordings)
        return attn.batch_to_head_dim(torch.bmm(probs, value))

    def _edit_scores(self, scores: torch.Tensor, heads: int, edit: BoxEdit | RowBoxEdits) -> torch.Tensor:
        context = self.controller.context
        grid = self.controller.grid(self.site)
        tokens = scores.shape[-1]
        if grid[0] * grid[1] != scores.shape[1]:
            raise RuntimeError(f"{self.site.name}: grid {grid} does not match {scores.shape[1]} query tokens")
        bias, suppress = edit.rows_bias_and_mask(self.controller.conditional_rows(), context.frames, grid, tokens)
        shape = (context.batch, context.frames, heads, *bias.shape[2:])
        bias = bias[:, :, None].expand(shape).flatten(0, 2).to(scores.device, scores.dtype)
        suppress = suppress[:, :, None].expand(shape).flatten(0, 2)
        scores = scores + bias
        return scores.masked_fill(suppress.to(scores.device), torch.finfo(scores.dtype).min)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, Eq. 34) as Wan applies it to `(B, N, heads, d)`: channel pairs
    (2i, 2i+1) turned by the angle of their (time, height or width) frequency at the token's position."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2).type_as(x)


class ControlledTokenProcessor:
    """Attention processor of one site of a diffusion transformer (layout "video": tokens `(B, F*h*w, C)`; Wan's
    `WanAttention`, query and key RMS-normed across heads, rotary positions on the 3D self-attention).

    The site's own diffusers processor runs unless the controller asks to record, edit, inject or go explicit.
    Then: a base model's frame positions and Motion Inversion's query-key embedding of frame f are added to every
    token of frame f before `to_q` and `to_k` (rotary positions still applied after), its value embedding per
    (frame, position) before `to_v`; the box edit adds its bias to the cross-attention scores of each frame's
    tokens; a temporal map is each position's attention to the same position in every frame, renormalised over
    frames, `softmax_g(q_{f,p} . k_{g,p} / sqrt(d))` (what a separate temporal attention would see), computed from
    q and k in O(F^2 h w) without the full `(F*h*w)^2` map.
    """

    def __init__(self, controller: AttentionController, site: AttentionSite, original):
        self.controller = controller
        self.site = site
        self.original = original

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        controller = self.controller
        recordings = controller.recordings_for(self.site)
        edit = controller.box_edit if self.site.kind == "cross" and controller.context is not None else None
        embedding = controller.embeddings.get(self.site.name)
        positions = controller.backbone.frame_positions.get(self.site.name)
        explicit = controller.explicit_for(self.site)
        if not (recordings or edit or embedding or explicit or positions is not None):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb, **kwargs)
        if getattr(attn, "add_k_proj", None) is not None:
            raise NotImplementedError(f"{self.site.name}: image-conditioned attention cannot be recorded or edited")

        context = controller.context
        frames, (h, w) = context.frames, controller.grid(self.site)
        query_input = hidden_states
        key_input = value_input = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query_keys = [per_frame(positions, frames)] if positions is not None else []
        if embedding is not None and embedding.query_key is not None:
            query_keys.append(embedding.query_key_for(frames))
        if query_keys:
            per_token = sum(query_keys).repeat_interleave(h * w, 1).to(hidden_states.dtype)
            query_input = key_input = hidden_states + per_token
        if embedding is not None:
            value = embedding.value_for(frames, h * w, (h, w))
            if value is not None:
                value_input = hidden_states + value.transpose(0, 1).flatten(0, 1)[None].to(hidden_states.dtype)

        query = attn.norm_q(attn.to_q(query_input)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(key_input)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(value_input).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = rotate(query, *rotary_emb), rotate(key, *rotary_emb)
        scale = query.shape[-1] ** -0.5

        if recordings and self.site.kind == "temporal":
            per_position = query.unflatten(1, (frames, h * w)), key.unflatten(1, (frames, h * w))
            scores = torch.einsum("bfphd,bgphd->bphfg", *per_position) * scale
            controller.store(self.site, scores.float().softmax(-1).to(query.dtype), recordings)
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))
        if explicit or (self.site.kind == "cross" and (recordings or edit)):
            scores = q @ k.transpose(-1, -2) * scale
            if edit is not None:
                scores = self._edit_scores(scores, edit, frames, (h, w))
            probs = scores.float().softmax(-1).to(v.dtype)
            if recordings and self.site.kind == "cross":
                controller.store(self.site, probs, recordings)
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def _edit_scores(self, scores: torch.Tensor, edit, frames: int, grid: tuple[int, int]) -> torch.Tensor:
        """Scores `(B, heads, F*h*w, T)` with the box edit's bias and suppression on the conditional rows."""
        conditional = self.controller.conditional_rows()
        bias, suppress = edit.rows_bias_and_mask(conditional, frames, grid, scores.shape[-1])
        bias, suppress = bias.flatten(1, 2)[:, None], suppress.flatten(1, 2)[:, None]
        scores = scores + bias.to(scores.device, scores.dtype)
        return scores.masked_fill(suppress.to(scores.device), torch.finfo(scores.dtype).min)


def controlled_backbone(
    model: str | os.PathLike,
    device: torch.device | str = "cpu",
    motion_adapter: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
) -> Backbone:
    """Load a model folder as a backbone (weights in `dtype`) with the attention controller installed on every site."""
    backbone = load_backbone(model, device, dtype, motion_adapter=motion_adapter)
    AttentionController(backbone)
    return backbone
