"""Training on several processes (DDP over gloo on CPU, as `torchrun` or `accelerate launch` start it): the
processes average their gradients every step, end with the same trained tensors (checked before saving) and
write one adapter and one log; two processes train what one process trains with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

from motiontune.io.adapters import read_metadata
from motiontune.training import micro_batch_seed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train(launcher: list[str], model, data, output, accumulation: int) -> subprocess.CompletedProcess:
    """MotionDirector with its token trained, 3 steps of 1 clip per micro-batch, a checkpoint at the end."""
    command = [*launcher, "-m", "motiontune.app.cli", "train", "--method", "motiondirector", "--model", str(model)]
    command += ["--data", str(data), "--output", str(output), "--token", "sks", "--train-token", "--steps", "3"]
    command += ["--frames", "4", "--height", "32", "--width", "32", "--batch-size", "1", "--checkpoint-every", "3"]
    command += ["--gradient-accumulation", str(accumulation), "--quiet"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    errors = [line for line in done.stderr.splitlines() if "motiontune: error" in line or "Error:" in line]
    assert done.returncode == 0, "\n".join(errors) or done.stderr[-2000:]
    return done


def test_two_processes_train_what_one_process_trains_with_the_same_global_batch(tiny_model_dir, motion_data, tmp_path):
    """2 processes x 1 micro-batch and 1 process x 2 micro-batches draw the same micro-batches (each seeded by its
    index over the run) and average the same gradients ((g0 + g1) / 2 equals g0 / 2 + g1 / 2 exactly in floating
    point): their adapters are identical. The token's
    embedding rows sit outside the denoiser, so they agree across processes only if DDP syncs them too (else the
    run stops with the processes' differing checksums)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    two = _train([*torchrun, "--master_port", str(_free_port())], tiny_model_dir, motion_data, tmp_path / "two", 1)
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
