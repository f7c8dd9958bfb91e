"""Adapters in the formats other tools load.

- `diffusers-lora`: a LoRA adapter's factors alone, under the peft keys the family's diffusers pipeline reads with
  `load_lora_weights` (alpha = rank, scale 1): `unet.<module>.lora_A.weight` / `.lora_B.weight` for the UNets
  (`AnimateDiffPipeline`, `TextToVideoSDPipeline`), `transformer.<module>...` for Wan. Any backbone.
- `comfyui-lora`: the same factors under the original Wan module names ComfyUI's Wan loader reads
  (`diffusion_model.blocks.0.self_attn.q.lora_A.weight`; diffusers converts them on load too). Wan only.
  A two-expert Wan 2.2 adapter gives one file per expert, `NAME-high_noise.safetensors` (`transformer`) and
  `NAME-low_noise.safetensors` (`transformer_2`; diffusers: `load_into_transformer_2=True`).
- `motion-adapter`: a full fine-tune of AnimateDiff's motion modules (NewMove with `spatial none`) as a
  `MotionAdapter` folder, what `MotionAdapter.from_pretrained` and the AnimateDiff pipeline load in place of
  the adapter the model came with.

What an export cannot carry is named, never dropped silently: a trained token embedding (diffusers LoRA
files hold no text embedding) is a warning; a LoRA window (MotionMatcher's "LoRA on for t >= 500") is a warning,
as other tools apply a LoRA at every step; weights outside the motion modules refuse a MotionAdapter export.
Adapters that are not a LoRA nor a temporal-layer fine-tune (Motion Inversion's embeddings) load only in motiontune:
their export is refused with that said. The command line reads `FORMATS` when it starts, so torch-heavy imports wait
inside the export functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError, InputError, warn
from ..utils import atomic_directory, check_output_files, check_writable_folder
from .adapters import DENOISER_PREFIX, atomic_save_tensors, read_adapter

if TYPE_CHECKING:
    from ..backbones import Backbone

FORMATS = {
    "diffusers-lora": "the LoRA factors as a diffusers / peft LoRA file (pipe.load_lora_weights(FILE))",
    "comfyui-lora": "a Wan LoRA under the original Wan module names ComfyUI loads (diffusion_model.blocks.N...)",
    "motion-adapter": "NewMove's full fine-tune of AnimateDiff's motion modules as a MotionAdapter folder",
}
LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def _is_lora_factor(key: str) -> bool:
    return key.startswith(DENOISER_PREFIX) and key.endswith(LORA_SUFFIXES)


#: the LoRA layout of each LoRA format (`Backbone.lora_files`)
LORA_LAYOUTS = {"diffusers-lora": "diffusers", "comfyui-lora": "comfyui"}


def export_lora(
    adapter: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False, format: str = "diffusers-lora"
) -> list[Path]:
    """Write the LoRA factors of a motiontune adapter file in the LoRA `format` at `output` (a two-expert adapter:
    one file per expert beside it, `NAME-high_noise.safetensors` and `NAME-low_noise.safetensors`); returns the
    files written. Neither the model nor any file is touched before every check has passed."""
    from ..backbones import BACKBONES

    adapter, output = Path(adapter), Path(output)
    if output.suffix != ".safetensors":
        raise ConfigError(f"--output {output}: a LoRA file must end in .safetensors")
    tensors, metadata = read_adapter(adapter)
    factors = {key: value for key, value in tensors.items() if _is_lora_factor(key)}
    if not factors:
        raise InputError(
            f"{adapter}: a {metadata['method']} adapter holds no LoRA factors to export as {format}; its weights "
            "load only in motiontune (motiontune generate --adapter)"
        )
    others = sorted(set(tensors) - set(factors))
    if any(not key.endswith(LORA_SUFFIXES) and key.startswith(DENOISER_PREFIX) for key in others):
        raise InputError(f"{adapter}: holds full weights beside its LoRA factors; {format} would drop them")
    family = BACKBONES.get(metadata.get("backbone", ""))
    if family is None:
        raise InputError(f"{adapter}: adapter is for backbone '{metadata.get('backbone')}', which motiontune lacks")
    files = family.lora_files(factors, LORA_LAYOUTS[format])
    paths = {part: output.with_name(f"{output.stem}-{part}.safetensors") if part else output for part in files}
    check_output_files(list(paths.values()), "--output", overwrite)
    if others:
        warn(
            f"{adapter}: the trained token embedding is not in the export (LoRA files hold no text "
            f"embedding); prompts with '{metadata.get('token')}' will read the base model's embedding"
        )
    window = metadata.get("hyperparameters", {}).get("lora_window_start")
    if window:
        warn(f"{adapter}: trained to be on only for timesteps >= {window}; other tools apply a LoRA at every step")
    return [atomic_save_tensors(files[part], path, {"format": "pt"}) for part, path in paths.items()]


def export_motion_adapter(
    open_model: Callable[[], Backbone], adapter: str | os.PathLike, output: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Apply a full-weight adapter to the model `open_model()` loads and write its temporal layers as the model's
    own adapter format (AnimateDiff: a `MotionAdapter` folder); refused when the adapter changes anything else.
    The output and the adapter's kind are checked before the model loads."""
    from ..methods import load_adapter

    adapter, output = Path(adapter), Path(output)
    check_writable_folder(output, "--output")
    if output.exists() and not overwrite:
        raise InputError(f"--output {output}: already exists (pass --overwrite to replace it)")
    tensors, _ = read_adapter(adapter)
    weights = [key.removeprefix(DENOISER_PREFIX) for key in tensors if key.startswith(DENOISER_PREFIX)]
    if not weights or any(key.endswith(LORA_SUFFIXES) for key in weights):
        raise InputError(
            f"{adapter}: a motion adapter export needs full weights of the temporal layers (NewMove with the default "
            "--adapter full); export a LoRA as diffusers-lora"
        )
    backbone = open_model()
    temporal = set(backbone.parameter_names("temporal"))
    outside = sorted(set(weights) - temporal)
    if outside:
        raise InputError(
            f"{adapter}: changes {len(outside)} weights outside the temporal layers (e.g. {outside[0]}), which a "
            "motion adapter cannot hold; train NewMove with --spatial none"
        )
    load_adapter(adapter, backbone)
    with atomic_directory(output) as staging:
        backbone.save_temporal_layers(staging)
    return output
