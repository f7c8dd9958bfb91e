"""Wan 2.1 / 2.2 (`WanTransformer3DModel`, diffusers 0.42 `transformer_wan.py`): a diffusion transformer.

What a method meets here instead of a UNet:

* **Tokens.** The latents `(B, C, F, h, w)` are cut into `patch_size` patches (1 x 2 x 2) and every block sees one
  sequence `(B, F*h'*w', D)`, frame-major (token `f*h'*w' + y*w' + x`; layout "video"). There is one resolution:
  every site's grid is the latent grid divided by the patch (a site's level is its depth, below).
* **Attention.** `blocks.N.attn1` is full 3D self-attention over all tokens of all frames, with rotary positions
  (time, height and width parts of each head) applied after the RMS-normed query and key; it is where frames meet,
  so it plays the temporal layers' part (site kind "temporal"). `blocks.N.attn2` is cross-attention to the text
  (kind "cross"). The first half of the blocks stands for a UNet's down path (block "down"), the rest for its up
  path, and a block's level is its depth, its distance from the nearer end (every block sees the same grid): the
  deepest level is the middle of the network, where a method that takes a UNet's deep features (Motion Inversion's
  embeddings, MotionMatcher's maps, MotionBooth's subject attention) takes them here; MotionMatcher's early exit
  stops after the middle block.
* **Text.** UMT5's last hidden state, padded with zeros past the prompt to the tokenizer's length (no start token:
  a prompt's words sit at positions 0 .. n-1, its end token at n).
* **Autoencoder.** `AutoencoderKLWan` is causal in time: 4k+1 pixel frames are k+1 latent frames (the first alone,
  then 4 per latent frame), 8x8 pixels a latent cell; latents are normalised with the config's per-channel mean
  and std, as `WanPipeline` does.
* **Noise.** Flow matching (`diffusion.FlowMatching`): the denoiser predicts the velocity `eps - x0` at t = 1000 s;
  the folder's scheduler gives the sampling shift.
* **Starting from an image (Wan 2.2 TI2V, `expand_timesteps` in the folder's index).** The first latent frame is the
  given image's latent, clean: its tokens get timestep 0 and the others the step's timestep (`predict_noise` takes
  timesteps per row and latent frame, `(B, F)`, and spreads them over each frame's tokens).
* **Two experts (Wan 2.2 A14B).** `transformer_2` denoises below the noise level `boundary_ratio`; the backbone
  routes each batch row to its expert by its timestep, so a method that trains both trains each on its own noise
  levels, and an adapter carries one set of weights per expert (parameter names `experts.high.*`, `experts.low.*`).
  A site (`blocks.N.attn1`) stands for that module in both experts; maps of a batch split between the experts are
  put back together row by row (`AttentionController.rows_in_parts`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from typing import ClassVar

import torch

from ..diffusion import FlowMatching, NoiseProcess
from ..errors import ConfigError
from ..io.adapters import DENOISER_PREFIX
from ..utils import rows_joined
from .base import AttentionSite, Backbone, ModelComponents

_PROJECTIONS = r"\.(?:to_q|to_k|to_v|to_out\.0)"
_BLOCK = r"(?:^|\.)blocks\.\d+"


#: diffusers' Wan module names -> the original Wan code's (what ComfyUI and the other Wan trainers key LoRAs by)
ORIGINAL_ATTENTION = {"attn1": "self_attn", "attn2": "cross_attn"}
ORIGINAL_PROJECTIONS = {
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "o",
    "add_k_proj": "k_img",
    "add_v_proj": "v_img",
}
ORIGINAL_FEED_FORWARD = {"ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}
#: the adapter file's prefix of denoiser tensors, and the part of a two-expert model each expert's factors go to
EXPERT_PARTS = {"experts.high.": "high_noise", "experts.low.": "low_noise"}


def original_module_name(module: str) -> str:
    """`blocks.3.attn1.to_q` -> `blocks.3.self_attn.q`, `blocks.0.ffn.net.2` -> `blocks.0.ffn.2`."""
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    path = match.group(2) if match else ""
    if path in ORIGINAL_FEED_FORWARD:
        return f"blocks.{match.group(1)}.{ORIGINAL_FEED_FORWARD[path]}"
    attention, _, projection = path.partition(".")
    if attention not in ORIGINAL_ATTENTION or projection not in ORIGINAL_PROJECTIONS:
        raise ConfigError(f"no original Wan name for module '{module}'")
    return f"blocks.{match.group(1)}.{ORIGINAL_ATTENTION[attention]}.{ORIGINAL_PROJECTIONS[projection]}"


class WanExperts(torch.nn.Module):
    """Wan 2.2's two denoisers as one module: `high` (the folder's `transformer`) above the boundary noise level,
    `low` (`transformer_2`) below it. Each call goes to one expert (`WanBackbone.predict_noise` splits batches)."""

    def __init__(self, high: torch.nn.Module, low: torch.nn.Module, boundary: float):
        super().__init__()
        self.experts = torch.nn.ModuleDict({"high": high, "low": low})
        self.boundary = boundary
        self.config = high.config

    @property
    def dtype(self) -> torch.dtype:
        return self.experts["high"].dtype

    def expert(self, level: float) -> torch.nn.Module:
        return self.experts["high" if level >= self.boundary else "low"]


class _BlockDone(Exception):
    """Raised by the early-exit hook to leave the transformer after a block, carrying its output."""

    def __init__(self, hidden_states: torch.Tensor):
        super().__init__("early exit after a transformer block")
        self.hidden_states = hidden_states


class WanBackbone(Backbone):
    """Wan text-to-video transformer (`WanTransformer3DModel`), one expert or two (module docstring)."""

    name = "wan"
    denoiser_class_names = ("WanTransformer3DModel",)
    pipeline_class_names = ("WanPipeline",)
    #: `WanPipeline`'s own defaults: 81 frames of 480 x 832, 50 steps, guidance 5
    family_defaults: ClassVar[dict[str, dict]] = {
        "native": {"frames": 81, "height": 480, "width": 832},
        "generation": {"steps": 50, "guidance_scale": 5.0},
    }
    parameter_group_patterns: ClassVar[dict[str, str]] = {
        "temporal": rf"{_BLOCK}\.attn1\.",
        "temporal_attention": rf"{_BLOCK}\.attn1\.",
        # where frames meet, only what decides which token reads which (queries, keys and their norms): the 3D
        # self-attention's values and output also carry every frame's look, these only route it
        "temporal_routing": rf"{_BLOCK}\.attn1\.(?:to_q|to_k|norm_q|norm_k)\.",
        "cross": rf"{_BLOCK}\.attn2\.",
        "cross_kv": rf"{_BLOCK}\.attn2\.to_[kv]\.",
        "spatial": rf"^(?!.*{_BLOCK}\.attn1\.)",
        # everything but where frames meet (the 3D self-attention): MotionBooth's wo_temp
        "without_temporal_blocks": rf"^(?!.*{_BLOCK}\.attn1\.)",
        "all": r".",
    }
    lora_target_patterns: ClassVar[dict[str, str]] = {
        "temporal": rf".*{_BLOCK}\.attn1{_PROJECTIONS}",
        "temporal_routing": rf".*{_BLOCK}\.attn1\.to_[qk]",
        "spatial": rf".*{_BLOCK}\.(?:attn[12]{_PROJECTIONS}|ffn\.net\.(?:0\.proj|2))",
        "spatial_self": rf".*{_BLOCK}\.ffn\.net\.(?:0\.proj|2)",
        "cross_kv": rf".*{_BLOCK}\.attn2\.to_[kv]",
    }

    lora_layouts: ClassVar[tuple[str, ...]] = ("diffusers", "comfyui")

    @classmethod
    def lora_files(cls, factors: dict[str, torch.Tensor], layout: str) -> dict[str, dict[str, torch.Tensor]]:
        """`diffusers`: `transformer.<module>.lora_A.weight` (what `WanPipeline.load_lora_weights` reads);
        `comfyui`: `diffusion_model.<original Wan module>.lora_A.weight` (ComfyUI's own Wan loader; diffusers converts
        it on load), e.g. `diffusion_model.blocks.0.self_attn.q.lora_A.weight`. Alpha = rank (scale 1), so no alpha
        tensors. A two-expert adapter gives one file per expert: `high_noise` for `transformer`, `low_noise` for
        `transformer_2` (diffusers: `load_lora_weights(..., load_into_transformer_2=True)`)."""
        super().lora_files(factors, layout)
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in factors.items():
            name = key.removeprefix(DENOISER_PREFIX)
            prefix, part = next(
                ((prefix, p) for prefix, p in EXPERT_PARTS.items() if name.startswith(prefix)), ("", "")
            )
            name = name.removeprefix(prefix)
            module, _, suffix = name.partition(".lora_")
            if layout == "comfyui":
                renamed = f"diffusion_model.{original_module_name(module)}.lora_{suffix}"
            else:
                renamed = f"transformer.{module}.lora_{suffix}"
            parts.setdefault(part, {})[renamed] = tensor
        return parts

    def __init__(self, components: ModelComponents):
        if components.denoiser_2 is not None:
            if components.boundary_ratio is None:
                raise ConfigError(f"{components.path}: a second expert (transformer_2/) needs boundary_ratio")
            experts = WanExperts(components.denoiser, components.denoiser_2, float(components.boundary_ratio))
            components = dataclasses.replace(components, denoiser=experts)
        super().__init__(components)
        self.starts_from_image = components.expand_timesteps
        config = self.transformer_config
        self.patch = tuple(config.patch_size)
        blocks = config.num_layers
        self.sites = [
            AttentionSite(f"blocks.{i}.{attn}", kind, "video", min(i, blocks - 1 - i), "down" if i < half else "up")
            for half in [(blocks + 1) // 2]
            for i in range(blocks)
            for attn, kind in (("attn1", "temporal"), ("attn2", "cross"))
        ]

    @property
    def transformer_config(self):
        return self.denoiser.config

    @property
    def two_experts(self) -> bool:
        return isinstance(self.denoiser, WanExperts)

    def site_modules(self, name: str) -> list[torch.nn.Module]:
        """A site (`blocks.N.attn1`) stands for that module of each expert."""
        return [transformer.get_submodule(name) for transformer in self._transformers()]

    def shard_units(self) -> list[torch.nn.Module]:
        """Every transformer block of every expert (40 of 5120 wide in Wan 14B: 1/40 of its weights each)."""
        return [block for transformer in self._transformers() for block in transformer.blocks]

    # --- latent geometry ---------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return int(self.vae.config.scale_factor_spatial)

    @property
    def temporal_factor(self) -> int:
        return int(self.vae.config.scale_factor_temporal)

    @property
    def pixel_multiple(self) -> int:
        return self.vae_scale_factor * max(self.patch[1:])

    @property
    def latent_channels(self) -> int:
        return int(self.transformer_config.in_channels)

    @property
    def num_levels(self) -> int:
        """Depths, not resolutions: every block sees the same grid (`grid_at_level`)."""
        return self.deepest_level + 1

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.vae_scale_factor, width // self.vae_scale_factor

    def latent_frames(self, frames: int) -> int:
        """4k+1 pixel frames are k+1 latent frames; any other count is refused (the causal autoencoder would
        drop frames)."""
        step = self.temporal_factor
        if frames < 1 or (frames - 1) % step:
            below, above = max(1, (frames - 1) // step * step + 1), ((frames - 1) // step + 1) * step + 1
            raise ConfigError(
                f"Wan's autoencoder takes {step}k+1 frames (1, {step + 1}, {2 * step + 1}, ...); got {frames}: "
                f"use {below} or {above}"
            )
        return (frames - 1) // step + 1

    def pixel_frames(self, latent_frames: int) -> int:
        return (latent_frames - 1) * self.temporal_factor + 1

    def grid_at_level(self, latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
        """The token grid, the same at every depth: the latent grid divided by the patch."""
        return latent_hw[0] // self.patch[1], latent_hw[1] // self.patch[2]

    @property
    def deepest_level(self) -> int:
        return (self.transformer_config.num_layers - 1) // 2

    def down_attention_level(self, preferred: int) -> int:
        """The middle of the network, whatever is preferred: a UNet's levels name resolutions, which a transformer
        does not change; the deep features a UNet method reads come from the middle blocks here."""
        return self.deepest_level

    def cross_attention_level(self, preferred: int) -> int:
        """The middle of the network (as `down_attention_level`)."""
        return self.deepest_level

    # --- video autoencoder --------------------------------------------------------------------
    def _latent_statistics(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean, device=like.device, dtype=torch.float32).view(shape)
        std = torch.tensor(self.vae.config.latents_std, device=like.device, dtype=torch.float32).view(shape)
        return mean, std

    @torch.no_grad()
    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels `(B, F, 3, H, W)` in [-1, 1] (F = 4k+1) to normalised latents `(B, C, k+1, h, w)`."""
        self.latent_frames(pixels.shape[1])
        video = pixels.permute(0, 2, 1, 3, 4).to(self.vae.device, self.vae.dtype)
        latents = []
        for clip in video.split(1):
            posterior = self.vae.encode(clip).latent_dist
            latents.append(posterior.sample(generator) if generator is not None else posterior.mode())
        latents = torch.cat(latents).float()
        mean, std = self._latent_statistics(latents)
        return ((latents - mean) / std).to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Normalised latents `(B, C, F, h, w)` to pixels `(B, 4(F-1)+1, 3, H, W)` in [-1, 1]; the causal decoder
        needs whole clips, so `chunk` is not used."""
        mean, std = self._latent_statistics(latents)
        latents = (latents.float() * std + mean).to(self.vae.dtype)
        pixels = torch.cat([self.vae.decode(clip).sample for clip in latents.split(1)])
        return pixels.clamp(-1, 1).float().permute(0, 2, 1, 3, 4)

    # --- text ------------------------------------------------------------------------------------
    @property
    def text_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            prompts, padding="max_length", max_length=self.text_length, truncation=True, return_tensors="pt"
        ).input_ids

    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """UMT5's last hidden state over the prompt and its end token, zeros after (as `WanPipeline` pads)."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.text_length,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        mask = tokens.attention_mask.to(self.text_encoder.device)
        hidden = self.text_encoder(tokens.input_ids.to(self.text_encoder.device), mask).last_hidden_state
        return (hidden * mask[..., None]).to(self.dtype)

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def prompt_length(self, prompt: str) -> int:
        """The prompt's tokens and its end token, at most the text length."""
        return min(len(self.token_ids(prompt)) + 1, self.text_length)

    def word_positions(self, prompt: str) -> list[int]:
        """Positions 0 .. n-1 (no start token), cut where the end token takes the last place."""
        return list(range(self.prompt_length(prompt) - 1))

    def prompt_overflow(self, prompt: str) -> int:
        return max(0, len(self.token_ids(prompt)) + 1 - self.text_length)

    # --- denoiser --------------------------------------------------------------------------------
    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        conditional: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The velocity for latents `(B, C, F, h, w)` at `timesteps` (one per row, or one for all). With two
        experts, rows are split by expert and each part runs through its own (one call when all rows agree)."""
        if latents.shape[-2] % self.patch[1] or latents.shape[-1] % self.patch[2]:
            raise ConfigError(
                f"latent grid {tuple(latents.shape[-2:])} is not a multiple of the patch {self.patch[1:]}: "
                f"frame sizes must be multiples of {self.pixel_multiple}"
            )
        if self.frame_positions and self.controller is None:
            raise ConfigError(
                f"{self.path}: this model has frame positions, which its attention controller applies: "
                "load it with motiontune.app.api.open_backbone"
            )
        batch = latents.shape[0]
        timesteps = torch.as_tensor(timesteps, device=latents.device).float()
        if timesteps.ndim == 2:
            if not self.starts_from_image:
                raise ConfigError(f"{self.path}: per-frame timesteps need a model trained to start from an image")
            cells = latents.shape[-2] // self.patch[1] * (latents.shape[-1] // self.patch[2])
            timesteps = timesteps.repeat_interleave(cells, dim=1)  # (B, F) -> one per token, frame-major
        else:
            timesteps = timesteps.reshape(-1).expand(batch)
        if not self.two_experts:
            return self._call(self.denoiser, latents, timesteps, text, conditional)
        levels = [self.noise_process.noise_level(float(t.max())) for t in timesteps]
        experts = [self.denoiser.expert(level) for level in levels]
        if all(expert is experts[0] for expert in experts):
            return self._call(experts[0], latents, timesteps, text, conditional)
        output = torch.empty_like(latents)
        stopped: list[tuple[torch.Tensor, torch.Tensor]] = []
        parts = self.controller.rows_in_parts(batch) if self.controller is not None else None
        with parts or contextlib.nullcontext() as part:
            for expert in {id(e): e for e in experts}.values():
                rows = torch.tensor([e is expert for e in experts], device=latents.device)
                rows_conditional = None if conditional is None else conditional[rows.cpu()]
                with part(rows) if part is not None else contextlib.nullcontext():
                    try:
                        output[rows] = self._call(expert, latents[rows], timesteps[rows], text[rows], rows_conditional)
                    except _BlockDone as done:
                        stopped.append((rows, done.hidden_states))
        if stopped:
            raise _BlockDone(rows_joined(stopped, batch))
        return output

    def _call(self, expert, latents, timesteps, text, conditional) -> torch.Tensor:
        if self.controller is not None:
            self.controller.begin(latents.shape[0], latents.shape[2], tuple(latents.shape[-2:]), conditional)
        return expert(latents, timesteps, encoder_hidden_states=text, return_dict=False)[0]

    def _transformers(self) -> list[torch.nn.Module]:
        return list(self.denoiser.experts.values()) if self.two_experts else [self.denoiser]

    @contextlib.contextmanager
    def down_blocks_only(self, last_level: int | None = None) -> Iterator[list[torch.Tensor]]:
        """Inside this block a denoiser call stops after the middle transformer block (the end of the "down" half);
        its output tokens `(B, F*h*w, D)` are appended to the yielded list."""
        outputs: list[torch.Tensor] = []
        middle = (self.transformer_config.num_layers + 1) // 2 - 1

        def stop(module, args, output):
            raise _BlockDone(output)

        handles = [transformer.blocks[middle].register_forward_hook(stop) for transformer in self._transformers()]
        try:
            yield outputs
        except _BlockDone as done:
            outputs.append(done.hidden_states)
        finally:
            for handle in handles:
                handle.remove()

    # --- memory ----------------------------------------------------------------------------------
    def enable_gradient_checkpointing(self) -> None:
        """diffusers' own block-wise checkpointing of the transformer (module names unchanged), through
        `Backbone.checkpointed`, so a recompute runs in the state its forward ran in."""
        for transformer in self._transformers():
            transformer.enable_gradient_checkpointing(self._checkpointed_block)

    def _checkpointed_block(self, block: torch.nn.Module, *args):
        return self.checkpointed(block, block.__call__, *args)

    def disable_gradient_checkpointing(self) -> None:
        for transformer in self._transformers():
            transformer.disable_gradient_checkpointing()

    # --- noise process -------------------------------------------------------------------------------
    @property
    def noise_process(self) -> NoiseProcess:
        """Flow matching over the folder scheduler's training timesteps, with its sampling shift."""
        if self._noise_process is None:
            self._noise_process = FlowMatching(dict(self.scheduler.config))
        return self._noise_process
