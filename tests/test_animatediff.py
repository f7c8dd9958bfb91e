"""AnimateDiff's second form: a Stable Diffusion folder plus --motion-adapter is the same model as the saved
AnimateDiffPipeline, trains and generates, and its refusals are one line each. Every method, the controls and
composition on AnimateDiff: test_end_to_end.py."""

from __future__ import annotations

import pytest

from cli_helpers import error_line
from motiontune.app import api
from motiontune.app.cli import main
from motiontune.lab.tiny import build_tiny_animatediff
from motiontune.methods import METHODS

pytestmark = pytest.mark.usefixtures("single_thread")
SHAPE = ["--frames", "4", "--height", "16", "--width", "16"]
TRAINED = [name for name, cls in METHODS.items() if not cls.internal]


@pytest.fixture(scope="module")
def image_model_with_adapter(tmp_path_factory):
    """The tiny AnimateDiff as a Stable Diffusion folder and a separate MotionAdapter folder."""
    root = tmp_path_factory.mktemp("sd")
    return build_tiny_animatediff(root / "sd", motion_adapter_dir=root / "motion-adapter"), root / "motion-adapter"


def test_a_stable_diffusion_folder_plus_motion_adapter_is_the_same_model(
    image_model_with_adapter, tiny_animatediff_dir, motion_data, tmp_path, capsys
):
    image_model, motion_adapter = image_model_with_adapter
    saved = api.open_backbone(tiny_animatediff_dir, "cpu")
    merged = api.open_backbone(image_model, "cpu", motion_adapter)
    assert merged.name == "animatediff" and merged.fingerprint() == saved.fingerprint()
    output = tmp_path / "run"
    args = ["train", "--method", "motion-inversion", "--model", str(image_model), "--data", str(motion_data)]
    args += ["--output", str(output), "--steps", "1", *SHAPE, "--quiet"]
    assert main([*args, "--motion-adapter", str(motion_adapter)]) == 0
    generate = ["generate", "--model", str(image_model), "--motion-adapter", str(motion_adapter)]
    video = tmp_path / "video.mp4"
    generate += ["--adapter", str(output / "adapter.safetensors"), "--prompt", "a red circle doing sks"]
    assert main([*generate, "--steps", "2", "--output", str(video), "--quiet"]) == 0
    capsys.readouterr()
    # the image model alone, or a motion adapter on a model that has one, is one clear line
    assert main([*args[:-1], "--overwrite"]) == 2
    assert "an image model (UNet2DConditionModel); for AnimateDiff pass its motion adapter" in error_line(capsys)
    on_video_model = ["--model", str(tiny_animatediff_dir), "--motion-adapter", str(motion_adapter)]
    assert main([*generate[:1], *on_video_model, *generate[5:], "--output", str(tmp_path / "v2.mp4")]) == 2
    assert "--motion-adapter needs a Stable Diffusion folder" in error_line(capsys)
    assert main([*generate[:3], "--motion-adapter", str(tmp_path / "nope"), *generate[5:]]) == 2
    assert "motion adapter folder does not exist" in error_line(capsys)
