"""Methods: one file each, one interface (`methods.base.Method`). Build one by name or from an adapter."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open

from ..backbones.base import Backbone
from ..errors import ConfigError
from ..io.adapters import DENOISER_PREFIX, read_metadata, read_tensors
from .base import Method
from .dreambooth import DreamBooth
from .motion_inversion import MotionInversion
from .motionbooth import MotionBooth
from .motiondirector import MotionDirector
from .motionmatcher import MotionMatcher
from .newmove import NewMove
from .pretrain import Pretrain

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (NewMove, DreamBooth, MotionInversion, MotionBooth, MotionMatcher, MotionDirector, Pretrain)
}
PLANNED: tuple[str, ...] = ()

__all__ = ["METHODS", "Method", "create_method", "load_adapter", "load_adapters"]


def method_class(name: str) -> type[Method]:
    if name in METHODS:
        return METHODS[name]
    if name in PLANNED:
        raise ConfigError(f"method '{name}' is not available in this version yet")
    raise ConfigError(f"unknown method '{name}' (choose from {', '.join(METHODS)})")


def create_method(name: str, backbone: Backbone, options: dict | None = None, token: str | None = None) -> Method:
    """A method by name with its hyper-parameters given as a dict (unknown keys are rejected)."""
    cls = method_class(name)
    return cls(backbone, cls.config_from_dict(options or {}), token=token)


INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _rebuilt_method(metadata: dict, backbone: Backbone) -> Method:
    """The method an adapter's (checked) metadata describes, on `backbone`, before any tensor is applied."""
    cls = method_class(metadata["method"])
    config = cls.config_from_dict(metadata.get("hyperparameters", {}))
    token = metadata.get("token")
    if not token and cls.config_needs_token(config):
        raise ConfigError(f"adapter metadata has no token, but a {cls.name} adapter with these options needs one")
    return cls(backbone, config, token=token)


def _check_tensors(tensors: dict[str, torch.Tensor], kinds: dict[str, bool], method: str, source: str) -> None:
    """Refuse, naming `source`, a tensor a `method` adapter does not declare in `kinds` (key -> floating point),
    one of the other kind (floating point or integer), and NaN or inf anywhere."""
    for key, tensor in tensors.items():
        if key not in kinds:
            raise ConfigError(
                f"{source}: adapter tensor '{key}' is not one a {method} adapter with these hyper-parameters holds"
            )
        if not (tensor.is_floating_point() if kinds[key] else tensor.dtype in INTEGER_DTYPES):
            expected = "floating-point" if kinds[key] else "integer"
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise ConfigError(f"{source}: adapter tensor '{key}' holds {dtype} values, expected {expected} ones")
    non_finite = {key: int((~tensor.isfinite()).sum()) for key, tensor in tensors.items() if tensor.is_floating_point()}
    count = sum(non_finite.values())
    if count:
        first = next(key for key, found in non_finite.items() if found)
        raise ConfigError(
            f"{source}: adapter holds {count} non-finite values, NaN or inf, first in '{first}' (diverged training?)"
        )


def load_adapter(path: str | os.PathLike, backbone: Backbone, allow_other_model: bool = False) -> Method:
    """Rebuild the method an adapter file was trained with, and apply its tensors to `backbone`.

    Before the model changes, everything in the file is checked: its metadata (`adapters.check_metadata`), the
    backbone and base model it was trained on (its fingerprint; `allow_other_model` skips this), the method's
    hyper-parameters and token, and its tensors' keys, kinds and values (`_check_tensors`). Any problem
    is a one-line error naming the file.
    """
    metadata = read_metadata(path)
    if metadata["backbone"] != backbone.name:
        raise ConfigError(f"{path}: adapter is for backbone '{metadata['backbone']}', model is '{backbone.name}'")
    trained_on, this_model = metadata.get("base_model", {}).get("fingerprint"), backbone.fingerprint()
    if trained_on and trained_on != this_model and not allow_other_model:
        raise ConfigError(
            f"{path}: adapter was trained on another model (fingerprint {trained_on[:12]} vs this model's "
            f"{this_model[:12]}); pass --allow-other-model to load it anyway"
        )
    try:
        method = _rebuilt_method(metadata, backbone)
        kinds = method.adapter_tensor_kinds()
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    method.source = str(path)
    tensors = read_tensors(path, device=backbone.device)
    _check_tensors(tensors, kinds, method.name, str(path))
    method.load_adapter_tensors(tensors, str(path))
    return method


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _refuse_duplicates(paths: list[Path]) -> None:
    """A ConfigError naming both files when one adapter is given twice: the same file, or files of equal bytes
    (sizes compared first, then sha256 digests)."""
    resolved = [path.resolve() for path in paths]
    sizes = Counter(path.stat().st_size for path in set(resolved))
    seen: dict[object, Path] = {}
    for path, real in zip(paths, resolved, strict=True):
        size = real.stat().st_size
        identities = [real, *([(size, _sha256(real))] if sizes[size] > 1 else [])]
        for identity in identities:
            if identity in seen:
                raise ConfigError(f"{seen[identity]} and {path}: the same adapter given twice (give it once)")
        seen.update(dict.fromkeys(identities, path))


def _holds_lora(path: Path) -> bool:

    with safe_open(str(path), framework="pt") as handle:
        return any(".lora_A." in key for key in handle.keys())  # noqa: SIM118


def load_adapters(paths: list[str | os.PathLike], backbone: Backbone, allow_other_model: bool = False) -> list[Method]:
    """Apply several adapters to one backbone, so that their changes add up.

    LoRAs and Motion Inversion embeddings add by construction. Full weights changed by several adapters
    combine by task arithmetic, w = w_0 + sum_i (w_i - w_0), instead of the last adapter overwriting the
    others. Full-weight adapters load before LoRAs (a LoRA wraps the layers it targets), so the order
    of `paths` does not change the result. Methods come back in the order of `paths`. Every file's metadata is
    checked, and an adapter given twice refused, before any is applied; `load_adapter` checks the rest.
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        read_metadata(path)
    _refuse_duplicates(paths)
    if len(paths) == 1:
        return [load_adapter(paths[0], backbone, allow_other_model)]
    parameters = dict(backbone.denoiser.named_parameters())
    base: dict[str, torch.Tensor] = {}
    loaded: dict[int, Method] = {}
    for index in sorted(range(len(paths)), key=lambda i: _holds_lora(paths[i])):
        path = paths[index]
        with safe_open(str(path), framework="pt") as handle:
            names = [key.removeprefix(DENOISER_PREFIX) for key in handle.keys()]  # noqa: SIM118
        before = {name: parameters[name].detach().clone() for name in names if name in parameters}
        loaded[index] = load_adapter(path, backbone, allow_other_model)
        with torch.no_grad():
            for name, previous in before.items():
                if name in base:
                    parameters[name].add_(previous - base[name])
                else:
                    base[name] = previous
    return [loaded[index] for index in range(len(paths))]
