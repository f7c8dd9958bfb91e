"""Does diffusers' own `WanPipeline` sample the ShapeWorld DiT as motiontune does?

Loads a Wan-format ShapeWorld model folder with `diffusers.WanPipeline.from_pretrained` (nothing of motiontune
in the loop), samples held-out prompts of `motiontune world evaluate` (known motions and shapes) at the
folder's scheduler (UniPC on flow sigmas), and scores each video with the analytic metrics. For each prompt,
motiontune's own sampler runs from the same initial noise; the report gives both accuracies and the largest
difference between the two decoded videos.

    python benchmarks/wan_pipeline_samples.py --model DIR --prompts 16 --sheet wan-pipeline.png
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from tqdm.auto import tqdm

from motiontune.app.api import model_folder, open_backbone
from motiontune.errors import MotiontuneError
from motiontune.generation import GenerationConfig, generate_latents, initial_latents
from motiontune.io.video import frames_to_uint8, write_contact_sheet
from motiontune.lab.evaluation import evaluate_video
from motiontune.lab.shapeworld import KNOWN_MOTIONS, SHAPES, sample_clips
from motiontune.lab.worldmodel import native_clip

ATTRIBUTES = ("colour", "shape", "background", "motion")


def compare(model: str, prompts: int, steps: int, guidance: float, seed: int, sheet: str | None) -> dict:
    """Accuracies of `WanPipeline`'s and motiontune's videos of the same prompts and noise, and their difference."""
    from diffusers import WanPipeline

    folder = model_folder(model)
    pipe = WanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    backbone = open_backbone(folder, "cpu")
    frames, size = native_clip(folder)
    clips = sample_clips(prompts, seed, motions=KNOWN_MOTIONS, shapes=SHAPES)
    scores = {"diffusers": {a: [] for a in ATTRIBUTES}, "motiontune": {a: [] for a in ATTRIBUTES}}
    differences, rows, labels = [], [], []
    for index, clip in enumerate(tqdm(clips, desc="sampling")):
        settings = GenerationConfig(frames, size, size, steps, guidance, seed=index, progress=False)
        ours = frames_to_uint8(backbone.decode_latents(generate_latents(backbone, [clip.caption()], [], settings))[0])
        noise = initial_latents(backbone, 1, settings)  # the noise motiontune's sampler started from
        theirs = pipe(
            clip.caption(),
            negative_prompt="",
            num_frames=frames,
            height=size,
            width=size,
            num_inference_steps=steps,
            guidance_scale=guidance,
            latents=noise,
            max_sequence_length=backbone.tokenizer.model_max_length,
            output_type="np",
        ).frames[0]
        theirs = (np.clip(theirs, 0, 1) * 255).round().astype(np.uint8)
        differences.append(int(np.abs(theirs.astype(int) - ours.astype(int)).max()))
        for name, video in (("diffusers", theirs), ("motiontune", ours)):
            correct = evaluate_video(video, clip)["correct"]
            for attribute in ATTRIBUTES:
                scores[name][attribute].append(bool(correct[attribute]))
        if len(rows) < 16:
            rows += [theirs, ours]
            labels += [f"WanPipeline: {clip.caption()}", "motiontune, same noise"]
    if sheet:
        write_contact_sheet(rows, sheet, labels=labels)
    return {
        "prompts": prompts,
        "accuracy": {name: {a: float(np.mean(v)) for a, v in values.items()} for name, values in scores.items()},
        "largest_pixel_difference": max(differences),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="dit", help="Wan-format ShapeWorld model folder (default: the shipped DiT)")
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts, one video each")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the prompts (world evaluate's)")
    parser.add_argument("--sheet", default=None, help="PNG contact sheet: each WanPipeline video above motiontune's")
    args = parser.parse_args()
    try:
        print(json.dumps(compare(args.model, args.prompts, args.steps, args.guidance_scale, args.seed, args.sheet)))
    except MotiontuneError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
