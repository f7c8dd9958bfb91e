"""Training on several processes (DDP over gloo on CPU, as `torchrun` or `accelerate launch` start it): the
processes average their gradients every step, end with the same trained tensors (checked before saving) and
write one adapter and one log; a checkpoint keeps each process's random states."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from motiontune.io.adapters import read_metadata


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_train_one_adapter_and_agree(tiny_model_dir, motion_data, tmp_path):
    """MotionDirector with its token trained: the token's embedding rows sit outside the denoiser, so they agree
    across processes only if DDP syncs them too (else the run stops with the processes' differing checksums)."""
    output = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    command += ["-m", "motiontune.app.cli", "train", "--method", "motiondirector", "--model", str(tiny_model_dir)]
    command += ["--data", str(motion_data), "--output", str(output), "--token", "sks", "--train-token"]
    command += [
        "--steps",
        "3",
        "--frames",
        "4",
        "--height",
        "32",
        "--width",
        "32",
        "--checkpoint-every",
        "3",
        "--quiet",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    errors = [line for line in done.stderr.splitlines() if "motiontune: error" in line or "Error:" in line]
    assert done.returncode == 0, "\n".join(errors) or done.stderr[-2000:]
    training = read_metadata(output / "adapter.safetensors")["training"]
    assert training["processes"] == 2 and training["steps"] == 3
    assert len((output / "training_log.jsonl").read_text().splitlines()) == 3
    assert done.stdout.count("adapter:") == 1
    saved = load_file(output / "checkpoints" / "step-000003" / "optimizer.safetensors")
    generators, torches = saved["rng.generator"], saved["rng.torch"]
    assert generators.shape[0] == torches.shape[0] == 2, "a checkpoint keeps every process's random states"
    assert not torch.equal(generators[0], generators[1]) and not torch.equal(torches[0], torches[1])
