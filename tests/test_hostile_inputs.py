"""Hostile and unusual inputs against `motiontune train` and `generate`: each case gives one `motiontune: error:`
line naming the input and the problem, exit code 2, no traceback and nothing half-written (issue #15). The
adapter-file cases live in test_adapter_trust.py; the kill -9 cases at the end of this file."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cli_helpers import error_line, write_clip
from motiontune.app.cli import main
from motiontune.io.video import write_video

TINY = ["--frames", "4", "--height", "32", "--width", "32", "--quiet"]
PROMPT = "a blue square doing sks"
pytestmark = pytest.mark.usefixtures("single_thread")


def train(model: Path, data: Path, output: Path, *extra: str) -> int:
    arguments = ["train", "--model", str(model), "--data", str(data), "--token", "sks", "--steps", "2", *TINY]
    return main([*arguments, "--output", str(output), *extra])


def generate(model: Path, output: Path, *extra: str, prompt: str = PROMPT) -> int:
    arguments = ["generate", "--model", str(model), "--prompt", prompt, "--steps", "2", *TINY]
    return main([*arguments, "--output", str(output), *extra])


# --------------------------------------------------------------------------------------------- train inputs


def _metadata(tmp_path: Path, row: str) -> Path:
    write_clip(tmp_path / "elsewhere", "clip", "a square doing sks")
    data = tmp_path / "data"
    data.mkdir()
    (data / "metadata.csv").write_text(f"video_path,caption\n{row},a square doing sks\n")
    return data


def _fifo_row(tmp_path: Path) -> tuple[Path, list[str], str]:
    data = _metadata(tmp_path, "pipe.mp4")
    os.mkfifo(data / "pipe.mp4")
    return data, [], "pipe.mp4 is not a regular file"


def _outside_row(tmp_path: Path) -> tuple[Path, list[str], str]:
    return _metadata(tmp_path, "../../../../etc/passwd"), [], "outside the dataset folder"


def _device_row(tmp_path: Path) -> tuple[Path, list[str], str]:
    return _metadata(tmp_path, "/dev/zero"), [], "outside the dataset folder"


def _truncated_video(tmp_path: Path) -> tuple[Path, list[str], str]:
    data = tmp_path / "data"
    video = write_clip(data, "clip", "a square doing sks", frames=16)
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    return data, [], "clip.mp4: "


def _dot_video(tmp_path: Path) -> tuple[Path, list[str], str]:
    data = tmp_path / "data"
    data.mkdir()
    write_video(np.zeros((10, 1, 1, 3), np.uint8), data / "dot.gif")
    (data / "dot.txt").write_text("a dot doing sks")
    return data, [], "1x1 pixels, too small to train on"


def _token_past_the_encoder(tmp_path: Path) -> tuple[Path, list[str], str]:
    data = tmp_path / "data"
    write_clip(data, "clip", "a square " + "very " * 100 + "slowly doing sks")
    return data, [], "past the text encoder's length"


def _option(*flags: str, expected: str):
    def case(tmp_path: Path) -> tuple[None, list[str], str]:
        return None, list(flags), expected

    case.__name__ = "_".join(flags)
    return case


def _output_under_a_file(tmp_path: Path) -> tuple[None, list[str], str]:
    (tmp_path / "afile").write_text("user data")
    return None, ["--output", str(tmp_path / "afile" / "run")], "is a file, not a folder"


def _output_is_a_file(tmp_path: Path) -> tuple[None, list[str], str]:
    (tmp_path / "afile").write_text("user data")
    return None, ["--output", str(tmp_path / "afile")], "is a file, not a folder"


TRAIN_CASES = [
    _fifo_row,
    _outside_row,
    _device_row,
    _truncated_video,
    _dot_video,
    _token_past_the_encoder,
    _option("--lr", "inf", expected="argument --lr: must be a finite number, got inf"),
    _option("--lr", "nan", expected="argument --lr: must be a finite number, got nan"),
    _option("--max-grad-norm", "nan", expected="argument --max-grad-norm: must be a finite number"),
    _option("--ema-decay", "nan", expected="argument --ema-decay: must be a finite number"),
    _option("--seed", "100000000000000000000000", expected="argument --seed: must be an integer from 0 to 2**63 - 1"),
    _option("--seed", "1e23", expected="argument --seed: must be an integer from 0 to 2**63 - 1, got 1e23"),
    _option("--resume", "--overwrite", expected="--resume and --overwrite contradict each other"),
    _output_under_a_file,
    _output_is_a_file,
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda case: case.__name__.strip("_"))
def test_bad_training_input_is_one_line_and_writes_nothing(case, tiny_model_dir, motion_data, tmp_path, capsys):
    data, extra, expected = case(tmp_path)
    output = tmp_path / "run"
    before = sorted(tmp_path.rglob("*"))
    arguments = [*extra] if "--output" in extra else ["--output", str(output), *extra]
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(data or motion_data), *TINY, *arguments])
    assert code == 2
    line = error_line(capsys)
    assert expected in line, line
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_read_only_output_folder_is_refused_before_training(tiny_model_dir, motion_data, tmp_path, capsys, monkeypatch):
    import motiontune.utils

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # root may write anywhere: the folder is read-only as the permission check reports it
    monkeypatch.setattr(
        motiontune.utils.os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode)
    )
    assert train(tiny_model_dir, motion_data, locked / "run") == 2
    assert f"folder {locked} is not writable" in error_line(capsys)
    assert list(locked.iterdir()) == []


def test_long_caption_is_reported_not_cut_silently(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    write_clip(data, "clip", "a square doing sks " + "and more words " * 40)
    assert train(tiny_model_dir, data, tmp_path / "run", "--steps", "1") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("motiontune: warning:")]
    assert len(warnings) == 1 and "clip.mp4: caption is longer than the text encoder reads" in warnings[0]


def test_a_mistyped_local_model_is_missing_and_never_looked_up_online(motion_data, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    lookups = []

    def snapshot_download(name, local_files_only=False, **_):
        lookups.append(local_files_only)
        raise FileNotFoundError(name)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert (
        main(["generate", "--model", "models/zeroscpe", "--prompt", "a cat", "--output", str(tmp_path / "v.mp4")]) == 2
    )
    line = error_line(capsys)
    assert "models/zeroscpe: model folder does not exist" in line and "hf:models/zeroscpe" in line
    assert lookups == [True]  # the local cache only


# ------------------------------------------------------------------------------------------ generate inputs


def _script(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "script.json"
    path.write_text(text)
    return path


GENERATE_CASES = {
    "guidance nan": (lambda tmp: ["--guidance-scale", "nan"], "argument --guidance-scale: must be a finite number"),
    "box strength nan": (lambda tmp: ["--box-strength", "nan"], "argument --box-strength: must be a finite number"),
    "noise prior 2": (lambda tmp: ["--noise-prior", "2"], "--noise-prior must be in [0, 1], got 2.0"),
    "fps 100000": (lambda tmp: ["--fps", "100000"], "--fps must be from 1 to 100"),
    "blank prompt": (lambda tmp: ["--prompt", " \t "], "--prompt is empty"),
    "output is a folder": (
        lambda tmp: ((tmp / "dir.mp4").mkdir(), ["--output", str(tmp / "dir.mp4")])[1],
        "dir.mp4: is a folder",
    ),
    "output under a file": (
        lambda tmp: ((tmp / "afile").write_text("mine"), ["--output", str(tmp / "afile" / "v.mp4")])[1],
        "afile: is a file, not a folder",
    ),
    "config FIFO": (
        lambda tmp: (os.mkfifo(tmp / "c.yaml"), ["--config", str(tmp / "c.yaml")])[1],
        "c.yaml: config file is not a regular file",
    ),
    "reference FIFO": (
        lambda tmp: (os.mkfifo(tmp / "ref.mp4"), ["--reference", str(tmp / "ref.mp4"), "--noise-prior", "0.5"])[1],
        "ref.mp4 is not a regular file (a FIFO, socket or device)",
    ),
    "script FIFO": (
        lambda tmp: (os.mkfifo(tmp / "s.json"), ["--script", str(tmp / "s.json")])[1],
        "s.json: script file is not a regular file",
    ),
    "script nested deep": (
        lambda tmp: ["--script", str(_script(tmp, "[" * 100_000 + "]" * 100_000))],
        "script.json: JSON nested too deeply",
    ),
}


@pytest.mark.parametrize("name", GENERATE_CASES)
def test_bad_generation_input_is_one_line_and_writes_nothing(name, tiny_model_dir, tmp_path, capsys):
    make, expected = GENERATE_CASES[name]
    extra = make(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    output = tmp_path / "videos" / "v.mp4"
    assert generate(tiny_model_dir, output, *extra) == 2
    line = error_line(capsys)
    assert expected in line, line
    assert sorted(tmp_path.rglob("*")) == before


def test_the_reference_may_be_a_folder_of_frames_but_not_a_fifo(tiny_model_dir, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * index, np.uint8)).save(frames / f"{index}.png")
    assert generate(tiny_model_dir, tmp_path / "v.mp4", "--reference", str(frames), "--noise-prior", "0.5") == 0
    os.mkfifo(tmp_path / "ref.mp4")
    capsys.readouterr()
    assert generate(tiny_model_dir, tmp_path / "w.mp4", "--reference", str(tmp_path / "ref.mp4")) == 2
    assert error_line(capsys).startswith(f"motiontune: error: --reference: {tmp_path / 'ref.mp4'} is not a regular")


def test_outputs_are_checked_before_sampling_and_never_replaced_without_overwrite(tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "v.mp4"
    (tmp_path / "v.gif").mkdir()
    assert generate(tiny_model_dir, output) == 2
    assert f"--output {tmp_path / 'v.gif'}: is a folder" in error_line(capsys)
    assert not output.exists()
    (tmp_path / "v.gif").rmdir()
    assert generate(tiny_model_dir, output) == 0
    first = output.read_bytes()
    capsys.readouterr()
    assert generate(tiny_model_dir, output, "--seed", "1") == 2
    assert "v.mp4: already exists; pass --overwrite to replace it" in error_line(capsys)
    assert output.read_bytes() == first
    assert generate(tiny_model_dir, output, "--seed", "1", "--overwrite") == 0
    assert output.read_bytes() != first


def test_long_prompt_is_reported(tiny_model_dir, tmp_path, capsys):
    assert generate(tiny_model_dir, tmp_path / "v.mp4", prompt="a blue square " + "moving " * 100) == 0
    err = capsys.readouterr().err
    assert "motiontune: warning: prompt is longer than the text encoder reads" in err


# -------------------------------------------------------------------------------------- runs and checkpoints


def _straight(tiny_model_dir, motion_data, tmp_path_factory) -> dict[str, torch.Tensor]:
    output = tmp_path_factory.mktemp("straight") / "run"
    assert train(tiny_model_dir, motion_data, output, "--steps", "4", "--checkpoint-every", "1") == 0
    return load_file(str(output / "adapter.safetensors"))


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, motion_data, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted 4-step run every resumed run must reproduce bit for bit."""
    return _straight(tiny_model_dir, motion_data, tmp_path_factory)


def assert_same(adapter: Path, expected: dict[str, torch.Tensor]) -> None:
    actual = load_file(str(adapter))
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


def _interrupted(tiny_model_dir, motion_data, output: Path) -> None:
    """A run stopped after step 3 of 4: its checkpoints 2 and 3, and no adapter."""
    assert train(tiny_model_dir, motion_data, output, "--steps", "3", "--checkpoint-every", "1") == 0
    (output / "adapter.safetensors").unlink()


def test_resume_refuses_a_finished_run(tiny_model_dir, motion_data, tmp_path, capsys):
    output = tmp_path / "run"
    assert train(tiny_model_dir, motion_data, output, "--checkpoint-every", "100") == 0
    adapter = (output / "adapter.safetensors").read_bytes()
    capsys.readouterr()
    assert train(tiny_model_dir, motion_data, output, "--resume", "--seed", "3") == 2
    assert "the run is finished (adapter.safetensors is written)" in error_line(capsys)
    assert (output / "adapter.safetensors").read_bytes() == adapter


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--seed", "1"], "seed 0 -> 1"),
        (["--lr", "0.5"], "learning_rate"),
        (["--frames", "2"], "frames 4 -> 2"),
        (["--spatial", "all"], "spatial "),
        (["--data", "OTHER"], "data changed"),
        (["--model", "OTHER"], "model changed"),
        (["--height", "64", "--width", "64"], "height 32 -> 64"),
    ],
)
def test_resume_refuses_other_settings(change, named, tiny_model_dir, motion_data, tmp_path, capsys):
    output = tmp_path / "run"
    _interrupted(tiny_model_dir, motion_data, output)
    if change == ["--data", "OTHER"]:
        other = tmp_path / "other"
        shutil.copytree(motion_data, other)
        next(other.glob("*.txt")).write_text("a circle doing sks")
        change = ["--data", str(other)]
    if change == ["--model", "OTHER"]:
        from motiontune.lab.tiny import build_tiny_model

        change = ["--model", str(build_tiny_model(tmp_path / "other-model", seed=1))]
    capsys.readouterr()
    assert train(tiny_model_dir, motion_data, output, "--steps", "4", "--resume", *change) == 2
    line = error_line(capsys)
    assert f"{output / 'run.json'}: cannot resume with other settings" in line and named in line, line
    assert not (output / "adapter.safetensors").exists()


@pytest.mark.parametrize("damage", ["state.json", "optimizer truncated", "optimizer missing", "adapter nan"])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(
    damage, tiny_model_dir, motion_data, straight_run, tmp_path, capsys
):
    output = tmp_path / "run"
    _interrupted(tiny_model_dir, motion_data, output)
    newest = output / "checkpoints" / "step-000003"
    if damage == "state.json":
        (newest / "state.json").write_text("{not json")
    elif damage == "optimizer truncated":
        optimizer = newest / "optimizer.safetensors"
        optimizer.write_bytes(optimizer.read_bytes()[:100])
    elif damage == "optimizer missing":
        (newest / "optimizer.safetensors").unlink()
    else:
        from motiontune.io.adapters import read_adapter, save_adapter

        tensors, metadata = read_adapter(newest / "adapter.safetensors")
        key = next(iter(tensors))
        tensors[key] = torch.full_like(tensors[key], float("nan"))
        save_adapter(newest / "adapter.safetensors", tensors, metadata)
    capsys.readouterr()
    assert train(tiny_model_dir, motion_data, output, "--steps", "4", "--checkpoint-every", "1", "--resume") == 0
    err = capsys.readouterr().err
    assert f"{newest}: damaged checkpoint" in err and "resuming from" in err and "step-000002" in err
    assert_same(output / "adapter.safetensors", straight_run)


def test_no_intact_checkpoint_is_an_error(tiny_model_dir, motion_data, tmp_path, capsys):
    output = tmp_path / "run"
    _interrupted(tiny_model_dir, motion_data, output)
    for state in (output / "checkpoints").glob("step-*/state.json"):
        state.write_text("[]")
    capsys.readouterr()
    assert train(tiny_model_dir, motion_data, output, "--steps", "4", "--resume") == 2
    assert "no intact checkpoint to resume from; pass --overwrite to start over" in capsys.readouterr().err


def test_a_damaged_cache_entry_is_rebuilt(tiny_model_dir, motion_data, straight_run, tmp_path, capsys):
    first = tmp_path / "first"
    assert train(tiny_model_dir, motion_data, first, "--steps", "1") == 0
    entries = sorted((first / "cache").glob("*.safetensors"))
    entries[0].write_bytes(b"garbage")
    output = tmp_path / "run"
    capsys.readouterr()
    arguments = ["--steps", "4", "--checkpoint-every", "1", "--cache-dir", str(first / "cache")]
    assert train(tiny_model_dir, motion_data, output, *arguments) == 0
    assert f"{entries[0]}: damaged latent cache entry" in capsys.readouterr().err
    assert_same(output / "adapter.safetensors", straight_run)
    assert load_file(str(entries[0]))["latents"].ndim == 4


def test_overwrite_removes_only_what_motiontune_wrote(tiny_model_dir, motion_data, tmp_path):
    output = tmp_path / "run"
    assert train(tiny_model_dir, motion_data, output, "--checkpoint-every", "1") == 0
    notes = [output / "notes.txt", output / "checkpoints" / "notes.txt", output / "checkpoints" / "step-best"]
    for path in notes:
        path.write_text("mine")
    staging = output / "checkpoints" / ".step-000009.abc"
    staging.mkdir()
    assert train(tiny_model_dir, motion_data, output, "--steps", "1", "--overwrite", "--checkpoint-every", "1") == 0
    assert all(path.read_text() == "mine" for path in notes)
    assert sorted(p.name for p in (output / "checkpoints").glob("step-0*")) == ["step-000001"]
    assert not staging.exists()
    assert len((output / "training_log.jsonl").read_text().splitlines()) == 1


def test_divergence_stops_keeps_the_last_good_checkpoint_and_writes_no_adapter(
    tiny_model_dir, motion_data, tmp_path, capsys, monkeypatch
):
    from motiontune.methods.newmove import NewMove

    loss, calls = NewMove.loss, []

    def diverging(self, batch, generator):
        calls.append(1)
        value = loss(self, batch, generator)
        return value * float("nan") if len(calls) >= 3 else value

    monkeypatch.setattr(NewMove, "loss", diverging)
    output = tmp_path / "run"
    assert train(tiny_model_dir, motion_data, output, "--steps", "4", "--checkpoint-every", "1") == 2
    line = error_line(capsys)
    assert "training diverged at step 3 (loss nan)" in line
    assert f"the last good checkpoint {output / 'checkpoints' / 'step-000002'} is kept" in line
    assert not (output / "adapter.safetensors").exists()
    log = (output / "training_log.jsonl").read_text().splitlines()
    assert [json.loads(entry)["step"] for entry in log] == [1, 2]  # valid JSON lines, no NaN


def test_out_of_memory_leaves_nothing_behind(tiny_model_dir, motion_data, tmp_path, capsys, monkeypatch):
    import motiontune.training

    def out_of_memory(*_, **__):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 256.00 GiB")

    monkeypatch.setattr(motiontune.training, "train", out_of_memory)
    output = tmp_path / "run"
    assert train(tiny_model_dir, motion_data, output, "--batch-size", "1000000") == 2
    assert "out of memory training 2 steps of batch size 1000000" in error_line(capsys)
    assert not output.exists()


# ------------------------------------------------------------------------------------------------ kill -9

KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import motiontune.training as training
    from motiontune.app.cli import main

    where, count = sys.argv[1], int(sys.argv[2])
    calls = 0

    def killing(original, counted=lambda *args: True):
        def wrapped(*args, **kwargs):
            global calls
            calls += counted(*args)
            if calls == count:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)
        return wrapped

    if where == "step":
        training._draw_batch = killing(training._draw_batch)
    else:  # inside a checkpoint write: between its adapter and its optimizer state
        optimizer_state = lambda tensors, path, *rest: path.name == "optimizer.safetensors"
        training.atomic_save_tensors = killing(training.atomic_save_tensors, optimizer_state)
    main(sys.argv[3:])
    """
)


@pytest.mark.parametrize("where", ["step", "checkpoint"])
def test_kill_9_then_resume_gives_the_same_adapter(where, tiny_model_dir, motion_data, straight_run, tmp_path):
    count = random.Random(f"kill-{where}").randint(1, 3)  # a step of 1-3, or the optimizer write of checkpoint 1-3
    output = tmp_path / "run"
    arguments = ["train", "--model", str(tiny_model_dir), "--data", str(motion_data), "--token", "sks", *TINY]
    arguments += ["--steps", "4", "--checkpoint-every", "1", "--output", str(output)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, where, str(count), *arguments], env=environment, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert not (output / "adapter.safetensors").exists()
    if where == "checkpoint":
        assert list((output / "checkpoints").glob(".step-*"))  # the half-written checkpoint's staging folder
    assert main([*arguments, "--resume"]) == 0
    assert_same(output / "adapter.safetensors", straight_run)
    assert not list((output / "checkpoints").glob(".step-*"))
