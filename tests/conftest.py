"""Shared fixtures: a tiny diffusers model folder built from config, and small captioned datasets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from motiontune.app.api import open_backbone
from motiontune.backbones import BACKBONES
from motiontune.lab.shapeworld import NOVEL_SHAPES, sample_clips, write_dataset, write_subject_images
from motiontune.lab.tiny import build_tiny_animatediff, build_tiny_model, build_tiny_wan

REFERENCE_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_videos"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random UNet3D text-to-video model in the standard diffusers layout (built once)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module's tests (`pytestmark = pytest.mark.usefixtures("single_thread")`): the
    tiny model's ops are too small to gain from more, and on a busy machine spinning worker threads make
    every step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_animatediff_dir(tmp_path_factory) -> Path:
    """A tiny random AnimateDiff model (a saved `AnimateDiffPipeline` folder, built once)."""
    return build_tiny_animatediff(tmp_path_factory.mktemp("models") / "tiny-animatediff", seed=0)


@pytest.fixture(scope="session")
def tiny_wan_dir(tmp_path_factory) -> Path:
    """A tiny random Wan 2.1 model (a `WanPipeline` folder, built once)."""
    return build_tiny_wan(tmp_path_factory.mktemp("models") / "tiny-wan", seed=0)


@pytest.fixture(scope="session")
def tiny_wan22_dir(tmp_path_factory) -> Path:
    """A tiny random Wan 2.2 A14B-layout model: two experts split at noise level 0.875."""
    return build_tiny_wan(tmp_path_factory.mktemp("models") / "tiny-wan22", two_experts=True, seed=0)


@pytest.fixture(params=BACKBONES)
def any_model_dir(request, tiny_model_dir, tiny_animatediff_dir, tiny_wan_dir) -> Path:
    """Each tiny model in turn, one per backbone: tests that take it run on every architecture."""
    return {"unet3d": tiny_model_dir, "animatediff": tiny_animatediff_dir, "wan": tiny_wan_dir}[request.param]


@pytest.fixture
def backbone(any_model_dir):
    """A freshly loaded tiny backbone with the attention controller installed, for every architecture."""
    torch.manual_seed(0)
    return open_backbone(any_model_dir, "cpu")


@pytest.fixture
def unet3d_backbone(tiny_model_dir):
    """The tiny UNet3D backbone (for tests of facts of that architecture)."""
    torch.manual_seed(0)
    return open_backbone(tiny_model_dir, "cpu")


@pytest.fixture(scope="session")
def motion_data(tmp_path_factory) -> Path:
    """Three ShapeWorld zigzag clips captioned with the token `sks`."""
    folder = tmp_path_factory.mktemp("data") / "zigzag"
    return write_dataset(folder, sample_clips(3, 0, motions=("zigzag",)), frames=10, size=32, token="sks")


@pytest.fixture(scope="session")
def regularization_data(tmp_path_factory) -> Path:
    """Two ShapeWorld clips of a known motion, without the token."""
    folder = tmp_path_factory.mktemp("data") / "right"
    return write_dataset(folder, sample_clips(2, 1, motions=("right",)), frames=10, size=32)


@pytest.fixture(scope="session")
def subject_images(tmp_path_factory) -> Path:
    """Two ShapeWorld stills of novel shapes with exact masks in masks/ (a subject to learn)."""
    clips = sample_clips(2, 3, motions=("static",), shapes=NOVEL_SHAPES)
    return write_subject_images(tmp_path_factory.mktemp("subject") / "star", clips, size=32)


@pytest.fixture
def reference_videos() -> Path:
    if not REFERENCE_VIDEOS.is_dir():
        pytest.skip(f"shared reference videos not found at {REFERENCE_VIDEOS}")
    return REFERENCE_VIDEOS


@pytest.fixture
def load_benchmark(monkeypatch):
    """Import a script of benchmarks/ as a module by name (the folder is not a package; scripts may import
    their siblings, so it goes on the path for the test)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        return module

    return load
