"""Small helpers shared by the training loop, the CLI and the benchmarks."""

from __future__ import annotations

import os
import resource
import sys

import torch


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident set size on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def default_device() -> torch.device:
    """CUDA when available (this process's GPU under `accelerate launch`), else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
