"""What a ShapeWorld base-model recipe costs per training sample on this machine: its autoencoder (per clip of
`vae_frames` frames, or per frame for a per-frame one) and its denoiser (per clip of latents), each forward,
backward and AdamW, median of warm steps, with random weights at the recipe's sizes.

    python benchmarks/world_model_cost.py --config configs/shapeworld-dit.yaml --batch 16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from motiontune.attention import controlled_backbone
from motiontune.lab.worldmodel import BaseModelConfig, untrained_model


def _median_seconds(step, repeats: int) -> float:
    step()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def recipe_cost(config: BaseModelConfig, batch: int, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per training sample of the recipe's autoencoder and denoiser, and their parameter counts."""
    with tempfile.TemporaryDirectory() as folder:
        backbone = controlled_backbone(untrained_model(Path(folder) / "model", config), "cpu")
    vae, denoiser = backbone.vae.train().requires_grad_(True), backbone.denoiser.train().requires_grad_(True)
    size = config.size
    frames = config.vae_frames
    pixels = torch.rand(batch, 3, size, size) if frames == 1 else torch.rand(batch, 3, frames, size, size)
    vae_optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-4)

    def vae_step():
        loss = (vae.decode(vae.encode(pixels * 2 - 1).latent_dist.sample()).sample - pixels).square().mean()
        vae_optimizer.zero_grad()
        loss.backward()
        vae_optimizer.step()

    h, w = backbone.latent_size(size, size)
    latents = torch.randn(batch, backbone.latent_channels, backbone.latent_frames(config.frames), h, w)
    text = backbone.encode_prompt(["a red circle moving left on a white background"] * batch)
    denoiser_optimizer = torch.optim.AdamW(denoiser.parameters(), lr=1e-4)

    def denoiser_step():
        loss = backbone.predict_noise(latents, torch.rand(batch) * 999, text).square().mean()
        denoiser_optimizer.zero_grad()
        loss.backward()
        denoiser_optimizer.step()

    return {
        "autoencoder_ms_per_sample": 1000 * _median_seconds(vae_step, repeats) / batch,
        "denoiser_ms_per_sample": 1000 * _median_seconds(denoiser_step, repeats) / batch,
        "autoencoder_parameters_m": sum(p.numel() for p in vae.parameters()) / 1e6,
        "denoiser_parameters_m": sum(p.numel() for p in denoiser.parameters()) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="recipe YAML (default: the UNet3D recipe's values)")
    parser.add_argument("--batch", type=int, default=16, help="samples per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (after one untimed)")
    args = parser.parse_args()
    config = BaseModelConfig.from_yaml(args.config) if args.config else BaseModelConfig()
    cost = recipe_cost(config, args.batch, args.repeats)
    clip = f"{config.frames} frames of {config.size}x{config.size}"
    print(f"{config.architecture}, {clip}, batch {args.batch}, {torch.get_num_threads()} threads")
    for key, value in cost.items():
        print(f"  {key}: {value:.2f}")


if __name__ == "__main__":
    main()
