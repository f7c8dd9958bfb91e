"""Text-to-video generation with any number of adapters, through the one sampling loop."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backbones.base import Backbone
from .errors import ConfigError, warn
from .io.video import frames_to_uint8, read_image, read_video, save_outputs
from .methods.base import Method
from .sampling import StepHook, StepState, invert, make_scheduler, noise_prior, sample
from .utils import check_seed

#: Fastest frame rate written: GIF frame delays are whole 1/100 s, so 100 fps is their limit.
MAX_FPS = 100


@dataclass
class GenerationConfig:
    frames: int = 16
    height: int = 256
    width: int = 256
    steps: int = 50
    guidance_scale: float = 9.0
    seed: int = 0
    negative_prompt: str = ""
    sampler: str | None = None  # None: the model's own (ddim on DDPM models, the folder's on flow-matching ones)
    reference: Path | None = None
    #: a start image: the video's first frame, on a model trained to start from one (Wan 2.2 TI2V)
    image: Path | None = None
    noise_prior: float = 0.0
    inversion_steps: int | None = None
    debias: str = "object"
    progress: bool = True
    fps: int = 8

    def __post_init__(self):
        scale_hint = "(multiples of the VAE factor, e.g. 8)"
        if self.frames < 1 or self.height < 1 or self.width < 1:
            raise ConfigError(f"frames, height and width must be positive {scale_hint}")
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if not math.isfinite(self.guidance_scale):
            raise ConfigError(f"--guidance-scale must be a finite number, got {self.guidance_scale}")
        if not 0.0 <= self.noise_prior <= 1.0:  # also refuses NaN
            raise ConfigError(f"--noise-prior must be in [0, 1], got {self.noise_prior}")
        if self.noise_prior and self.reference is None:
            raise ConfigError("--noise-prior needs --reference VIDEO to invert")
        if not 1 <= self.fps <= MAX_FPS:
            raise ConfigError(f"--fps must be from 1 to {MAX_FPS} (a GIF cannot show frames faster), got {self.fps}")
        check_seed(self.seed)


def initial_latents(backbone: Backbone, batch: int, settings: GenerationConfig) -> torch.Tensor:
    """Seeded Gaussian latents (a CPU generator, so a seed gives the same video on any device),
    optionally blended with the DDIM-inverted reference: z = sqrt(p) z_inv + sqrt(1 - p) eps."""
    multiple = backbone.pixel_multiple
    if settings.height % multiple or settings.width % multiple:
        raise ConfigError(f"height and width must be multiples of {multiple}, got {settings.height}x{settings.width}")
    h, w = backbone.latent_size(settings.height, settings.width)
    generator = torch.Generator().manual_seed(settings.seed)
    shape = (batch, backbone.latent_channels, backbone.latent_frames(settings.frames), h, w)
    noise = torch.randn(shape, generator=generator).to(backbone.device, backbone.dtype)
    if settings.reference is None or settings.noise_prior == 0:
        return noise

    pixels = read_video(settings.reference, settings.frames, settings.height, settings.width)
    reference = backbone.encode_video(pixels[None])
    empty = backbone.encode_prompt([""])
    inverted = invert(backbone, reference, empty, settings.inversion_steps or settings.steps, settings.progress)
    return noise_prior(inverted.expand_as(noise), noise, settings.noise_prior)


def generate_latents(
    backbone: Backbone,
    prompts: list[str],
    methods: Sequence[Method] = (),
    settings: GenerationConfig | None = None,
    hooks: Sequence[StepHook] = (),
    check_prompts: bool = True,
) -> torch.Tensor:
    """Sample latents `(B, C, F, h, w)` for `prompts` with every adapter's inference hooks active.

    Each prompt must carry each adapter's token unless `check_prompts` is off (to measure what an adapter
    does to prompts that do not ask for it)."""
    settings = settings or GenerationConfig()
    for prompt in prompts if check_prompts else ():
        dropped = backbone.prompt_overflow(prompt)
        if dropped:
            warn(f"prompt is longer than the text encoder reads: its last {dropped} tokens are dropped")
    for method in methods:
        for prompt in prompts if check_prompts else ():
            method.check_prompt(prompt)
        method.prepare_inference(settings)
    with torch.no_grad():
        text = backbone.encode_prompt(prompts)
        uncond = backbone.encode_prompt([settings.negative_prompt] * len(prompts))
    latents = initial_latents(backbone, len(prompts), settings)
    all_hooks = [hook for method in methods for hook in method.inference_hooks()] + list(hooks)
    first_frame = None
    if settings.image is not None:
        first_frame = StartImage(start_image_latents(backbone, settings.image, settings.height, settings.width))
        all_hooks.append(first_frame)
    generator = torch.Generator().manual_seed(settings.seed)
    latents = sample(
        backbone,
        latents,
        text,
        uncond,
        make_scheduler(backbone, settings.sampler),
        num_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
        generator=generator,
        hooks=all_hooks,
        progress=settings.progress,
    )
    return latents if first_frame is None else first_frame.placed(latents)


def start_image_latents(backbone: Backbone, image: Path, height: int, width: int) -> torch.Tensor:
    """The latent `(1, C, 1, h, w)` of a start image, for a model trained to start from one; ConfigError otherwise."""
    if not backbone.starts_from_image:
        raise ConfigError(
            f"{backbone.path}: this model was not trained to start from an image (--image needs a Wan 2.2 TI2V-style "
            "folder, whose index sets expand_timesteps)"
        )
    pixels = read_image(image, height, width)
    return backbone.encode_video(pixels[None, None])


class StartImage:
    """Step hook of image-to-video on a model trained for it (Wan 2.2 TI2V, as `WanImageToVideoPipeline` with
    `expand_timesteps`): before every step the first latent frame is the image's latent and its timestep 0, the
    other frames denoise at the step's timestep; the finished video's first latent frame is the image's."""

    def __init__(self, latent: torch.Tensor):
        self.latent = latent

    def before_step(self, state: StepState) -> None:
        state.latents = self.placed(state.latents)
        frames = torch.full((state.latents.shape[2],), float(state.timestep))
        frames[0] = 0.0
        state.frame_timesteps = frames.to(state.latents.device)

    def placed(self, latents: torch.Tensor) -> torch.Tensor:
        first = self.latent.to(latents.device, latents.dtype).expand(latents.shape[0], -1, -1, -1, -1)
        return torch.cat([first, latents[:, :, 1:]], dim=2)


@dataclass
class GeneratedVideo:
    """One generated video: its frames `(F, H, W, 3)` uint8 as decoded (what the files were written from) and
    the paths of its MP4, GIF and PNG contact sheet."""

    frames: np.ndarray
    paths: dict[str, Path]


def generate(
    backbone: Backbone,
    prompt: str,
    output: str | os.PathLike,
    methods: Sequence[Method] = (),
    settings: GenerationConfig | None = None,
    hooks: Sequence[StepHook] = (),
) -> GeneratedVideo:
    """Generate one video and write `output` (MP4) with a GIF and a PNG contact sheet beside it.

    `hooks` run after the adapters' own (e.g. `control.control_hooks` for boxes and camera motion).
    """
    settings = settings or GenerationConfig()
    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise ConfigError(f"{output}: output must be an .mp4 path (GIF and PNG are written beside it)")
    latents = generate_latents(backbone, [prompt], methods, settings, hooks)
    if not torch.isfinite(latents).all():
        raise ConfigError("sampling produced non-finite values (NaN or inf); nothing was written")
    frames = frames_to_uint8(backbone.decode_latents(latents)[0])
    return GeneratedVideo(frames, save_outputs(frames, output, fps=settings.fps, label=prompt))
