"""Adapter files: safetensors tensors keyed by module path, JSON metadata in the safetensors header.

Loading never unpickles: `safetensors` holds only raw tensors and a string-to-string header.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .errors import ConfigError, InputError

FORMAT = "motiontune.adapter"
FORMAT_VERSION = 1
METADATA_KEY = "motiontune"


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, header: dict[str, str]) -> Path:
    """Write a safetensors file through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temporary), header)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def save_adapter(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Save an adapter: `metadata` holds method, backbone, sites/targets, token and hyper-parameters."""
    header = {
        **metadata,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "motiontune_version": __version__,
    }
    return atomic_save_tensors(tensors, path, {METADATA_KEY: json.dumps(header, sort_keys=True)})


def read_metadata(path: str | os.PathLike) -> dict:
    """The adapter's metadata, checked to be a motiontune adapter of a version we read."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: adapter file does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{path}: not a safetensors adapter ({error})") from None
    if METADATA_KEY not in header:
        raise InputError(f"{path}: safetensors file has no motiontune metadata (not a motiontune adapter)")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError:
        raise InputError(f"{path}: adapter metadata is not valid JSON") from None
    if metadata.get("format") != FORMAT or metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ConfigError(
            f"{path}: adapter format {metadata.get('format')} v{metadata.get('format_version')} "
            f"is not readable by motiontune {__version__}"
        )
    return metadata


def read_adapter(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of an adapter file."""
    metadata = read_metadata(path)
    with safe_open(str(path), framework="pt", device=str(device)) as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    return tensors, metadata
