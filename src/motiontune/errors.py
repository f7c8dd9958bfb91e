"""User-facing errors: each carries one line that names the input and the problem."""

from __future__ import annotations


class MotiontuneError(Exception):
    """Base class for errors the CLI reports as a single line and a non-zero exit."""


class InputError(MotiontuneError):
    """A file or folder given by the user cannot be used (missing, unreadable, empty, too short)."""


class ConfigError(MotiontuneError):
    """An option, a config value or an adapter's metadata is invalid or incompatible."""
