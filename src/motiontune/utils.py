"""Small helpers shared by the training loop, the CLI and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from .errors import ConfigError, InputError


def rows_joined(pieces: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> torch.Tensor:
    """One `(batch, ...)` tensor from parts computed on subsets of a batch: `(rows, part)` pairs, `rows` a bool mask
    over the batch and `part` the values of those rows in order (rows no part covers are zero)."""
    first = pieces[0][1]
    whole = first.new_zeros((batch, *first.shape[1:]))
    for rows, part in pieces:
        whole = whole.index_put((rows.nonzero()[:, 0].to(whole.device),), part)
    return whole


def is_main_process() -> bool:
    """Whether this is the process that checks and writes a run's folder: the only one, or rank 0 of several
    (`torchrun` / `accelerate launch` set RANK); the others train beside it and leave the folder to it."""
    return os.environ.get("RANK", "0") == "0"


#: Seeds are 63-bit: every torch generator takes them, and a seed plus a process index still fits.
MAX_SEED = 2**63 - 1


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a staging folder beside `final`; when the block succeeds it replaces `final` in one rename.

    On failure the staging folder is removed and `final` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield staging
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def atomic_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """The one way files are written: `write(temporary)` on a hidden file beside `path` (same suffix, so
    writers that pick a format by extension see the right one), then an atomic rename. `path` appears
    complete or not at all; the temporary never stays, also when `write` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text atomically (`atomic_file`)."""
    return atomic_file(path, lambda temporary: temporary.write_text(text))


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


def check_seed(seed: int) -> None:
    """A seed is an integer in [0, MAX_SEED], else a ConfigError (checked before any model loads)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed must be an integer from 0 to 2**63 - 1, got {seed!r}")


def check_regular_file(path: Path, what: str) -> Path:
    """`path` exists and is a regular file, else an InputError naming it: a FIFO or device would block or
    stream forever when opened."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} does not exist")
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device)"
        raise InputError(f"{path}: {what} is {kind}")
    return path


def nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: Path, option: str) -> None:
    """`folder` can be created or written into: it is not a file, no ancestor is a file, and the nearest
    existing one is writable. One line naming `option` and the path otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{option} {folder}: is a file, not a folder")
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise InputError(f"{option} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {folder}: folder {existing} is not writable")


def check_output_files(paths: list[Path], option: str, overwrite: bool) -> None:
    """Files about to be written: none is a folder, their folders can be written, and none exists unless
    `overwrite` (a finished result is never replaced silently)."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{option} {path}: is a folder; give a file path")
        check_writable_folder(path.parent, option)
        if path.exists() and not overwrite:
            raise InputError(f"{option} {path}: already exists; pass --overwrite to replace it")
