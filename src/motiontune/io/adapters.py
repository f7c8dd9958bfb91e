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

from .. import __version__
from ..errors import ConfigError, InputError
from ..utils import atomic_file

FORMAT = "motiontune.adapter"
FORMAT_VERSION = 1
METADATA_KEY = "motiontune"
#: the key prefix of denoiser tensors in an adapter file on every backbone (a transformer's too), so that files stay
#: readable across versions; exports rename them to the formats other tools load
DENOISER_PREFIX = "unet."


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, header: dict[str, str]) -> Path:
    """Write a safetensors file atomically (`utils.atomic_file`)."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_file(path, lambda temporary: save_file(contiguous, str(temporary), header))


def save_adapter(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Save an adapter: `metadata` holds method, backbone, sites/targets, token and hyper-parameters."""
    header = {
        **metadata,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "motiontune_version": __version__,
    }
    return atomic_save_tensors(tensors, path, {METADATA_KEY: json.dumps(header, sort_keys=True)})


def _kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


#: top-level metadata keys: (required, accepted Python types, what they must be)
SCHEMA: dict[str, tuple[bool, tuple[type, ...], str]] = {
    "method": (True, (str,), "a string"),
    "backbone": (True, (str,), "a string"),
    "token": (False, (str, type(None)), "a string or null"),
    "hyperparameters": (False, (dict,), "an object"),
    "training": (False, (dict,), "an object"),
    "base_model": (False, (dict,), "an object"),
}


def check_metadata(metadata: object, path: str | os.PathLike) -> dict:
    """`metadata` if it is a motiontune adapter's metadata of a version we read, with every field we use of the
    type we use it as; else a ConfigError naming `path` and the first field that is not."""
    if not isinstance(metadata, dict):
        raise ConfigError(f"{path}: adapter metadata must be a JSON object, got {_kind(metadata)}")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ConfigError(f"{path}: adapter metadata 'format_version' must be an integer, got {version!r}")
    if metadata.get("format") != FORMAT or not 1 <= version <= FORMAT_VERSION:
        raise ConfigError(
            f"{path}: adapter format {metadata.get('format')} v{version} is not readable by motiontune {__version__} "
            f"(it reads {FORMAT} v1 to v{FORMAT_VERSION})"
        )
    for key, (required, types, expected) in SCHEMA.items():
        if key not in metadata:
            if required:
                raise ConfigError(f"{path}: adapter metadata has no '{key}' (it must be {expected})")
        elif not isinstance(metadata[key], types):
            raise ConfigError(f"{path}: adapter metadata '{key}' must be {expected}, got {_kind(metadata[key])}")
    fingerprint = metadata.get("base_model", {}).get("fingerprint", "")
    if not isinstance(fingerprint, str):
        got = _kind(fingerprint)
        raise ConfigError(f"{path}: adapter metadata 'base_model.fingerprint' must be a string, got {got}")
    shape = metadata.get("training", {}).get("latent_shape", [1, 1, 1, 1])
    sizes = shape if isinstance(shape, list) else []
    if len(sizes) != 4 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise ConfigError(f"{path}: adapter metadata 'training.latent_shape' must be 4 positive sizes, got {shape!r}")
    return metadata


def read_metadata(path: str | os.PathLike) -> dict:
    """The adapter's metadata, checked to be a motiontune adapter of a version we read (`check_metadata`)."""
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
    return check_metadata(metadata, path)


def read_tensors(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, by key."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read the adapter's tensors ({error})") from None


def read_adapter(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata of an adapter file."""
    metadata = read_metadata(path)
    return read_tensors(path, device), metadata
