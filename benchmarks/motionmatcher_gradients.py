"""How large are MotionMatcher's gradients, next to AdamW's epsilon?

Adam's step for one weight is lr * m / (sqrt(v) + eps): scale-free while |g| >> eps, damped to lr * |g| / eps
when |g| falls under eps (1e-8 in PyTorch and in the official code). MotionMatcher's feature loss (an MSE
between attention maps, weighted by lambda = 2000) is small on a small model, so this measures, for one batch
of the novel motion's clips and one LoRA at its first steps (its up factors moved off zero), the LoRA
gradients of the feature loss at lambda and at 1000 x lambda and of the pixel loss (the plain denoising MSE)
on the same LoRA: the share of gradient elements under eps says how much of the LoRA Adam hardly moves.

    python benchmarks/motionmatcher_gradients.py --motion zigzag
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from motiontune.app.api import open_backbone
from motiontune.errors import MotiontuneError
from motiontune.io.data import VideoDataset, find_video_items
from motiontune.lab.shapeworld import NOVEL_MOTIONS, sample_clips, write_dataset
from motiontune.methods import create_method
from motiontune.training import _draw_batch, prepare_examples

ADAM_EPSILON = 1e-8
VARIANTS = {
    "feature loss, lambda 2000": {"loss": "feature"},
    "feature loss, lambda 2e6": {"loss": "feature", "cross_attention_weight": 2e6, "temporal_attention_weight": 2e6},
    "pixel loss": {"loss": "pixel"},
}


def gradient_scales(model: str | None, motion: str, clips: int, lora_layers: str, seed: int) -> list[dict]:
    """Loss and LoRA-gradient statistics of each variant on one batch of `clips` clips of `motion`."""
    folder = Path(tempfile.mkdtemp())
    rendered = sample_clips(clips, seed, motions=(motion,), shapes=("circle", "triangle"), colours=("red", "green"))
    data = write_dataset(folder / "reference", rendered, 8, 32, token="sks")
    rows = []
    for name, options in VARIANTS.items():
        torch.manual_seed(seed)
        backbone = open_backbone(model, "cpu")
        examples = prepare_examples(backbone, VideoDataset(find_video_items(data), 8, 32, 32), "target", progress=False)
        method = create_method(
            "motionmatcher",
            backbone,
            {**options, "lora_layers": lora_layers, "lora_dropout": 0.0, "min_timestep": 200},
            token="sks",
        )
        method.prepare_for_training()
        parameters = method.trainable_parameters()
        with torch.no_grad():
            for parameter_name, parameter in backbone.denoiser.named_parameters():
                if ".lora_B." in parameter_name:
                    parameter.normal_(0, 1e-3)
        generator = torch.Generator().manual_seed(seed)
        loss = method.loss(_draw_batch(examples, clips, generator, "cpu", method), generator)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in parameters if p.grad is not None]).abs()
        rows.append(
            {
                "variant": name,
                "loss": loss.item(),
                "median |g|": grads.median().item(),
                "mean |g|": grads.mean().item(),
                "max |g|": grads.max().item(),
                "share |g| < eps": (grads < ADAM_EPSILON).float().mean().item(),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    for row in rows:
        cells = [row["variant"], *(f"{row[key]:.2e}" for key in keys[1:-1]), f"{row[keys[-1]]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--motion", default="zigzag", choices=NOVEL_MOTIONS, help="novel motion of the clips")
    parser.add_argument("--clips", type=int, default=8, help="clips in the batch")
    parser.add_argument(
        "--lora-layers", default="temporal", choices=("temporal", "spatial_self,temporal"), help="LoRA placement"
    )
    parser.add_argument("--seed", type=int, default=0, help="clip, noise and timestep seed")
    args = parser.parse_args(argv)
    try:
        print(markdown(gradient_scales(args.model, args.motion, args.clips, args.lora_layers, args.seed)))
    except MotiontuneError as error:
        parser.exit(2, f"motionmatcher_gradients: error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
