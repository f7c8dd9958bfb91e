"""motiontune: teach text-to-video diffusion models new motions and subjects."""

__version__ = "0.1.0"
