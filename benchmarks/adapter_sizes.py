"""Adapter sizes of every method at full ZeroScope size (576x320, 24 frames), counted, not estimated.

Builds ZeroScope's `UNet3DConditionModel` on the meta device (no memory, no weights: sizes do not
depend on them), wraps it in our backbone exactly as a loaded folder would be, prepares each method
for training and counts what its adapter file would hold. Motion Inversion is reported in the official
layout (full Motion Value embedding, 10 x 18 positions x 32 frames x 1280 channels per attention) and in
our compact low-rank layout (`--value-rank r`).

    python benchmarks/adapter_sizes.py --output docs/benchmarks.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel

from motiontune.attention import AttentionController
from motiontune.backbones.base import ModelComponents
from motiontune.backbones.unet3d import UNet3DBackbone
from motiontune.lab.tiny import ZEROSCOPE_SCHEDULER, build_word_tokenizer
from motiontune.methods import create_method
from motiontune.utils import atomic_write_text
from zeroscope_groups import ZEROSCOPE_UNET

LATENT_SHAPE = torch.Size([4, 24, 40, 72])  # 24 frames at 320 x 576 pixels
ROWS = [
    ("newmove (temporal + cross K/V, full)", "newmove", {}),
    ("newmove, lora 32", "newmove", {"adapter": "lora"}),
    ("motion-inversion, official layout (QK + full V)", "motion-inversion", {}),
    ("motion-inversion, QK only (camera debias needs no V)", "motion-inversion", {"value": False}),
    ("motion-inversion, V rank 8", "motion-inversion", {"value_rank": 8}),
    ("motion-inversion, V rank 32", "motion-inversion", {"value_rank": 32}),
    ("motionmatcher (LoRA 32)", "motionmatcher", {}),
    ("motiondirector (temporal LoRA 32)", "motiondirector", {}),
    ("motionbooth (full UNet)", "motionbooth", {"class_word": "dog"}),
    ("motionbooth, cross_kv", "motionbooth", {"class_word": "dog", "trained_parameters": "cross_kv"}),
]
BEGIN, END = "<!-- adapter-sizes:begin -->", "<!-- adapter-sizes:end -->"


def meta_backbone() -> UNet3DBackbone:
    """A ZeroScope-size backbone whose tensors live on the meta device."""
    with torch.device("meta"):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET)
        vae = AutoencoderKL(
            block_out_channels=(32,) * 4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=8,
        )
    tokenizer = build_word_tokenizer(["sks", "dog"], 77)
    components = ModelComponents(unet, vae, torch.nn.Identity(), tokenizer, DDIMScheduler(**ZEROSCOPE_SCHEDULER), None)
    backbone = UNet3DBackbone(components)
    AttentionController(backbone)
    return backbone


def adapter_parameters(method: str, options: dict) -> int:
    backbone = meta_backbone()
    token = "sks" if method in ("newmove", "motionbooth") else None
    trainer = create_method(method, backbone, options, token=token)
    trainer.bind_training_shape(LATENT_SHAPE)
    trainer.prepare_for_training()
    return sum(t.numel() for t in trainer.adapter_tensors().values() if t.is_floating_point())


def table() -> str:
    lines = ["| adapter | parameters | MB (fp16) |", "| --- | --- | --- |"]
    for label, method, options in ROWS:
        count = adapter_parameters(method, options)
        lines.append(f"| {label} | {count / 1e6:.2f} M | {count * 2 / 2**20:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None, help="markdown file whose adapter-size section to replace")
    args = parser.parse_args()
    body = table()
    print(body)
    if args.output is not None:
        section = (
            f"{BEGIN}\n## Adapter sizes at ZeroScope size (576x320, 24 frames)\n\n"
            f"`python benchmarks/adapter_sizes.py --output {args.output}`"
            " (counted on a meta-device ZeroScope UNet):\n\n"
            f"{body}{END}"
        )
        text = args.output.read_text() if args.output.exists() else ""
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip() + "\n\n" + section + "\n"
        atomic_write_text(args.output, text)


if __name__ == "__main__":
    main()
