"""Build a ShapeWorld base model: a tiny text-to-video model trained on ShapeWorld clips, as a UNet3D
(`architecture: unet3d`, ZeroScope's layout) or as a Wan DiT (`architecture: wan`, `WanPipeline`'s layout).

Recipe (`motiontune world train-base --config FILE`), reproducible from its config and seed:
1. render `clips` random clips of the *known* motions and shapes (novel ones are held out);
2. train a small autoencoder on them (MSE + a small KL term): UNet3D's per-frame `AutoencoderKL` on single
   frames; Wan's causal `AutoencoderKLWan` (4x in space and in time) on `vae_frames`-frame windows;
3. pre-train every denoiser weight (`methods.pretrain`: v-prediction on the UNet3D, flow matching on Wan;
   min-SNR weighting optional) through the shared training loop, resumable from its checkpoints,
   optionally keeping a weight average (`ema_decay`) that becomes the exported denoiser;
4. write a standard diffusers model folder, loadable by the same code as ZeroScope or Wan.

With `frame_positions` every temporal attention also learns per-frame query/key positions
(`Backbone.add_frame_positions`), saved beside the UNet: without them the tiny UNet3D follows the
prompt's axis of motion but not its sign (which way time runs), measured in docs/shapeworld.md.
`init` starts from an existing model folder (its autoencoder, text encoder, UNet and positions)
instead of from scratch, to go on training a shipped model under a changed recipe.

With `zero_terminal_snr` the noise schedule is rescaled so that the last training timestep is pure
noise (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1) and
sampling starts there ("trailing" timesteps, their Sec. 3.3). Without it, t = 999 keeps
sqrt(0.0047) of the clean latent, from which the model learns to read a video's layout and motion; at
sampling time pure noise carries none, and the motion follows the noise rather than the prompt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..attention import controlled_backbone
from ..backbones.base import DENOISER_FOLDERS
from ..control import interpolate_boxes
from ..errors import ConfigError
from ..generation import GenerationConfig, generate_latents
from ..io.video import frames_to_uint8, uint8_to_frames, write_contact_sheet
from ..methods import load_adapter
from ..methods.pretrain import Pretrain, PretrainConfig
from ..settings import ModelDefaults
from ..training import Example, TrainConfig, cosine_decay, load_optimizer, optimizer_tensors, train
from ..utils import atomic_directory, atomic_write_text, default_device
from .evaluation import evaluate_video
from .shapeworld import (
    KNOWN_MOTIONS,
    MAX_PATH_EXTENT,
    MOTION_PHRASES,
    NOVEL_MOTIONS,
    PATH_PREFIX,
    SHAPES,
    VOCABULARY,
    Clip,
    render,
    sample_clips,
    with_motion,
)
from .tiny import TINY_VAE, WAN_SCHEDULER, build_tiny_model, build_tiny_wan

#: what each architecture's recipe uses where the config says nothing (None)
ARCHITECTURE_DEFAULTS = {
    "unet3d": {
        "frames": 8,
        "vae_frames": 1,
        "frame_positions": True,
        "zero_terminal_snr": True,
        "vae": {"block_out_channels": [32, 64, 64], "latent_channels": 8, "norm_num_groups": 8},
        "denoiser": {
            "block_out_channels": [32, 64],
            "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D"],
            "up_block_types": ["CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
    },
    # 17 frames of 32 x 32 behind a 4x (space) x 4x (time) causal autoencoder: 5 latent frames of 8 x 8, one
    # token per latent cell (patch 1), so a zigzag's swings land on different latent frames.
    "wan": {
        "frames": 17,
        "vae_frames": 9,
        "frame_positions": False,
        "zero_terminal_snr": False,
        "vae": {
            "base_dim": 16,
            "z_dim": 16,
            "dim_mult": [1, 2, 2],
            "num_res_blocks": 1,
            "temperal_downsample": [True, True],
            "scale_factor_spatial": 4,
            "scale_factor_temporal": 4,
        },
        "denoiser": {
            "patch_size": [1, 1, 1],
            "num_attention_heads": 4,
            "attention_head_dim": 24,
            "ffn_dim": 384,
            "num_layers": 6,
            "freq_dim": 256,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": 64,
        },
    },
}


@dataclass
class BaseModelConfig:
    """Everything that defines a ShapeWorld base model; the same config and seed give the same model. Options
    left None take the architecture's value (`ARCHITECTURE_DEFAULTS`); `vae` and `denoiser` entries are merged
    over the architecture's."""

    architecture: str = "unet3d"
    frames: int | None = None
    size: int = 32
    clips: int = 4000
    seed: int = 0
    vae_steps: int = 1500
    vae_batch: int = 64
    vae_learning_rate: float = 2e-3
    #: from this step the autoencoder's learning rate falls along a cosine to 0 at `vae_steps` (None: constant)
    vae_decay_from: int | None = None
    vae_kl_weight: float = 1e-6
    #: pixels of the object (its masks grown by one pixel) weigh 1 + this in the autoencoder's MSE (0: plain MSE)
    vae_object_weight: float = 0.0
    vae_frames: int | None = None
    #: after the denoiser: steps that train the autoencoder's decoder alone (the encoder, so every latent the
    #: denoiser learned, stays as it is) on clips whose objects follow random paths, half of them, so that it draws
    #: motions faster and less regular than the known ones (the named novel motions are not among them). Its
    #: learning rate falls along a cosine from `decoder_learning_rate` to 0. 0: no such stage
    decoder_steps: int = 0
    decoder_learning_rate: float = 5e-4
    denoiser_steps: int = 20000
    batch_size: int = 32
    learning_rate: float = 1e-3
    #: from this step the denoiser's learning rate falls along a cosine to 0 at `denoiser_steps` (None: constant)
    decay_from: int | None = None
    snr_gamma: float = 0.0
    ema_decay: float = 0.0
    zero_terminal_snr: bool | None = None
    flow_shift: float = 2.0
    frame_positions: bool | None = None
    box_edit_rate: float = 0.0
    caption_dropout: float = 0.1
    #: share of the denoiser's clips captioned with a word it never learns (`unknown_word_texts`): a fresh random
    #: input embedding in the first of `tokens`' slots, as the motion ("doing <word>") or before the colour. A
    #: pretrained text encoder gives a rare token a plausible encoding; a random bidirectional one (UMT5) lets it
    #: change every other word's, so a model never trained on such words draws the wrong shape beside one
    unknown_word_rate: float = 0.0
    checkpoint_every: int = 500
    vae: dict = field(default_factory=dict)
    denoiser: dict = field(default_factory=dict)
    text_hidden_size: int = 64
    tokens: list[str] = field(default_factory=lambda: ["sks", "pll"])

    def __post_init__(self):
        if self.architecture not in ARCHITECTURE_DEFAULTS:
            known = ", ".join(ARCHITECTURE_DEFAULTS)
            raise ConfigError(f"architecture must be one of {known}, got {self.architecture!r}")
        defaults = ARCHITECTURE_DEFAULTS[self.architecture]
        for name in ("frames", "vae_frames", "frame_positions", "zero_terminal_snr"):
            if getattr(self, name) is None:
                setattr(self, name, defaults[name])
        self.vae = {**defaults["vae"], **self.vae}
        self.denoiser = {**defaults["denoiser"], **self.denoiser}
        if self.vae_decay_from is not None and not 0 <= self.vae_decay_from < self.vae_steps:
            raise ConfigError(f"vae_decay_from must be in [0, vae_steps), got {self.vae_decay_from}")
        if self.decoder_steps < 0 or not self.decoder_learning_rate > 0:
            raise ConfigError("decoder_steps must be >= 0 (0: no decoder stage) and decoder_learning_rate > 0")
        if self.decay_from is not None and not 0 <= self.decay_from < self.denoiser_steps:
            raise ConfigError(f"decay_from must be in [0, denoiser_steps), got {self.decay_from}")
        if not 0 <= self.unknown_word_rate <= 1:
            raise ConfigError(f"unknown_word_rate must be in [0, 1], got {self.unknown_word_rate}")
        if not self.vae_object_weight >= 0:
            raise ConfigError(f"vae_object_weight must be >= 0 (0: plain MSE), got {self.vae_object_weight}")
        if self.architecture == "wan":
            if self.frame_positions:
                raise ConfigError("frame_positions is for UNet3D's order-blind temporal attention; Wan has rotary ones")
            if self.zero_terminal_snr:
                raise ConfigError("zero_terminal_snr is for DDPM schedules; flow matching ends at pure noise anyway")
            step = self.vae["scale_factor_temporal"]
            for name in ("frames", "vae_frames"):
                value = getattr(self, name)
                if (value - 1) % step:
                    raise ConfigError(f"{name} must be {step}k+1 for Wan's causal autoencoder, got {value}")

    @classmethod
    def from_yaml(cls, path: Path) -> BaseModelConfig:
        if not path.is_file():
            raise ConfigError(f"{path}: config file does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown base-model option(s) {', '.join(unknown)}")
        try:
            config = cls(**values)
            config.pretrain_config()
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None
        return config

    def pretrain_config(self) -> PretrainConfig:
        """The UNet pre-training options (checked: a bad value fails here, before any clip is rendered)."""
        return PretrainConfig(self.snr_gamma, self.caption_dropout, self.box_edit_rate)


def unknown_word_texts(backbone, clips: list[Clip], config: BaseModelConfig) -> dict[int, tuple[str, torch.Tensor]]:
    """Caption and text encoding of the `unknown_word_rate` share of `clips` (drawn from the seed) that carry a word
    the model never sees twice: "a red circle doing sks on ..." (the clip still shows its own motion) or "a sks red
    circle moving left on ...", in turn, where the slot of `tokens[0]` holds a fresh random input embedding (mean and
    spread of the encoder's own rows) for each clip. The token's own row stays as it was, never trained on."""
    if not config.unknown_word_rate:
        return {}
    generator = torch.Generator().manual_seed(config.seed + 7)
    chosen = torch.nonzero(torch.rand(len(clips), generator=generator) < config.unknown_word_rate).flatten().tolist()
    weight = backbone.text_encoder.get_input_embeddings().weight
    slot = backbone.token_ids(config.tokens[0])
    kept = weight[slot].detach().clone()
    mean, spread = weight.detach().mean(0), weight.detach().std(0)
    texts = {}
    try:
        for turn, index in enumerate(chosen):
            clip = clips[index]
            if turn % 2:
                caption = clip.caption().replace(MOTION_PHRASES[clip.motion], f"doing {config.tokens[0]}", 1)
            else:
                caption = clip.caption().replace(f"a {clip.colour} ", f"a {config.tokens[0]} {clip.colour} ", 1)
            with torch.no_grad():
                weight[slot] = mean + spread * torch.randn(len(slot), weight.shape[1], generator=generator)
                texts[index] = (caption, backbone.encode_prompt([caption])[0])
    finally:
        with torch.no_grad():
            weight[slot] = kept
    return texts


def training_clips(config: BaseModelConfig):
    """The base model's training clips: known motions and shapes only."""
    return sample_clips(config.clips, config.seed, motions=KNOWN_MOTIONS, shapes=SHAPES)


def decoder_clips(config: BaseModelConfig) -> list:
    """The decoder stage's clips: known shapes and backgrounds, every other one moving along a random path of 3 to
    `frames` keyframes (a motion no code names), the rest with known motions."""
    rng = np.random.default_rng(config.seed + 1)
    clips = sample_clips(config.clips, config.seed + 1, motions=KNOWN_MOTIONS, shapes=SHAPES)
    paths = []
    for _ in clips[::2]:
        keys = rng.uniform(0, MAX_PATH_EXTENT * 0.9, size=(int(rng.integers(3, config.frames + 1)), 2))
        paths.append(PATH_PREFIX + ";".join(f"{x:.3f} {y:.3f}" for x, y in keys))
    return [with_motion(clip, paths[i // 2]) if i % 2 == 0 else clip for i, clip in enumerate(clips)]


def _autoencoder_batch(
    clips: torch.Tensor, weights: torch.Tensor, config: BaseModelConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch from clips `(N, F, 3, H, W)` and their pixel weights `(N, F, 1, H, W)`: single frames
    `(B, 3, H, W)` for a per-frame autoencoder, windows of `vae_frames` frames `(B, 3, vae_frames, H, W)` for a
    video one; the weights alike with one channel."""
    if config.architecture == "unet3d":
        rows = torch.randint(len(clips) * clips.shape[1], (config.vae_batch,), generator=generator)
        return clips.flatten(0, 1)[rows], weights.flatten(0, 1)[rows]
    rows = torch.randint(len(clips), (config.vae_batch,), generator=generator)
    starts = torch.randint(clips.shape[1] - config.vae_frames + 1, (config.vae_batch,), generator=generator)
    windows = [slice(s, s + config.vae_frames) for s in starts]

    def gather(source: torch.Tensor) -> torch.Tensor:
        return torch.stack([source[r, w] for r, w in zip(rows, windows, strict=True)]).transpose(1, 2)

    return gather(clips), gather(weights)


def object_weights(masks: np.ndarray, weight: float) -> torch.Tensor:
    """Pixel weights `(N, F, 1, H, W)` of the autoencoder's loss from object masks `(N, F, H, W)`: 1 + `weight`
    on the object and the pixel ring around it (its edge), 1 elsewhere."""
    grown = torch.nn.functional.max_pool2d(torch.from_numpy(masks).float(), 3, stride=1, padding=1)
    return (1 + weight * grown)[:, :, None]


def train_autoencoder(
    vae: torch.nn.Module,
    clips: np.ndarray,
    config: BaseModelConfig,
    progress: bool,
    checkpoints: Path | None = None,
    resume: bool = False,
    masks: np.ndarray | None = None,
    decoder_only: bool = False,
) -> list:
    """Fit the VAE to ShapeWorld clips `(N, F, H, W, 3)` uint8: `sum(m * (x - D(z))^2) / sum(m) + w * KL(q(z|x) ||
    N(0, I))`, with pixel weights m = 1 + `vae_object_weight` on the objects of `masks` `(N, F, H, W)` (m = 1
    without masks: plain MSE). `decoder_only`: the recipe's decoder stage (`decoder_steps`): the encoder stays
    frozen (the KL term is then constant and left out).

    With `checkpoints`, every `checkpoint_every` steps the weights, the optimizer and the generator are written to
    `checkpoints/latest/` (atomically), and `resume` goes on from there. Returns the losses of the steps run."""
    generator = torch.Generator().manual_seed(config.seed)
    pixels = uint8_to_frames(clips)
    weights = torch.ones_like(pixels[:, :, :1]) if masks is None else object_weights(masks, config.vae_object_weight)
    vae.train().requires_grad_(not decoder_only)
    if decoder_only:
        vae.decoder.requires_grad_(True)
        vae.post_quant_conv.requires_grad_(True)
    trained = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=config.vae_learning_rate, weight_decay=0.0)
    start = _restore_autoencoder(checkpoints / "latest", vae, optimizer, generator) if checkpoints and resume else 0
    losses = []
    total = config.decoder_steps if decoder_only else config.vae_steps
    desc = "training decoder" if decoder_only else "training autoencoder"
    for step in tqdm(range(start, total), desc=desc, disable=not progress, initial=start, total=total):
        for group in optimizer.param_groups:
            group["lr"] = autoencoder_learning_rate(config, step, decoder_only)
        batch, weight = _autoencoder_batch(pixels, weights, config, generator)
        with torch.no_grad() if decoder_only else contextlib.nullcontext():
            posterior = vae.encode(batch).latent_dist
            latents = posterior.sample(generator)
        recon = _unclamped_decode(vae, latents)
        error = (weight * (recon - batch).square()).mean() / weight.mean()
        loss = error if decoder_only else error + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if checkpoints is not None and (step + 1) % config.checkpoint_every == 0:
            _save_autoencoder(checkpoints / "latest", step + 1, vae, optimizer, generator)
    vae.eval().requires_grad_(False)
    return losses


@contextmanager
def _decoder_outputs(vae: torch.nn.Module) -> Iterator[list]:
    """A list that collects what the autoencoder's decoder module returns (before `decode` clamps anything):
    one output per latent frame on Wan's causal autoencoder, one per call on a per-frame one."""
    outputs: list = []
    hook = vae.decoder.register_forward_hook(lambda module, inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        hook.remove()


def _unclamped_decode(vae: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """`vae.decode(latents)` before any clamp of the result to [-1, 1].

    Wan's autoencoder clamps what it decodes; trained through that clamp, a pixel pushed past it gets no gradient,
    and the black and white backgrounds (+-0.9) invite such overshoot, which then spreads over the small objects
    on them and stays (a quarter of the decoded values of the first recipe sat beyond the clamp)."""
    with _decoder_outputs(vae) as outputs:
        vae.decode(latents)
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


def autoencoder_learning_rate(config: BaseModelConfig, step: int, decoder_only: bool = False) -> float:
    """`vae_learning_rate`, then from `vae_decay_from` a cosine to 0 at `vae_steps` (`training.cosine_decay`); in
    the decoder stage a cosine from `decoder_learning_rate` to 0 at `decoder_steps`."""
    if decoder_only:
        return config.decoder_learning_rate * cosine_decay(step, config.decoder_steps, 0)
    return config.vae_learning_rate * cosine_decay(step, config.vae_steps, config.vae_decay_from)


def _save_autoencoder(folder: Path, step: int, vae, optimizer, generator: torch.Generator) -> None:
    tensors, layout = optimizer_tensors(optimizer)
    with atomic_directory(folder) as staging:
        save_file({k: v.detach().contiguous() for k, v in vae.state_dict().items()}, str(staging / "vae.safetensors"))
        save_file({**tensors, "rng.generator": generator.get_state()}, str(staging / "optimizer.safetensors"))
        (staging / "state.json").write_text(json.dumps({"step": step, "optimizer": layout}))


def _restore_autoencoder(folder: Path, vae, optimizer, generator: torch.Generator | None) -> int:
    """Load an autoencoder checkpoint; returns its step (0 when there is none). A checkpoint without optimizer
    state (e.g. made from a saved autoencoder to go on training it under a changed recipe) starts a fresh one;
    without an `optimizer` only the weights load."""
    if not (folder / "state.json").is_file():
        return 0
    try:
        state = json.loads((folder / "state.json").read_text())
        vae.load_state_dict(load_file(str(folder / "vae.safetensors")))
        if optimizer is not None and (folder / "optimizer.safetensors").is_file():
            tensors = load_file(str(folder / "optimizer.safetensors"))
            generator.set_state(tensors.pop("rng.generator"))
            load_optimizer(optimizer, tensors, state["optimizer"])
        return int(state["step"])
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ConfigError(f"{folder}: damaged autoencoder checkpoint ({' '.join(str(error).split())})") from None


def _tuples(values: dict) -> dict:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}


def _vae_config(config: BaseModelConfig) -> dict:
    if config.architecture == "wan":
        channels = config.vae["z_dim"]
        return {"latents_mean": [0.0] * channels, "latents_std": [1.0] * channels, **config.vae}
    levels = len(config.vae["block_out_channels"])
    blocks = {"down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels}
    return _tuples({**TINY_VAE, **blocks, **config.vae})


def _scheduler_config(config: BaseModelConfig) -> dict:
    if config.architecture == "wan":
        return {**WAN_SCHEDULER, "flow_shift": config.flow_shift}
    zero_snr = config.zero_terminal_snr
    return {
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": zero_snr,
        "timestep_spacing": "trailing" if zero_snr else "leading",
    }


def set_noise_schedule(model: Path, config: BaseModelConfig) -> None:
    """Rewrite the model folder's scheduler config with the recipe's noise schedule (so a resumed run may
    switch to a zero-terminal-SNR schedule and go on training)."""
    folder = Path(model) / "scheduler"
    current = DDIMScheduler.from_pretrained(folder)
    wanted = _scheduler_config(config)
    if any(current.config.get(key) != value for key, value in wanted.items()):
        scheduler = DDIMScheduler.from_config(current.config, **wanted)
        atomic_write_text(folder / "scheduler_config.json", scheduler.to_json_string())


def _denoiser_config(config: BaseModelConfig) -> dict:
    channels = config.vae["z_dim" if config.architecture == "wan" else "latent_channels"]
    return _tuples({"in_channels": channels, "out_channels": channels, **config.denoiser})


@torch.no_grad()
def _normalise_latents(vae: torch.nn.Module, clips: np.ndarray, config: BaseModelConfig) -> float | dict:
    """Scale the latents to unit variance: UNet3D's `scaling_factor` 1 / std (as Stable Diffusion's 0.18215 was
    chosen); Wan's per-channel `latents_mean` / `latents_std`, as its own autoencoder states them."""
    pixels = uint8_to_frames(clips)
    if config.architecture == "unet3d":
        frames = pixels.flatten(0, 1)
        frames = frames[:: max(1, len(frames) // 2048)]
        latents = torch.cat([vae.encode(part).latent_dist.mode() for part in frames.split(256)])
        factor = float(1 / latents.std())
        vae.register_to_config(scaling_factor=factor)
        return factor
    pixels = pixels[:: max(1, len(pixels) // 256)]
    latents = torch.cat([vae.encode(part.transpose(1, 2)).latent_dist.mode() for part in pixels.split(16)])
    statistics = {
        "latents_mean": latents.mean((0, 2, 3, 4)).tolist(),
        "latents_std": latents.std((0, 2, 3, 4)).tolist(),
    }
    vae.register_to_config(**statistics)
    return statistics


def native_clip(model: Path) -> tuple[int, int]:
    """Frames and frame size the model folder states (`motiontune.json`), else its recipe's, else 8 of 32 x 32."""
    native = ModelDefaults.read(Path(model)).native
    recipe = Path(model) / "recipe.json"
    trained = json.loads(recipe.read_text())["config"] if recipe.exists() else {}
    return int(native.get("frames", trained.get("frames", 8))), int(native.get("height", trained.get("size", 32)))


@torch.no_grad()
def evaluate_autoencoder(
    model: Path,
    clips: int = 48,
    seed: int = 4321,
    progress: bool = True,
    sheet: Path | None = None,
    motions: tuple[str, ...] = KNOWN_MOTIONS,
) -> dict:
    """Score the model's autoencoder: held-out clips (known motions and shapes, an independent seed) at the
    model's native size, encoded and decoded, then read by the analytic metrics as a sample would be. What the
    autoencoder loses (a shape's corners, a frame's position inside a latent frame) no denoiser can give back,
    so these accuracies cap the base model's. Also the squared error over all pixels, the objects' and the
    background's, and `outside_share`: the share of the decoder's values past [-1, 1] (what Wan's clamp cuts).
    `model` may also be an autoencoder checkpoint of a recipe in training
    (`OUTPUT/stages/autoencoder-training/latest`): its weights are scored in the recipe's untrained model. With
    `sheet`, a PNG of the first clips (up to 6), each above its reconstruction. `motions`: the clips' motions
    (`NOVEL_MOTIONS`: does a novel motion survive the autoencoder's temporal compression?)."""
    model = Path(model)
    checkpoint = model if (model / "state.json").is_file() and (model / "vae.safetensors").is_file() else None
    if checkpoint is not None:
        model = checkpoint.parent.parent / "untrained"
        if not (model / "model_index.json").is_file():
            raise ConfigError(f"{checkpoint}: an autoencoder checkpoint without its recipe's {model} beside it")
    backbone = controlled_backbone(model, default_device())
    if checkpoint is not None:
        _restore_autoencoder(checkpoint, backbone.vae, None, None)
    frames, size = native_clip(model)
    scores: dict[str, list] = {"colour": [], "shape": [], "background": [], "motion": []}
    errors: dict[str, list] = {"mse": [], "object_mse": [], "background_mse": [], "outside_share": []}
    rows: list[np.ndarray] = []
    labels: list[str] = []
    with _decoder_outputs(backbone.vae) as raw:
        for clip in tqdm(sample_clips(clips, seed, motions=motions, shapes=SHAPES), disable=not progress):
            rendered = render(clip, frames, size)
            pixels = uint8_to_frames(rendered.frames[None])
            raw.clear()
            decoded = backbone.decode_latents(backbone.encode_video(pixels))
            squared = (decoded.float().cpu() - pixels).square().mean(2)[0]
            masks = torch.from_numpy(rendered.masks)
            errors["mse"].append(float(squared.mean()))
            errors["object_mse"].append(float(squared[masks].mean()))
            errors["background_mse"].append(float(squared[~masks].mean()))
            outside = sum(int((r.abs() > 1).sum()) for r in raw) / sum(r.numel() for r in raw)
            errors["outside_share"].append(outside)
            reconstruction = frames_to_uint8(decoded[0])
            if len(rows) < 12:
                rows += [rendered.frames, reconstruction]
                labels += [rendered.caption, "encoded and decoded"]
            result = evaluate_video(reconstruction, clip)
            for attribute in scores:
                scores[attribute].append(bool(result["correct"][attribute]))
    if sheet is not None:
        write_contact_sheet(rows, sheet, labels=labels, max_frames=9)
    summary = {f"{name}_accuracy": float(np.mean(values)) for name, values in scores.items()}
    return {**summary, **{name: float(np.mean(values)) for name, values in errors.items()}, "clips": clips}


def evaluate_base_model(
    model: Path,
    prompts: int = 64,
    seeds: int = 2,
    steps: int = 25,
    guidance_scale: float = 5.0,
    seed: int = 1234,
    progress: bool = True,
    sheet: Path | None = None,
    adapters: list[Path] = (),
    allow_other_model: bool = False,
) -> dict:
    """Score the base model with the analytic metrics on sampled prompts x seeds (known motions and shapes).

    Prompts come from an independent seed; clips (positions, sizes, phases, textures) and noise are unseen.
    Also asks for each novel motion by name and reports how often the model produces it (it should not).
    """
    backbone = controlled_backbone(model, default_device())
    methods = [load_adapter(path, backbone, allow_other_model) for path in adapters]
    frames, size = native_clip(model)
    clips = sample_clips(prompts, seed, motions=KNOWN_MOTIONS, shapes=SHAPES)
    novel = [with_motion(clip, NOVEL_MOTIONS[i % len(NOVEL_MOTIONS)]) for i, clip in enumerate(clips[:16])]
    scores: dict[str, list] = {"colour": [], "shape": [], "background": [], "motion": []}
    novel_produced = []
    rows, labels = [], []
    jobs = [(clip, False) for clip in clips] + [(clip, True) for clip in novel]
    for clip, is_novel in tqdm(jobs, desc="evaluating", disable=not progress):
        for s in range(seeds):
            settings = GenerationConfig(frames, size, size, steps, guidance_scale, seed=s, progress=False)
            latents = generate_latents(backbone, [clip.caption()], methods, settings)
            video = frames_to_uint8(backbone.decode_latents(latents)[0])
            result = evaluate_video(video, clip)
            if is_novel:
                novel_produced.append(result["motion"] == clip.motion)
                continue
            for attribute in scores:
                scores[attribute].append(bool(result["correct"][attribute]))
            if len(rows) < 12 and s == 0:
                rows.append(video)
                labels.append(clip.caption())
    if sheet is not None:
        write_contact_sheet(rows, sheet, labels=labels)
    summary = {f"{name}_accuracy": float(np.mean(values)) for name, values in scores.items()}
    summary["novel_motion_produced"] = float(np.mean(novel_produced))
    summary["samples"] = len(scores["colour"])
    return summary


def build_base_model(
    config: BaseModelConfig, output: Path, progress: bool = True, resume: bool = False, init: Path | None = None
) -> dict:
    """Train the base model into `output/model` and return a summary with timings and losses.

    With `init`, the autoencoder, text encoder and denoiser come from that model folder and the denoiser goes on
    training from its weights (the config's `vae`, `denoiser` and `vae_*` options are then not used). Boxes of
    the box edit land on latent frames as boxes given over a video do at generation.
    """
    if init is not None and not (Path(init) / "model_index.json").exists():
        raise ConfigError(f"{init}: --init must be a model folder (it has no model_index.json)")
    pretraining = config.pretrain_config()
    output = Path(output)
    stage = output / "stages"
    summary: dict = {"config": dataclasses.asdict(config)}
    clips = training_clips(config)
    rendered = [render(c, config.frames, config.size) for c in tqdm(clips, desc="rendering", disable=not progress)]

    untrained = stage / "autoencoded"
    started = time.perf_counter()
    staged = resume and (untrained / "model_index.json").exists()
    if init is not None:
        init = Path(init)
        recipe = init / "recipe.json"
        history = json.loads(recipe.read_text()) if recipe.exists() else None
        summary["initialised_from"] = {"path": str(init), "recipe": history}
        if not staged:
            with atomic_directory(untrained) as staging:
                shutil.copytree(init, staging, dirs_exist_ok=True)
    elif not staged:
        folder = untrained_model(stage / "untrained", config)
        backbone = controlled_backbone(folder, "cpu")
        videos = np.stack([r.frames for r in rendered])
        masks = np.stack([r.masks for r in rendered])
        checkpoints = stage / "autoencoder-training"
        losses = train_autoencoder(backbone.vae, videos, config, progress, checkpoints, resume, masks)
        if losses:
            summary["autoencoder_loss"] = [losses[0], float(np.mean(losses[-50:]))]
        summary["latent_normalisation"] = _normalise_latents(backbone.vae, videos, config)
        with atomic_directory(untrained) as staging:
            shutil.copytree(folder, staging, dirs_exist_ok=True)
            backbone.vae.save_pretrained(staging / "vae")
    summary["autoencoder_seconds"] = round(time.perf_counter() - started, 1)

    if config.architecture == "unet3d":
        set_noise_schedule(untrained, config)
    backbone = controlled_backbone(untrained, "cpu")
    if config.frame_positions and not backbone.frame_positions:
        backbone.add_frame_positions(config.frames)
    torch.manual_seed(config.seed)
    unknown_words = unknown_word_texts(backbone, [r.clip for r in rendered], config)
    examples = []
    with torch.no_grad():
        for chunk in range(0, len(rendered), 256):
            part = rendered[chunk : chunk + 256]
            pixels = uint8_to_frames(np.stack([r.frames for r in part]))
            latents = backbone.encode_video(pixels)
            texts = backbone.encode_prompt([r.caption for r in part])
            for offset, (r, latent, text) in enumerate(zip(part, latents, texts, strict=True)):
                caption = r.caption
                if chunk + offset in unknown_words:
                    caption, text = unknown_words[chunk + offset]
                example = Example(latent, caption, text, "target", f"shapeworld:{chunk + offset}")
                if config.box_edit_rate:
                    example.boxes = interpolate_boxes(r.boxes, None, latent.shape[1])
                    example.subject = f"{r.clip.colour} {r.clip.shape}"
                examples.append(example)
    method = Pretrain(backbone, pretraining)
    started = time.perf_counter()
    train(
        method,
        examples,
        TrainConfig(
            output / f"{_denoiser_folder(untrained)}-training",
            steps=config.denoiser_steps,
            learning_rate=config.learning_rate,
            batch_size=config.batch_size,
            ema_decay=config.ema_decay,
            decay_from=config.decay_from,
            checkpoint_every=config.checkpoint_every,
            seed=config.seed,
            resume=resume,
            progress=progress,
        ),
    )
    summary["denoiser_seconds"] = round(time.perf_counter() - started, 1)
    if config.decoder_steps:
        started = time.perf_counter()
        paths = [render(c, config.frames, config.size) for c in decoder_clips(config)]
        videos, masks = np.stack([r.frames for r in paths]), np.stack([r.masks for r in paths])
        checkpoints = stage / "decoder-training"
        losses = train_autoencoder(backbone.vae, videos, config, progress, checkpoints, resume, masks, True)
        if losses:
            summary["decoder_loss"] = [losses[0], float(np.mean(losses[-50:]))]
        summary["decoder_seconds"] = round(time.perf_counter() - started, 1)
    export_model(backbone, untrained, output / "model", config, summary)
    return summary


def untrained_model(folder: Path, config: BaseModelConfig) -> Path:
    """The recipe's model folder with random weights, in its architecture's diffusers layout."""
    words = [*VOCABULARY, *config.tokens]
    common = {"words": words, "text_length": 16, "text_hidden_size": config.text_hidden_size, "seed": config.seed}
    if config.architecture == "wan":
        native = {"frames": config.frames, "height": config.size, "width": config.size}
        return build_tiny_wan(
            folder,
            transformer_config=_denoiser_config(config),
            vae_config=_vae_config(config),
            scheduler_config=_scheduler_config(config),
            native=native,
            **common,
        )
    return build_tiny_model(
        folder,
        unet_config=_denoiser_config(config),
        vae_config=_vae_config(config),
        scheduler_config=_scheduler_config(config),
        **common,
    )


def _denoiser_folder(model: Path) -> str:
    return next(name for name in DENOISER_FOLDERS if (Path(model) / name).is_dir())


def export_model(backbone, autoencoded: Path, target: Path, config: BaseModelConfig, summary: dict) -> Path:
    """Write the trained model as a diffusers folder with its native size and the recipe beside it."""
    if "sample_size" in backbone.denoiser.config:
        backbone.denoiser.register_to_config(sample_size=config.size // backbone.vae_scale_factor)
    with atomic_directory(target) as staging:
        shutil.copytree(autoencoded, staging, dirs_exist_ok=True)
        backbone.denoiser.save_pretrained(staging / _denoiser_folder(autoencoded))
        if config.decoder_steps:
            backbone.vae.save_pretrained(staging / "vae")
        if backbone.frame_positions:
            backbone.save_frame_positions(staging)
        (staging / "recipe.json").write_text(json.dumps(summary, indent=2))
        native = {"frames": config.frames, "height": config.size, "width": config.size}
        (staging / "motiontune.json").write_text(json.dumps({"native": native}, indent=2))
    return target
