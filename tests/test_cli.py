"""Tests for the `motiontune` command line: option contract, train/generate round trip, YAML configs,
one-line errors on bad input (with nothing written), and --resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageSequence
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cli_helpers import error_line, write_clip
from motiontune.app.cli import main
from motiontune.io.video import count_frames

TINY = ["--frames", "4", "--height", "32", "--width", "32", "--quiet"]
PROMPT = "a blue square doing sks"

TRAIN_OPTIONS = [
    "--weights-dtype",
    "--method",
    "--model",
    "--data",
    "--token",
    "--steps",
    "--frames",
    "--height",
    "--width",
    "--output",
    "--reg-data",
    "--resume",
    "--config",
    "--spatial",
    "--temporal",
    "--no-temporal",
    "--train-token",
    "--timestep-sampling",
    "--adapter",
    "--lora-rank",
    "--allow-outside-data",
    "--overwrite",
]
GENERATE_OPTIONS = [
    "--image",
    "--weights-dtype",
    "--model",
    "--adapter",
    "--prompt",
    "--frames",
    "--height",
    "--width",
    "--steps",
    "--seed",
    "--output",
    "--reference",
    "--noise-prior",
    "--config",
    "--overwrite",
    "--allow-other-model",
]
DEMO_OPTIONS = ["--output", "--steps", "--device", "--quiet", "--config", "--overwrite"]
TINY_MODEL_OPTIONS = ["output", "--seed", "--architecture", "--two-experts", "--image-to-video", "--motion-adapter"]


# ----------------------------------------------------------------------------------------------- helpers


def train(model: Path, data: Path, output: Path, *extra: str) -> int:
    return main(
        [
            "train",
            "--model",
            str(model),
            "--data",
            str(data),
            "--token",
            "sks",
            "--steps",
            "2",
            *TINY,
            "--output",
            str(output),
            *extra,
        ]
    )


def generate(model: Path, adapters: list[Path], output: Path, *extra: str, prompt: str = PROMPT) -> int:
    adapter_args = [arg for adapter in adapters for arg in ("--adapter", str(adapter))]
    return main(
        [
            "generate",
            "--model",
            str(model),
            *adapter_args,
            "--prompt",
            prompt,
            "--steps",
            "2",
            "--quiet",
            "--output",
            str(output),
            *extra,
        ]
    )


def adapter_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    return json.loads(header["motiontune"])


def gif_frames(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: the tiny model's ops are too small to gain from more, and on a busy machine
    (parallel jobs, the background process below) spinning worker threads make every step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def console_help():
    """`python -m motiontune.app.cli --help` in a real process, started when the module starts: its imports
    (torch, diffusers) take seconds, so it runs beside the in-process tests until one waits for it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "motiontune.app.cli", "--help"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate()


@pytest.fixture(scope="module")
def trained(tiny_model_dir, motion_data, tmp_path_factory) -> tuple[int, Path]:
    """The documented contract: `motiontune train --method newmove ...` (exit code, output folder)."""
    output = tmp_path_factory.mktemp("cli") / "newmove"
    code = main(
        [
            "train",
            "--method",
            "newmove",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(motion_data),
            "--token",
            "sks",
            "--steps",
            "2",
            *TINY,
            "--output",
            str(output),
            "--checkpoint-every",
            "1",
        ]
    )
    return code, output


@pytest.fixture(scope="module")
def adapter(trained) -> Path:
    code, output = trained
    assert code == 0
    return output / "adapter.safetensors"


@pytest.fixture(scope="module")
def generated(tiny_model_dir, adapter, tmp_path_factory) -> tuple[int, Path]:
    """`motiontune generate` with the trained adapter at seed 3 and default frames/size."""
    output = tmp_path_factory.mktemp("videos") / "v.mp4"
    return generate(tiny_model_dir, [adapter], output, "--seed", "3"), output


# ------------------------------------------------------------------------------------------------- help


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("train", TRAIN_OPTIONS),
        ("generate", GENERATE_OPTIONS),
        ("demo", DEMO_OPTIONS),
        ("tiny-model", TINY_MODEL_OPTIONS),
    ],
)
def test_help_documents_every_option(command, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: motiontune {command}" in text
    for option in options:
        assert f"{option} " in text or f"{option}," in text or f"{option}\n" in text, f"{command} help lacks {option}"


def test_train_method_help_lists_every_offered_method_with_its_summary(capsys):
    from motiontune.methods import METHODS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines (and may break after hyphens)
    for name, cls in METHODS.items():
        assert ("".join(f"{name}: {cls.summary}".split()) in text) == (name != "pretrain"), name
    assert "dreambooth(baseline)" not in text


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert error_line(capsys) == (
        "motiontune: error: motiontune: the following arguments are required: COMMAND (see motiontune --help)"
    )


# ------------------------------------------------------------------------------------- train + generate


def test_train_writes_adapter_with_metadata_and_checkpoints(trained):
    code, output = trained
    assert code == 0
    adapter = output / "adapter.safetensors"
    assert adapter.is_file()
    meta = adapter_metadata(adapter)
    assert meta["method"] == "newmove"
    assert meta["backbone"] == "unet3d"
    assert meta["token"] == "sks"
    hyper = meta["hyperparameters"]
    assert hyper["spatial"] == "kv" and hyper["temporal"] is True and hyper["timestep_sampling"] == "coarse"
    assert meta["training"]["steps"] == 2
    assert meta["training"]["examples"] == 3
    assert meta["training"]["latent_shape"][1] == 4  # frames
    tensors = load_file(str(adapter))
    assert tensors and all(key.startswith("unet.") for key in tensors)
    for step in (1, 2):
        checkpoint = output / "checkpoints" / f"step-{step:06d}"
        assert (checkpoint / "adapter.safetensors").is_file()
        assert (checkpoint / "state.json").is_file()
    log = (output / "training_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2]


def test_generate_writes_mp4_gif_png_at_the_adapters_size(generated, capsys):
    code, output = generated
    assert code == 0
    for suffix in (".mp4", ".gif", ".png"):
        assert output.with_suffix(suffix).is_file(), suffix
    frames = gif_frames(output.with_suffix(".gif"))
    assert frames.shape == (4, 32, 32, 3)  # the adapter's training size, not the 16-frame default
    assert count_frames(output) == 4


def test_generate_same_seed_same_frames_other_seed_differs(tiny_model_dir, adapter, generated, tmp_path):
    _, first = generated
    assert generate(tiny_model_dir, [adapter], tmp_path / "again.mp4", "--seed", "3") == 0
    assert generate(tiny_model_dir, [adapter], tmp_path / "other.mp4", "--seed", "4") == 0
    reference = gif_frames(first.with_suffix(".gif"))
    np.testing.assert_array_equal(gif_frames(tmp_path / "again.gif"), reference)
    assert not np.array_equal(gif_frames(tmp_path / "other.gif"), reference)


def test_generate_with_two_adapters(tiny_model_dir, motion_data, adapter, generated, tmp_path):
    second = tmp_path / "kv-only"
    code = main(
        [
            "train",
            "--method",
            "newmove",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(motion_data),
            "--steps",
            "1",
            *TINY,
            "--output",
            str(second),
            "--no-temporal",
            "--spatial",
            "kv",
            "--lr",
            "1e-2",
        ]
    )
    assert code == 0
    meta = adapter_metadata(second / "adapter.safetensors")
    assert meta["hyperparameters"]["temporal"] is False
    assert meta["targets"]["groups"] == ["cross_kv"]

    output = tmp_path / "both.mp4"
    assert generate(tiny_model_dir, [adapter, second / "adapter.safetensors"], output, "--seed", "3") == 0
    both = gif_frames(output.with_suffix(".gif"))
    assert both.shape == (4, 32, 32, 3)
    # Same seed as `generated` with only the first adapter: the second adapter must change the video.
    assert not np.array_equal(both, gif_frames(generated[1].with_suffix(".gif")))


def test_generate_noise_prior_from_a_real_reference_video(
    tiny_model_dir, adapter, generated, reference_videos, tmp_path
):
    output = tmp_path / "prior.mp4"
    code = generate(
        tiny_model_dir,
        [adapter],
        output,
        "--seed",
        "3",
        "--reference",
        str(reference_videos / "dog.mp4"),
        "--noise-prior",
        "0.5",
    )
    assert code == 0
    frames = gif_frames(output.with_suffix(".gif"))
    assert frames.shape == (4, 32, 32, 3)
    # Same seed and adapter as `generated`: only the inverted reference in the initial noise differs.
    assert not np.array_equal(frames, gif_frames(generated[1].with_suffix(".gif")))


# ------------------------------------------------------------------------------------------ YAML config


def test_yaml_config_trains_and_command_line_wins(tiny_model_dir, motion_data, tmp_path, capsys):
    output = tmp_path / "from-yaml"
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "method": "newmove",
                "data": str(motion_data),
                "model": str(tiny_model_dir),
                "steps": 3,
                "frames": 4,
                "height": 32,
                "width": 32,
                "output": str(output),
                "quiet": True,
                "spatial": "none",
                "checkpoint-every": 1,
            }
        )
    )
    assert main(["train", "--config", str(config), "--steps", "1"]) == 0
    meta = adapter_metadata(output / "adapter.safetensors")
    assert meta["hyperparameters"]["spatial"] == "none"
    assert meta["targets"]["groups"] == ["temporal"]
    assert meta["training"]["steps"] == 1  # --steps 1 on the command line beats steps: 3 in the file
    assert meta["training"]["latent_shape"][1] == 4
    assert len((output / "training_log.jsonl").read_text().splitlines()) == 1
    assert (output / "checkpoints" / "step-000001" / "state.json").is_file()  # dashed key applied
    assert "adapter:" in capsys.readouterr().out


def test_yaml_unknown_key_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"steps": 2, "bogus_option": 1, "output": str(tmp_path / "out")}))
    assert main(["train", "--config", str(config)]) == 2
    line = error_line(capsys)
    assert str(config) in line and "bogus_option" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [None, "steps: [1\n", "- a list\n"], ids=["missing", "invalid", "not-mapping"])
def test_yaml_unusable_config_is_a_one_line_error(content, tmp_path, capsys):
    config = tmp_path / "train.yaml"
    if content is not None:
        config.write_text(content)
    assert main(["generate", "--config", str(config), "--prompt", "a sks"]) == 2
    assert str(config) in error_line(capsys)


# ------------------------------------------------------------------------------------------- bad input


def _missing_model(tmp_path, model, data):
    return tmp_path / "no-such-model", data, tmp_path / "no-such-model"


def _model_without_vae(tmp_path, model, data):
    broken = tmp_path / "broken-model"
    shutil.copytree(model, broken, ignore=lambda folder, names: ["vae"] if Path(folder) == Path(model) else [])
    return broken, data, broken


def _empty_data(tmp_path, model, data):
    (tmp_path / "empty").mkdir()
    return model, tmp_path / "empty", tmp_path / "empty"


def _unreadable_video(tmp_path, model, data):
    folder = tmp_path / "garbage"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(b"this is text, not an mp4 file\n" * 20)
    (folder / "clip.txt").write_text("a red square doing sks")
    return model, folder, folder / "clip.mp4"


def _short_video(tmp_path, model, data):
    path = write_clip(tmp_path / "short", "clip", "a red square doing sks", frames=3)
    return model, path.parent, path


def _caption_without_token(tmp_path, model, data):
    path = write_clip(tmp_path / "no-token", "clip", "a red square moving right")
    return model, path.parent, path


@pytest.mark.parametrize(
    "case",
    [_missing_model, _model_without_vae, _empty_data, _unreadable_video, _short_video, _caption_without_token],
    ids=lambda case: case.__name__.strip("_"),
)
def test_train_bad_input_is_one_line_and_writes_nothing(case, tiny_model_dir, motion_data, tmp_path, capsys):
    model, data, offender = case(tmp_path, tiny_model_dir, motion_data)
    output = tmp_path / "out"
    frames = "8" if case is _short_video else "4"
    code = main(
        [
            "train",
            "--model",
            str(model),
            "--data",
            str(data),
            "--steps",
            "2",
            "--quiet",
            "--frames",
            frames,
            "--height",
            "32",
            "--width",
            "32",
            "--output",
            str(output),
        ]
    )
    assert code == 2
    line = error_line(capsys)
    assert str(offender) in line
    if case is _model_without_vae:
        assert "vae" in line
    assert not output.exists()


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--method", "no-such-method", "no-such-method"),
        ("--spatial", "everything", "everything"),
        ("--sampling", "sometimes", "sometimes"),
        ("--save-precision", "fp8", "--save-precision"),
        ("--height", "33", "33x32"),
        ("--lr", "-1", "--lr"),
        ("--mixed-precision", "fp64", "fp64"),
        ("--device", "no-such-device", "no-such-device"),
        pytest.param(
            "--device",
            "cuda",
            "CUDA",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here"),
        ),
    ],
)
def test_train_bad_option_is_one_line_and_writes_nothing(
    option, value, expected, tiny_model_dir, motion_data, tmp_path, capsys
):
    output = tmp_path / "out"
    code = train(tiny_model_dir, motion_data, output, option, value)
    assert code == 2
    assert expected in error_line(capsys)
    assert not output.exists()


def test_train_twice_in_one_process_with_other_mixed_precision(tiny_model_dir, motion_data, tmp_path):
    # accelerate's process-wide state must not pin the first run's precision for later runs.
    assert train(tiny_model_dir, motion_data, tmp_path / "bf16", "--steps", "1", "--mixed-precision", "bf16") == 0
    assert train(tiny_model_dir, motion_data, tmp_path / "fp32", "--steps", "1", "--mixed-precision", "no") == 0
    assert (tmp_path / "fp32" / "adapter.safetensors").is_file()


def test_train_reg_data_is_validated(tiny_model_dir, motion_data, tmp_path, capsys):
    (tmp_path / "reg").mkdir()
    output = tmp_path / "out"
    assert train(tiny_model_dir, motion_data, output, "--reg-data", str(tmp_path / "reg")) == 2
    assert str(tmp_path / "reg") in error_line(capsys)
    assert not output.exists()


def test_train_missing_required_option(tiny_model_dir, tmp_path, capsys):
    assert main(["train", "--model", str(tiny_model_dir), "--output", str(tmp_path / "out")]) == 2
    assert "--data" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def _plain_safetensors(tmp_path, adapter):
    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    return ["--adapter", str(path)], PROMPT, str(path)


def _missing_adapter(tmp_path, adapter):
    return ["--adapter", str(tmp_path / "missing.safetensors")], PROMPT, str(tmp_path / "missing.safetensors")


def _prompt_without_token(tmp_path, adapter):
    return ["--adapter", str(adapter)], "a blue square moving right", "sks"


def _noise_prior_without_reference(tmp_path, adapter):
    return ["--adapter", str(adapter), "--noise-prior", "0.5"], PROMPT, "--reference"


def _missing_reference(tmp_path, adapter):
    reference = tmp_path / "missing.mp4"
    return ["--adapter", str(adapter), "--noise-prior", "0.5", "--reference", str(reference)], PROMPT, str(reference)


def _unknown_sampler(tmp_path, adapter):
    return ["--adapter", str(adapter), "--sampler", "no-such-sampler"], PROMPT, "no-such-sampler"


def _missing_model_for_generate(tmp_path, adapter):
    return ["--adapter", str(adapter), "--model", str(tmp_path / "nope")], PROMPT, str(tmp_path / "nope")


@pytest.mark.parametrize(
    "case",
    [
        _plain_safetensors,
        _missing_adapter,
        _prompt_without_token,
        _noise_prior_without_reference,
        _missing_reference,
        _unknown_sampler,
        _missing_model_for_generate,
    ],
    ids=lambda case: case.__name__.strip("_"),
)
def test_generate_bad_input_is_one_line_and_writes_nothing(case, tiny_model_dir, adapter, tmp_path, capsys):
    extra, prompt, expected = case(tmp_path, adapter)
    if "--model" not in extra:
        extra = ["--model", str(tiny_model_dir), *extra]
    output = tmp_path / "videos" / "v.mp4"
    code = main(["generate", *extra, "--prompt", prompt, "--steps", "2", "--quiet", "--output", str(output)])
    assert code == 2
    line = error_line(capsys)
    assert expected in line
    if case is _prompt_without_token:
        assert str(adapter) in line  # names the adapter whose token is missing
    assert not output.parent.exists()


def test_generate_output_must_be_mp4(tiny_model_dir, adapter, tmp_path, capsys):
    assert generate(tiny_model_dir, [adapter], tmp_path / "v.gif") == 2
    assert str(tmp_path / "v.gif") in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ resume


def test_resume_matches_an_uninterrupted_run(tiny_model_dir, motion_data, trained, tmp_path):
    # The uninterrupted run is the contract run of `trained` (2 steps, a checkpoint every step).
    _, straight = trained
    resumed = tmp_path / "resumed"
    assert train(tiny_model_dir, motion_data, resumed, "--steps", "1", "--checkpoint-every", "1") == 0
    (resumed / "adapter.safetensors").unlink()  # as if stopped after step 1 (a finished run is not resumed)
    halfway = resumed / "checkpoints" / "step-000001" / "state.json"
    inode = halfway.stat().st_ino
    assert train(tiny_model_dir, motion_data, resumed, "--checkpoint-every", "1", "--resume") == 0
    # The resumed run continued after step 1 instead of redoing it (which would rewrite that checkpoint).
    assert halfway.stat().st_ino == inode

    expected = load_file(str(straight / "adapter.safetensors"))
    actual = load_file(str(resumed / "adapter.safetensors"))
    assert expected.keys() == actual.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key

    def steps_and_losses(run: Path) -> list[tuple[int, float]]:  # seconds differ from run to run
        return [(r["step"], r["loss"]) for r in map(json.loads, (run / "training_log.jsonl").read_text().splitlines())]

    assert steps_and_losses(resumed) == steps_and_losses(straight)
    assert adapter_metadata(resumed / "adapter.safetensors")["training"]["steps"] == 2


def test_resume_with_other_options_is_refused(tiny_model_dir, motion_data, trained, tmp_path, capsys):
    output = tmp_path / "run"
    shutil.copytree(trained[1], output)
    (output / "adapter.safetensors").unlink()
    code = train(tiny_model_dir, motion_data, output, "--steps", "3", "--resume", "--spatial", "all")
    assert code == 2
    line = error_line(capsys)
    assert str(output / "run.json") in line and "cannot resume with other settings (spatial" in line
    assert not (output / "checkpoints" / "step-000003").exists()


# ------------------------------------------------------------------------------------- entry point


def test_console_script_runs_and_is_registered(console_help):
    # Last in the module: the process started with the module has had the other tests' time to finish.
    stdout, stderr = console_help.communicate(timeout=120)
    assert console_help.returncode == 0, stderr
    assert stdout.startswith("usage: motiontune")
    for command in ("train", "generate", "demo", "tiny-model"):
        assert command in stdout
    scripts = {ep.name: ep.value for ep in importlib_metadata.entry_points(group="console_scripts")}
    assert scripts.get("motiontune") == "motiontune.app.cli:main"


def test_demo_names_a_model_folder_that_is_not_one(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["demo", "--model", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert error_line(capsys).endswith(f"--model {tmp_path / 'empty'}: not a model folder (no model_index.json)")
    assert not (tmp_path / "out").exists()


def test_a_shipped_models_name_is_taken_wherever_a_model_folder_is(tmp_path, capsys, monkeypatch):
    """`--model dit` is the shipped Wan-format DiT: its autoencoder scores one held-out clip of its 17 frames."""
    assert main(["world", "evaluate", "--model", "dit", "--autoencoder", "--prompts", "1", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["clips"] == 1
    assert main(["world", "evaluate", "--model", "dit", "--novel-motions"]) == 2
    assert "--novel-motions scores the autoencoder: give it with --autoencoder" in error_line(capsys)
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--model", "no-such-model", "--prompt", "a red circle", "--output", "v.mp4"]) == 2
    assert "no-such-model: model folder does not exist" in error_line(capsys)
