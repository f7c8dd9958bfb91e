"""Shared fixtures: a tiny diffusers model folder built from config, and small captioned datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from motiontune.api import open_backbone
from motiontune.demo import write_toy_dataset
from motiontune.tiny import build_tiny_model

REFERENCE_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_videos"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random UNet3D text-to-video model in the standard diffusers layout (built once)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture
def backbone(tiny_model_dir):
    """A freshly loaded tiny backbone with the attention controller installed."""
    torch.manual_seed(0)
    return open_backbone(tiny_model_dir, "cpu")


@pytest.fixture(scope="session")
def motion_data(tmp_path_factory) -> Path:
    """Three zigzag clips captioned with the token `sks`."""
    folder = tmp_path_factory.mktemp("data") / "zigzag"
    return write_toy_dataset(folder, "zigzag", "a {colour} square doing sks", 3, 10, 32, seed=0)


@pytest.fixture(scope="session")
def regularization_data(tmp_path_factory) -> Path:
    """Two clips of a known motion without the token."""
    folder = tmp_path_factory.mktemp("data") / "right"
    return write_toy_dataset(folder, "right", "a {colour} square moving right", 2, 10, 32, seed=1)


@pytest.fixture
def reference_videos() -> Path:
    if not REFERENCE_VIDEOS.is_dir():
        pytest.skip(f"shared reference videos not found at {REFERENCE_VIDEOS}")
    return REFERENCE_VIDEOS
