"""Sharded training (FSDP2, `torch.distributed.fsdp.fully_shard`) for denoisers whose weights do not fit one device.

The backbone names its shard units (`Backbone.shard_units`, e.g. Wan's transformer blocks); each unit's parameters,
frozen and trained alike, are split across the processes and gathered only for that unit's forward and backward, so
a process holds one unit's full weights at a time. Trained tensors become `DTensor` shards: their gradients are
averaged across processes by the shards' reduce-scatter, those of trained tensors outside the denoiser (a trained
token, Motion Inversion's embeddings) by `average_unsharded_gradients`. Whatever is saved (adapters, optimizer
state, the processes' agreement check) reads full tensors through `full_tensors`, a collective every process calls;
a resumed run puts full tensors back into shards with `as_placed`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from .backbones.base import Backbone
from .errors import ConfigError


def shard_denoiser(backbone: Backbone) -> None:
    """Shard every unit the backbone names, then the rest of the denoiser (embeddings, norms, output)."""
    units = backbone.shard_units()
    if not units:
        raise ConfigError(f"--fsdp: the {backbone.name} backbone names no blocks to shard")
    for unit in units:
        fully_shard(unit)
    fully_shard(backbone.denoiser)


def is_sharded(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor)


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors with every shard gathered into its full tensor (a collective: every process calls it)."""
    return {key: value.full_tensor() if is_sharded(value) else value for key, value in tensors.items()}


def as_placed(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A full tensor placed as `like` is: split into `like`'s shards when `like` is a shard (every process holds
    the full value, so each keeps its own part), else unchanged."""
    if not is_sharded(like):
        return value
    return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a shard (the tensor itself when it is not one)."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def average_unsharded_gradients(parameters: list[torch.Tensor]) -> None:
    """Average across processes the gradients of trained tensors that are not shards (those of shards are)."""
    world = dist.get_world_size()
    for parameter in parameters:
        if not is_sharded(parameter) and parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world


def clip_gradients(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global norm is at most `max_norm` (shards' norms summed across processes,
    the others counted once); returns the norm before clipping."""
    sharded = torch.zeros((), dtype=torch.float64)
    whole = torch.zeros((), dtype=torch.float64)
    for parameter in parameters:
        if parameter.grad is None:
            continue
        if is_sharded(parameter.grad):
            sharded += parameter.grad.to_local().double().square().sum()
        else:
            whole += parameter.grad.double().square().sum()
    dist.all_reduce(sharded)
    norm = (sharded + whole).sqrt()
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for parameter in parameters:
        if parameter.grad is not None:
            parameter.grad.mul_(scale.to(local_part(parameter.grad).dtype))
    return norm
