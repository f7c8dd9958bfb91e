"""User-facing errors and warnings: each carries one line that names the input and the problem."""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("motiontune")
_WARNED: set[str] = set()


class MotiontuneError(Exception):
    """Base class for errors the CLI reports as a single line and a non-zero exit."""


class InputError(MotiontuneError):
    """A file or folder given by the user cannot be used (missing, unreadable, empty, too short)."""


class ConfigError(MotiontuneError):
    """An option, a config value or an adapter's metadata is invalid or incompatible."""


class TrainingDiverged(MotiontuneError):
    """Training produced a non-finite loss or weights; the run stopped and kept its last good checkpoint."""


def warn(message: str, once: bool = False) -> None:
    """Report something the user should know but that does not stop the job, as one line (with `once`, only
    the first time in this process: e.g. for a file that is read several times)."""
    line = " ".join(message.split())
    if once and line in _WARNED:
        return
    _WARNED.add(line)
    LOGGER.warning(line)
