"""AnimateDiff end to end: every method trains and generates on a tiny AnimateDiff folder through the CLI, in both
forms people keep it (a saved AnimateDiffPipeline; a Stable Diffusion folder plus --motion-adapter), with the
controls (boxes, camera pan) and DDIM inversion."""

from __future__ import annotations

import json

import pytest

from cli_helpers import error_line
from motiontune.app import api
from motiontune.app.cli import main
from motiontune.lab.shapeworld import NOVEL_SHAPES, sample_clips, write_subject_images
from motiontune.lab.tiny import build_tiny_animatediff
from motiontune.methods import METHODS

pytestmark = pytest.mark.usefixtures("single_thread")
SHAPE = ["--frames", "4", "--height", "16", "--width", "16"]
TRAINED = [name for name, cls in METHODS.items() if not cls.internal]


@pytest.fixture(scope="module")
def subject_images(tmp_path_factory):
    clips = sample_clips(2, 3, motions=("static",), shapes=NOVEL_SHAPES)
    return write_subject_images(tmp_path_factory.mktemp("subject") / "star", clips, size=32)


@pytest.fixture(scope="module")
def image_model_with_adapter(tmp_path_factory):
    """The tiny AnimateDiff as a Stable Diffusion folder and a separate MotionAdapter folder."""
    root = tmp_path_factory.mktemp("sd")
    return build_tiny_animatediff(root / "sd", motion_adapter_dir=root / "motion-adapter"), root / "motion-adapter"


@pytest.mark.parametrize("method", TRAINED)
def test_every_method_trains_and_generates_through_the_cli(
    method, tiny_animatediff_dir, motion_data, subject_images, regularization_data, tmp_path, capsys
):
    model = ["--model", str(tiny_animatediff_dir)]
    output = tmp_path / "run"
    data = subject_images if METHODS[method].training_data == "subject images" else motion_data
    args = ["train", "--method", method, *model, "--data", str(data), "--output", str(output), "--token", "sks"]
    if method == "motionbooth":
        args += ["--class-word", "star", "--reg-data", str(regularization_data)]
    assert main([*args, "--steps", "2", *SHAPE, "--quiet"]) == 0
    metadata = json.loads((output / "run.json").read_text())
    assert metadata["method"] == method
    video = tmp_path / "video.mp4"
    prompt = "a sks star moving right" if method == "motionbooth" else "a red circle doing sks"
    generate = ["generate", *model, "--adapter", str(output / "adapter.safetensors"), "--prompt", prompt]
    assert main([*generate, "--steps", "2", "--output", str(video), "--quiet"]) == 0
    assert video.stat().st_size > 0 and video.with_suffix(".gif").exists()
    capsys.readouterr()


def test_boxes_camera_pan_and_inversion_run_on_animatediff(tiny_animatediff_dir, motion_data, tmp_path):
    reference = sorted(motion_data.glob("*.mp4"))[0]
    result = api.generate_video(
        "a red circle moving right",
        tmp_path / "controlled.mp4",
        model=tiny_animatediff_dir,
        frames=4,
        height=16,
        width=16,
        steps=3,
        boxes={"circle": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]},
        camera_speed=(0.25, 0.0),
        reference=reference,
        noise_prior=0.5,
        progress=False,
    )
    assert result.frames.shape == (4, 16, 16, 3)


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


def test_adapters_of_two_methods_compose_in_one_generation_on_animatediff(tiny_animatediff_dir, motion_data, tmp_path):
    adapters = []
    for method in ("motiondirector", "motion-inversion"):
        result = api.train(
            method,
            data=motion_data,
            output=tmp_path / method,
            model=tiny_animatediff_dir,
            token="sks",
            steps=1,
            frames=4,
            height=16,
            width=16,
            learning_rate=0.05,
            progress=False,
        )
        adapters.append(result.adapter)

    def frames(chosen):
        video = api.generate_video(
            "a red circle doing sks",
            tmp_path / f"{len(chosen)}-{chosen[0].parent.name}.mp4",
            model=tiny_animatediff_dir,
            adapters=chosen,
            frames=4,
            height=16,
            width=16,
            steps=2,
            progress=False,
        )
        return video.frames.astype(int)

    both = frames(adapters)
    for alone in (frames(adapters[:1]), frames(adapters[1:])):
        assert abs(both - alone).max() > 0
