"""Check the UNet3D backbone on a full-size ZeroScope UNet (random weights): sites, groups, one forward.

Builds `UNet3DConditionModel` with ZeroScope's configuration, wraps it in our backbone exactly as a
loaded folder would be, and reports attention-site counts, NewMove's trainable parameter count and
the cost of one CPU forward at a small latent size. Weights do not change any of these numbers.

    python benchmarks/zeroscope_groups.py
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel

from motiontune.attention import AttentionController
from motiontune.backbones.base import ModelComponents
from motiontune.backbones.unet3d import UNet3DBackbone
from motiontune.lab.tiny import ZEROSCOPE_SCHEDULER, build_word_tokenizer

ZEROSCOPE_UNET = {
    "block_out_channels": (320, 640, 1280, 1280),
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
}


def millions(count: int) -> str:
    return f"{count / 1e6:.1f} M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2, help="frames of the timed forward")
    parser.add_argument("--latent", type=int, default=16, help="latent height and width of the timed forward")
    args = parser.parse_args()

    started = time.perf_counter()
    unet = UNet3DConditionModel(**ZEROSCOPE_UNET)
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8,
    )
    components = ModelComponents(
        unet,
        vae,
        torch.nn.Identity(),
        build_word_tokenizer(["sks"], 77),
        DDIMScheduler(**ZEROSCOPE_SCHEDULER),
        path=None,
    )
    backbone = UNet3DBackbone(components)
    AttentionController(backbone)
    built = time.perf_counter() - started

    def count(group: str) -> int:
        return sum(unet.get_parameter(name).numel() for name in backbone.parameter_names(group))

    total = sum(p.numel() for p in unet.parameters())
    kinds = {kind: len(backbone.controller.sites_of(kind)) for kind in ("spatial_self", "cross", "temporal")}
    newmove = count("temporal") + count("cross_kv")
    rows = [
        ("UNet parameters", millions(total)),
        (
            "attention sites (spatial self / cross / temporal)",
            f"{kinds['spatial_self']} / {kinds['cross']} / {kinds['temporal']}",
        ),
        ("temporal group (transformer_in + temp_attentions + temp_convs)", millions(count("temporal"))),
        ("cross-attention K/V", millions(count("cross_kv"))),
        ("NewMove trainable (temporal + K/V)", f"{millions(newmove)} ({100 * newmove / total:.1f}%)"),
        ("build time (s)", f"{built:.1f}"),
    ]
    text = torch.randn(1, 77, 1024)
    latents = torch.randn(1, 4, args.frames, args.latent, args.latent)
    with torch.no_grad():
        backbone.predict_noise(latents, torch.tensor(500), text)
        started = time.perf_counter()
        backbone.predict_noise(latents, torch.tensor(500), text)
    rows.append(
        (
            f"CPU forward, {args.frames} frames at {args.latent}x{args.latent} latents (s)",
            f"{time.perf_counter() - started:.2f}",
        )
    )
    print("| what | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
