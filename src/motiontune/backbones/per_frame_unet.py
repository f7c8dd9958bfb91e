"""What the UNet video models with a per-frame autoencoder and CLIP text share (ZeroScope's `UNet3DConditionModel`,
AnimateDiff's `UNetMotionModel`): the part of the contract one of them does not change.

Both run every 2D layer on `(B*F, C, h, w)` and every temporal layer on `(B*h*w, F, C)`: spatial attention sees
`(B*F, h*w, C)` (layout "frames"), temporal attention `(B*h*w, F, C)` (layout "pixels"). Resolution levels follow
the down blocks: `down_blocks[k]` and `up_blocks[L-1-k]` work at level k, the mid block at level L-1. The video
autoencoder is an image `AutoencoderKL` applied frame by frame (no temporal compression) and the text encoder a
CLIP text model read at its last hidden state, with a start token at position 0 and the end token after the prompt.
A subclass says which attention modules are temporal (`is_temporal_site`), which modules gradient checkpointing
wraps (`checkpoint_units`), its parameter groups and LoRA targets, and how text reaches its denoiser
(`denoiser_text`).
"""

from __future__ import annotations

import abc
import contextlib
import re
from collections.abc import Iterator
from typing import ClassVar

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..errors import ConfigError
from .base import AttentionSite, Backbone, ModelComponents

SPATIAL_BLOCK = r".*\.attentions\.\d+\.transformer_blocks\.\d+"
PROJECTIONS = r"\.(?:to_q|to_k|to_v|to_out\.0)"
FEED_FORWARD = r"\.ff\.net\.(?:0\.proj|2)"
#: the 2D transformers' parameter groups and LoRA targets, the same in both UNets
SPATIAL_GROUPS = {
    "cross": r"\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.",
    "cross_kv": r"\.attentions\.\d+\.transformer_blocks\.\d+\.attn2\.to_[kv]\.",
    "all": r".",
}
SPATIAL_LORA_TARGETS = {
    "spatial": rf"{SPATIAL_BLOCK}(?:\.attn[12]{PROJECTIONS}|{FEED_FORWARD})",
    "spatial_self": rf"{SPATIAL_BLOCK}(?:\.attn1{PROJECTIONS}|{FEED_FORWARD})",
    "cross_kv": rf"{SPATIAL_BLOCK}\.attn2\.to_[kv]",
}

CHECKPOINT_HOOK = "motiontune.gradient_checkpointing"


def _nearest_level(levels: set[int], preferred: int) -> int:
    """The level of `levels` nearest to `preferred`, the deeper one on a tie."""
    return min(levels, key=lambda level: (abs(level - preferred), -level))


class _DownBlocksDone(Exception):
    """Raised by the early-exit hook to leave the UNet forward after a down block, carrying its output."""

    def __init__(self, hidden_states: torch.Tensor):
        super().__init__("early exit after a down block")
        self.hidden_states = hidden_states


class _CheckpointHook(ModelHook):
    """Recompute a module's activations in backward instead of storing them (`Backbone.checkpointed`)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        if not torch.is_grad_enabled():
            return self.fn_ref.original_forward(*args, **kwargs)
        return self.backbone.checkpointed(module, self.fn_ref.original_forward, *args, **kwargs)


class PerFrameUNetBackbone(Backbone):
    """A UNet video denoiser over per-frame latents with CLIP text (module docstring)."""

    #: names of the modules gradient checkpointing wraps (each a resnet, temporal layer or transformer)
    checkpoint_units: ClassVar[re.Pattern]

    def __init__(self, components: ModelComponents):
        super().__init__(components)
        self.sites = self._find_sites()

    def _find_sites(self) -> list[AttentionSite]:
        num_levels = len(self.denoiser.config.block_out_channels)
        sites = []
        for key in self.denoiser.attn_processors:
            name = key.removesuffix(".processor")
            if not re.match(r"(?:down_blocks|up_blocks|mid_block)\.", name):
                block, level = "in", 0
            elif name.startswith("mid_block."):
                block, level = "mid", num_levels - 1
            else:
                block, index = re.match(r"(down|up)_blocks\.(\d+)\.", name).groups()
                level = int(index) if block == "down" else num_levels - 1 - int(index)
            if self.is_temporal_site(name):
                sites.append(AttentionSite(name, "temporal", "pixels", level, block))
            else:
                kind = "cross" if name.endswith("attn2") else "spatial_self"
                sites.append(AttentionSite(name, kind, "frames", level, block))
        return sites

    @staticmethod
    @abc.abstractmethod
    def is_temporal_site(name: str) -> bool:
        """Whether the attention module `name` attends over frames (else over the positions of one frame)."""

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.denoiser.config.in_channels

    @property
    def num_levels(self) -> int:
        return len(self.denoiser.config.block_out_channels)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def latent_frames(self, frames: int) -> int:
        """The autoencoder is per frame: one latent frame per pixel frame."""
        return frames

    def pixel_frames(self, latent_frames: int) -> int:
        return latent_frames

    def down_attention_level(self, preferred: int) -> int:
        """The down-path level nearest to `preferred` that has both cross and temporal attention sites.

        ZeroScope / ModelScope have attention in down blocks 0-2, so asking for level 2 (the latent/4 grid,
        MotionMatcher's `down_blocks.2`) gets level 2. A smaller model without attention at the preferred
        level gets the nearest level that has it, the deeper one on a tie (the tiny test model, whose last
        down block has no attention, gets level 1). In this UNet the down block at level `k` is `down_blocks[k]`.
        """
        down = [site for site in self.sites if site.block == "down"]
        levels = {s.level for s in down if s.kind == "cross"} & {s.level for s in down if s.kind == "temporal"}
        if not levels:
            raise ValueError(f"backbone '{self.name}': no down block has both cross and temporal attention")
        return _nearest_level(levels, preferred)

    def cross_attention_level(self, preferred: int) -> int:
        """The level nearest to `preferred` with cross-attention in any block (down, mid or up).

        Same rule as `down_attention_level`, the deeper level on a tie: ZeroScope asked for level 2 (the
        latent/4 grid) gets 2; a 2-level UNet (the ShapeWorld base model: cross-attention at levels 0 and 1,
        the mid block at level 1) gets 1.
        """
        levels = {site.level for site in self.sites if site.kind == "cross"}
        if not levels:
            raise ValueError(f"backbone '{self.name}' has no cross-attention layers")
        return _nearest_level(levels, preferred)

    @contextlib.contextmanager
    def down_blocks_only(self, last_level: int | None = None) -> Iterator[list[torch.Tensor]]:
        """Inside this block a denoiser call stops after `down_blocks[last_level]` (default: the last one).

        The mid and up blocks (and any later down blocks) never run: MotionMatcher's `get_features`
        early exit, done with a forward hook that raises once the block returns. The call is swallowed
        and the block's output hidden states `(B*F, C, h, w)` are appended to the yielded list; code
        after the call inside the block does not run.
        """
        block = self.denoiser.down_blocks[-1 if last_level is None else last_level]
        outputs: list[torch.Tensor] = []

        def stop(module, args, output):
            raise _DownBlocksDone(output[0])

        handle = block.register_forward_hook(stop)
        try:
            yield outputs
        except _DownBlocksDone as done:
            outputs.append(done.hidden_states)
        finally:
            handle.remove()

    def grid_at_level(self, latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
        """The token grid (h, w) a site at `level` sees: each downsampler maps n to ceil(n / 2)."""
        h, w = latent_hw
        for _ in range(level):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels `(B, F, 3, H, W)` in [-1, 1] to scaled latents `(B, C, F, h, w)`; posterior mean by default."""
        batch, frames = pixels.shape[:2]
        flat = pixels.flatten(0, 1).to(self.vae.device, self.vae.dtype)
        posterior = self.vae.encode(flat).latent_dist
        latents = posterior.sample(generator) if generator is not None else posterior.mode()
        latents = latents * self.vae.config.scaling_factor
        return latents.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Scaled latents `(B, C, F, h, w)` to pixels `(B, F, 3, H, W)` in [-1, 1]."""
        batch, _, frames = latents.shape[:3]
        flat = latents.permute(0, 2, 1, 3, 4).flatten(0, 1) / self.vae.config.scaling_factor
        flat = flat.to(self.vae.dtype)
        pixels = torch.cat([self.vae.decode(part).sample for part in flat.split(chunk)])
        return pixels.clamp(-1, 1).float().unflatten(0, (batch, frames))

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings `(B, L, D)`: the text encoder's last hidden state (ModelScope convention)."""
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids)[0].to(self.dtype)

    def token_ids(self, text: str) -> list[int]:
        """Ids of `text`'s tokens, without start/end tokens."""
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prompt_length(self, prompt: str) -> int:
        """Text positions `prompt` fills: start token, its tokens and the end token (padding follows), at most
        the text length."""
        return min(len(self.token_ids(prompt)) + 2, self.tokenizer.model_max_length)

    def word_positions(self, prompt: str) -> list[int]:
        """Positions 1 .. n of the prompt's n tokens (after the start token), cut at the text length."""
        return list(range(1, self.prompt_length(prompt) - 1))

    def prompt_overflow(self, prompt: str) -> int:
        """How many of `prompt`'s tokens fall past the text encoder's length (dropped when it is encoded)."""
        return max(0, len(self.token_ids(prompt)) + 2 - self.tokenizer.model_max_length)

    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        conditional: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoiser's output for latents `(B, C, F, h, w)` and text `(B, L, D)`.

        `conditional` marks which batch rows carry the prompt (the rest are the unconditional half of
        classifier-free guidance); attention edits apply to conditional rows only.
        """
        if self.frame_positions and self.controller is None:
            raise ConfigError(
                f"{self.path}: this model has frame positions, which its attention controller applies: "
                "load it with motiontune.app.api.open_backbone"
            )
        if self.controller is not None:
            self.controller.begin(latents.shape[0], latents.shape[2], tuple(latents.shape[-2:]), conditional)
        text = self.denoiser_text(text, latents.shape[2])
        return self.denoiser(latents, timesteps, encoder_hidden_states=text, return_dict=False)[0]

    def denoiser_text(self, text: torch.Tensor, frames: int) -> torch.Tensor:
        """Text embeddings `(B, L, D)` as the denoiser takes them for `frames` frames (as they are by default)."""
        return text

    def shard_units(self) -> list[torch.nn.Module]:
        """The UNet's down blocks, middle block and up blocks."""
        unet = self.denoiser
        return [*unet.down_blocks, *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks]

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint every `checkpoint_units` module (diffusers has no gradient checkpointing for UNet3D).

        Done through diffusers' hook registry, so module names (and so adapter keys) do not change.
        """
        for name, module in self.denoiser.named_modules():
            if self.checkpoint_units.match(name):
                registry = HookRegistry.check_if_exists_or_initialize(module)
                if registry.get_hook(CHECKPOINT_HOOK) is None:
                    registry.register_hook(_CheckpointHook(self), CHECKPOINT_HOOK)

    def disable_gradient_checkpointing(self) -> None:
        for name, module in self.denoiser.named_modules():
            if self.checkpoint_units.match(name) and hasattr(module, "_diffusers_hook"):
                module._diffusers_hook.remove_hook(CHECKPOINT_HOOK, recurse=False)
