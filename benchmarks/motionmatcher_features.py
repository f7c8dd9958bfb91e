"""Can MotionMatcher's motion features tell a novel motion from its nearest known one?

MotionMatcher's loss (Wu et al. 2025) is the MSE between the frozen model's attention maps (cross-attention
M_CA and temporal self-attention M_TSA, head-averaged, at one down-path level) of two noisy videos at the same
timestep. It can only teach a motion if those maps differ more between two motions than between two noise
draws of one video. For each ShapeWorld clip of a novel motion this renders the same clip with the nearest
known motion (same object, start and background), noises both with one noise draw at timestep t, and reports

    signal = L_mot(M(motion_t), M(known_t))        noise = L_mot(M(motion_t), M(motion_t'))

(t' another noise draw) per feature level and timestep, with lambda_CA = lambda_TSA = 2000 as in the method.
signal / noise < 1 means the loss at that level and timestep sees the noise more than the motion.

    python benchmarks/motionmatcher_features.py --clips 8
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from motiontune.app.api import open_backbone
from motiontune.errors import MotiontuneError
from motiontune.io.video import uint8_to_frames
from motiontune.lab.shapeworld import NOVEL_MOTIONS, render, sample_clips
from motiontune.methods import create_method

NEAREST_KNOWN = {"zigzag": "right", "orbit": "static", "bounce": "up", "diagonal": "right"}


def sensitivity(model: str | None, clips: int, timesteps: list[int], seed: int) -> list[dict]:
    """Mean signal and noise of L_mot per (level, timestep) over `clips` clips of every novel motion."""
    backbone = open_backbone(model)
    levels = sorted({s.level for s in backbone.sites if s.block == "down" and s.kind == "cross"})
    matchers = {}
    for level in levels:
        matcher = create_method("motionmatcher", backbone, {"feature_level": level})
        matcher.prepare_for_training()
        matchers[matcher.feature_level] = matcher
    scheduler = matchers[levels[0]].scheduler
    chosen = sample_clips(clips, seed, motions=NOVEL_MOTIONS)
    sums: dict[tuple[int, int], list[float]] = {}
    for index, clip in enumerate(chosen):
        known = dataclasses.replace(clip, motion=NEAREST_KNOWN[clip.motion])
        videos = [uint8_to_frames(render(c, 8, 32).frames)[None] for c in (clip, known)]
        latents = [backbone.encode_video(v.to(backbone.device, backbone.dtype)) for v in videos]
        text = backbone.encode_prompt([clip.caption("sks")])
        generator = torch.Generator().manual_seed(seed + index)
        first, second = (torch.randn(latents[0].shape, generator=generator).to(latents[0]) for _ in range(2))
        for t in timesteps:
            step = torch.tensor([t])
            noisy = scheduler.add_noise(latents[0], first, step)
            other_motion = scheduler.add_noise(latents[1], first, step)
            other_noise = scheduler.add_noise(latents[0], second, step)
            for level, matcher in matchers.items():
                with torch.no_grad():
                    signal = matcher.feature_loss(noisy, other_motion, step, text)
                    noise = matcher.feature_loss(noisy, other_noise, step, text)
                total = sums.setdefault((level, t), [0.0, 0.0])
                total[0] += float(signal) / len(chosen)
                total[1] += float(noise) / len(chosen)
    return [
        {"level": level, "timestep": t, "signal": signal, "noise": noise, "ratio": signal / max(noise, 1e-20)}
        for (level, t), (signal, noise) in sorted(sums.items())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped ShapeWorld model)")
    parser.add_argument("--clips", type=int, default=8, help="clips of novel motions")
    parser.add_argument("--timesteps", default="100,300,500,700,900", help="comma list of timesteps")
    parser.add_argument("--seed", type=int, default=5, help="seed of the clips and noise")
    args = parser.parse_args()
    try:
        timesteps = [int(t) for t in args.timesteps.split(",")]
    except ValueError:
        parser.error(f"--timesteps must be a comma list of integers, got '{args.timesteps}'")
    if args.clips < 1 or not all(0 <= t < 1000 for t in timesteps):
        parser.error("--clips must be at least 1 and every timestep in [0, 1000)")
    try:
        rows = sensitivity(args.model, args.clips, timesteps, args.seed)
    except MotiontuneError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    header = "| level | timestep | signal (other motion) | noise (other noise draw) | signal / noise |"
    print(f"{header}  ({args.clips} clips)")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['level']} | {row['timestep']} | {row['signal']:.3g} | {row['noise']:.3g} | {row['ratio']:.2f} |")


if __name__ == "__main__":
    main()
