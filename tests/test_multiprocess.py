"""Training on several processes (DDP over gloo on CPU, as `torchrun` or `accelerate launch` start it): the
processes average their gradients every step, end with the same trained tensors (checked before saving) and
write one adapter and one log; two processes train what one process trains with the same global batch, also
with the denoiser sharded across them (`--fsdp`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from motiontune.errors import ConfigError
from motiontune.io.adapters import read_metadata
from motiontune.training import micro_batch_seed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun() -> list[str]:
    """Two processes on this machine (gloo on CPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    return [*command, "--master_port", str(_free_port())]


def _command(launcher, model, data, output, accumulation: int, steps: int = 3, frames: int = 4, extra=()):
    """MotionDirector with its token trained, 1 clip per micro-batch, a checkpoint at the end."""
    command = [*launcher, "-m", "motiontune.app.cli", "train", "--method", "motiondirector", "--model", str(model)]
    command += ["--data", str(data), "--output", str(output), "--token", "sks", "--train-token", "--steps", str(steps)]
    command += ["--frames", str(frames), "--height", "32", "--width", "32", "--batch-size", "1"]
    command += ["--checkpoint-every", str(steps), "--gradient-accumulation", str(accumulation), "--quiet", *extra]
    return command


def _train(launcher, model, data, output, accumulation: int, **options) -> subprocess.CompletedProcess:
    done = subprocess.run(
        _command(launcher, model, data, output, accumulation, **options),
        capture_output=True,
        text=True,
        env=ENVIRONMENT,
        timeout=600,
    )
    errors = [line for line in done.stderr.splitlines() if "motiontune: error" in line or "Error:" in line]
    assert done.returncode == 0, "\n".join(errors) or done.stderr[-2000:]
    return done


def test_two_processes_train_what_one_process_trains_with_the_same_global_batch(tiny_model_dir, motion_data, tmp_path):
    """2 processes x 1 micro-batch and 1 process x 2 micro-batches draw the same micro-batches (each seeded by its
    index over the run) and average the same gradients ((g0 + g1) / 2 equals g0 / 2 + g1 / 2 exactly in floating
    point): their adapters are identical. The token's
    embedding rows sit outside the denoiser, so they agree across processes only if DDP syncs them too (else the
    run stops with the processes' differing checksums)."""
    two = _train(_torchrun(), tiny_model_dir, motion_data, tmp_path / "two", 1)
    training = read_metadata(tmp_path / "two" / "adapter.safetensors")["training"]
    assert training["processes"] == 2 and training["steps"] == 3
    assert len((tmp_path / "two" / "training_log.jsonl").read_text().splitlines()) == 3
    assert two.stdout.count("adapter:") == 1
    saved = load_file(tmp_path / "two" / "checkpoints" / "step-000003" / "optimizer.safetensors")
    assert not any(name.startswith("rng.") for name in saved), "no random state: each micro-batch seeds its own"

    _train([sys.executable], tiny_model_dir, motion_data, tmp_path / "one", 2)
    one, both = (load_file(tmp_path / run / "adapter.safetensors") for run in ("one", "two"))
    assert one.keys() == both.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(both[name], tensor, rtol=0, atol=0, msg=name)
    trained = [tensor for name, tensor in one.items() if "lora_B" in name]
    assert trained and all(tensor.abs().max() > 1e-4 for tensor in trained), "LoRA B starts at zero: it trained"


def test_micro_batch_seeds_depend_on_the_run_seed_and_the_index_only():
    seeds = {micro_batch_seed(seed, index) for seed in range(4) for index in range(64)}
    assert len(seeds) == 4 * 64, "no two micro-batches of neighbouring runs share a stream"
    assert micro_batch_seed(3, 5) == micro_batch_seed(3, 5) and 0 <= micro_batch_seed(3, 5) < 2**63


def test_sharded_training_trains_what_one_process_trains_and_resumes_after_a_kill(tiny_wan_dir, motion_data, tmp_path):
    """`--fsdp` on the tiny Wan (its transformer blocks sharded across 2 processes, FSDP2 over gloo), MotionDirector
    with its token (a trained tensor outside the shards) and a weight average: the adapter equals 1 process x 2
    micro-batches to float rounding, its checkpoint holds full tensors, and a run killed after its first
    checkpoint and resumed ends with the adapter of a run never stopped."""
    options = {"frames": 5, "extra": ("--ema-decay", "0.5")}
    _train([sys.executable], tiny_wan_dir, motion_data, tmp_path / "one", 2, **options)
    _train(
        _torchrun(),
        tiny_wan_dir,
        motion_data,
        tmp_path / "sharded",
        1,
        **{**options, "extra": (*options["extra"], "--fsdp")},
    )
    one, sharded = (load_file(tmp_path / run / "adapter.safetensors") for run in ("one", "sharded"))
    assert one.keys() == sharded.keys()
    for name, tensor in one.items():
        torch.testing.assert_close(sharded[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    saved = load_file(tmp_path / "sharded" / "checkpoints" / "step-000003" / "ema.safetensors")
    assert {name: tensor.shape for name, tensor in saved.items()} == {name: t.shape for name, t in one.items()}

    sharded_options = {"frames": 5, "steps": 30, "extra": ("--ema-decay", "0.5", "--fsdp", "--checkpoint-every", "10")}
    _train(_torchrun(), tiny_wan_dir, motion_data, tmp_path / "straight", 1, **sharded_options)
    stopped = tmp_path / "stopped"
    command = _command(_torchrun(), tiny_wan_dir, motion_data, stopped, 1, **sharded_options)
    run = subprocess.Popen(command, env=ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (stopped / "checkpoints" / "step-000010" / "state.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    subprocess.run(["pkill", "-9", "-f", f"{stopped} --token"], check=False)
    run.wait(60)
    assert not (stopped / "adapter.safetensors").exists(), "killed before it finished"
    _train(
        _torchrun(),
        tiny_wan_dir,
        motion_data,
        stopped,
        1,
        **{**sharded_options, "extra": (*sharded_options["extra"], "--resume")},
    )
    straight, resumed = (load_file(tmp_path / run / "adapter.safetensors") for run in ("straight", "stopped"))
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_sharding_refusals_are_one_line(tiny_model_dir, motion_data, tmp_path, capsys):
    from motiontune.app.cli import main
    from motiontune.training import TrainConfig

    command = _command([], tiny_model_dir, motion_data, tmp_path / "run", 1, extra=("--fsdp",))[2:]
    assert main(command) == 2
    assert "--fsdp shards the model across processes: launch 2 or more" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--fsdp with --validate-every"):
        TrainConfig(tmp_path, fsdp=True, validate_every=5)


def test_motionmatchers_feature_loss_says_why_it_cannot_train_sharded(unet3d_backbone):
    from motiontune.methods import method_class

    cls = method_class("motionmatcher")
    feature = cls(unet3d_backbone, cls.config_from_dict({}), token="sks")
    assert "stop the denoiser after its middle block" in feature.sharding_obstacle()
    assert cls(unet3d_backbone, cls.config_from_dict({"loss": "pixel"}), token="sks").sharding_obstacle() is None
