"""motiontune: teach text-to-video diffusion models new motions and subjects."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`from motiontune import api`: the Python API (`motiontune.app.api`), imported when first asked for."""
    if name == "api":
        from .app import api

        return api
    raise AttributeError(f"module 'motiontune' has no attribute {name!r}")
