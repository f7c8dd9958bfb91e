"""Does a rare token in the prompt spoil the look a base model draws?

Generates the bench's prompts (blue/yellow squares, circles and triangles, `motiontune bench shapeworld`) twice on
a base model with no adapter: as the bench asks for them, "a blue square doing sks on a gray background", and the
same looks with a known direction and no token, "a blue square moving left on a gray background". The report gives
colour, shape and appearance (both right) accuracy of each, and how many videos have no object at all. A model
whose text encoder lets an unseen word change the other words' encodings (a random bidirectional UMT5) draws the
wrong shape beside the token; a causal encoder (CLIP) cannot.

    python benchmarks/rare_token_appearance.py --model dit --prompts 16
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import numpy as np

from motiontune.app.api import model_folder, open_backbone
from motiontune.app.bench import bench_prompts
from motiontune.app.bench_common import model_clip
from motiontune.errors import MotiontuneError
from motiontune.generation import GenerationConfig, generate_latents
from motiontune.io.video import frames_to_uint8
from motiontune.lab.evaluation import evaluate_video
from motiontune.lab.shapeworld import KNOWN_DIRECTIONS
from motiontune.lab.tasks import TOKEN


def compare(model: str, prompts: int, steps: int, seed: int) -> dict:
    """Look accuracies of the bench prompts with the token and of the same looks moving in known directions."""
    folder = model_folder(model)
    backbone = open_backbone(folder, "cpu")
    frames, size, guidance = model_clip(folder)
    with_token = bench_prompts(prompts)
    known = [replace(clip, motion=KNOWN_DIRECTIONS[i % len(KNOWN_DIRECTIONS)]) for i, clip in enumerate(with_token)]
    report = {"prompts": prompts}
    for name, clips in (("with token", with_token), ("known direction, no token", known)):
        settings = GenerationConfig(frames, size, size, steps, guidance, seed=seed, progress=False)
        captions = [clip.caption(TOKEN) for clip in clips]
        latents = generate_latents(backbone, captions, [], settings, check_prompts=False)
        results = [
            evaluate_video(frames_to_uint8(video), clip)
            for video, clip in zip(backbone.decode_latents(latents), clips, strict=True)
        ]
        report[name] = {
            "example": captions[0],
            "colour": float(np.mean([r["correct"]["colour"] for r in results])),
            "shape": float(np.mean([r["correct"]["shape"] for r in results])),
            "appearance": float(np.mean([r["correct"]["colour"] and r["correct"]["shape"] for r in results])),
            "no_object": int(sum(r["shape"] is None for r in results)),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dit", help="base model folder, or 'unet3d' / 'dit' (default: dit)")
    parser.add_argument("--prompts", type=int, default=16, help="bench prompts, one video each per phrasing")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    args = parser.parse_args()
    try:
        print(json.dumps(compare(args.model, args.prompts, args.steps, args.seed), indent=2))
    except MotiontuneError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
