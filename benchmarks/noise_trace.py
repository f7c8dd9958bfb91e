"""Does the motion follow the prompt or a faint trace of another video left in the starting noise?

A scaled-linear noise schedule (ZeroScope's, beta 0.00085 -> 0.012) keeps sqrt(0.0073) of the clean
latent at its first DDIM step (t = 961 of 25 steps): a model trained on it can learn to read a video's
layout and motion from that trace, and then, started from pure noise, follows whatever the noise
suggests (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Sec. 3.1).

For each ShapeWorld clip of a known direction this encodes the clip, starts sampling from
`sqrt(a) z + sqrt(1 - a) eps` (a = `--trace`, the same for every model) and prompts the *opposite*
direction; it also samples the same prompt from the same pure noise `eps`. It counts how often the
generated motion is the prompt's, the trace's, or something else.

    python benchmarks/noise_trace.py --model DIR --clips 24
"""

from __future__ import annotations

import argparse
import collections
import dataclasses

import torch
from tqdm.auto import tqdm

from motiontune.app.api import open_backbone
from motiontune.errors import MotiontuneError
from motiontune.io.video import frames_to_uint8, uint8_to_frames
from motiontune.lab.evaluation import evaluate_video
from motiontune.lab.shapeworld import KNOWN_MOTIONS, SHAPES, render, sample_clips
from motiontune.sampling import make_scheduler, sample

OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def follow_rates(model: str | None, clips: int, trace: float, steps: int, guidance: float, seed: int) -> dict:
    backbone = open_backbone(model)
    candidates = sample_clips(clips * 3, seed, motions=KNOWN_MOTIONS, shapes=SHAPES)
    chosen = [clip for clip in candidates if clip.motion in OPPOSITE][:clips]
    uncond = backbone.encode_prompt([""])
    counts = {"traced": collections.Counter(), "pure": collections.Counter()}
    for index, clip in enumerate(tqdm(chosen, desc="clips")):
        pixels = uint8_to_frames(render(clip, 8, 32).frames)[None]
        clean = backbone.encode_video(pixels.to(backbone.device, backbone.dtype))
        noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(index)).to(clean)
        wanted = dataclasses.replace(clip, motion=OPPOSITE[clip.motion])
        text = backbone.encode_prompt([wanted.caption()])
        starts = {"traced": trace**0.5 * clean + (1 - trace) ** 0.5 * noise, "pure": noise}
        for name, start in starts.items():
            latents = sample(backbone, start, text, uncond, make_scheduler(backbone), steps, guidance, progress=False)
            motion = evaluate_video(frames_to_uint8(backbone.decode_latents(latents)[0]), wanted)["motion"]
            verdict = "prompt" if motion == wanted.motion else "trace" if motion == clip.motion else "other"
            counts[name][verdict] += 1
    verdicts = ("prompt", "trace", "other")
    return {name: {v: counter[v] / len(chosen) for v in verdicts} for name, counter in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped ShapeWorld model)")
    parser.add_argument("--clips", type=int, default=24, help="clips of known directions to test")
    parser.add_argument("--trace", type=float, default=0.0073, help="alpha_bar of the clip left in the start")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=77, help="seed of the clips")
    args = parser.parse_args()
    if args.clips < 1 or args.steps < 1:
        parser.error(f"--clips and --steps must be at least 1, got {args.clips} and {args.steps}")
    if not 0 <= args.trace < 1:
        parser.error(f"--trace must be in [0, 1), got {args.trace}")
    try:
        rates = follow_rates(args.model, args.clips, args.trace, args.steps, args.guidance, args.seed)
    except MotiontuneError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"| start | follows prompt | follows trace | other |  ({args.clips} clips, trace alpha_bar {args.trace})")
    print("| --- | --- | --- | --- |")
    for name, rate in rates.items():
        print(f"| {name} | {rate['prompt']:.0%} | {rate['trace']:.0%} | {rate['other']:.0%} |")


if __name__ == "__main__":
    main()
