"""Every method and control end to end through the CLI and the API on the non-default architectures (AnimateDiff,
Wan 2.1, Wan 2.2's two experts): train, generate, controls with inversion, two adapters composed. The tiny UNet3D
runs the same paths in the method suites and test_cli.py."""

from __future__ import annotations

import json

import pytest

from motiontune.app import api
from motiontune.app.cli import main
from motiontune.methods import METHODS

pytestmark = pytest.mark.usefixtures("single_thread")
TRAINED = [name for name, cls in METHODS.items() if not cls.internal]
#: each architecture's tiny folder (a fixture) and a clip its autoencoder takes: (frames, height, width)
MODELS = {
    "animatediff": ("tiny_animatediff_dir", (4, 16, 16)),
    "wan": ("tiny_wan_dir", (5, 32, 32)),
    "wan 2.2 two experts": ("tiny_wan22_dir", (5, 32, 32)),
}


def _shape(clip: tuple[int, int, int]) -> list[str]:
    return ["--frames", str(clip[0]), "--height", str(clip[1]), "--width", str(clip[2])]


@pytest.mark.parametrize("architecture", list(MODELS))
@pytest.mark.parametrize("method", TRAINED)
def test_every_method_trains_and_generates_through_the_cli(
    method, architecture, request, motion_data, subject_images, regularization_data, tmp_path, capsys
):
    folder, clip = MODELS[architecture]
    model = ["--model", str(request.getfixturevalue(folder))]
    output = tmp_path / "run"
    data = subject_images if METHODS[method].training_data == "subject images" else motion_data
    args = ["train", "--method", method, *model, "--data", str(data), "--output", str(output), "--token", "sks"]
    if method == "motionbooth":
        args += ["--class-word", "star", "--reg-data", str(regularization_data)]
    assert main([*args, "--steps", "2", "--batch-size", "2", *_shape(clip), "--quiet"]) == 0
    assert json.loads((output / "run.json").read_text())["method"] == method
    video = tmp_path / "video.mp4"
    prompt = "a sks star moving right" if method == "motionbooth" else "a red circle doing sks"
    generate = ["generate", *model, "--adapter", str(output / "adapter.safetensors"), "--prompt", prompt]
    assert main([*generate, "--steps", "2", "--output", str(video), "--quiet"]) == 0
    assert video.stat().st_size > 0 and video.with_suffix(".gif").exists()
    capsys.readouterr()


@pytest.mark.parametrize("architecture", ["animatediff", "wan"])
def test_boxes_camera_pan_and_inversion_run_in_one_generation(architecture, request, motion_data, tmp_path):
    folder, (_, height, width) = MODELS[architecture]
    frames = 9  # 9 pixel frames: 9 latent frames on AnimateDiff, 3 on Wan
    result = api.generate_video(
        "a red circle moving right",
        tmp_path / "controlled.mp4",
        model=request.getfixturevalue(folder),
        frames=frames,
        height=height,
        width=width,
        steps=3,
        boxes={"circle": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]},
        camera_speed=(0.25, 0.0),
        reference=sorted(motion_data.glob("*.mp4"))[0],
        noise_prior=0.5,
        progress=False,
    )
    assert result.frames.shape == (frames, height, width, 3)


@pytest.mark.parametrize("architecture", ["animatediff", "wan"])
def test_adapters_of_two_methods_compose_in_one_generation(architecture, request, motion_data, tmp_path):
    folder, (frames, height, width) = MODELS[architecture]
    model = request.getfixturevalue(folder)
    clip = {"frames": frames, "height": height, "width": width}
    adapters = []
    for method in ("motiondirector", "motion-inversion"):
        trained = api.train(
            method,
            motion_data,
            tmp_path / method,
            model=model,
            token="sks",
            steps=1,
            learning_rate=0.05,
            progress=False,
            **clip,
        )
        adapters.append(trained.adapter)

    def generated(chosen):
        name = tmp_path / f"{len(chosen)}-{chosen[0].parent.name}.mp4"
        video = api.generate_video(
            "a red circle doing sks", name, model=model, adapters=chosen, steps=2, progress=False, **clip
        )
        return video.frames.astype(int)

    both = generated(adapters)
    for alone in (generated(adapters[:1]), generated(adapters[1:])):
        assert abs(both - alone).max() > 0
