"""Does a box edit move the object, or only change what is drawn where the noise put it?

MotionBooth's box control (Wu et al. 2024, Eq. 6-7) edits the cross-attention of the subject words:
amplified inside the box, `-inf` outside it. In a causal text encoder (CLIP's, and the ShapeWorld
model's) every token after the subject words also carries them, so content about the subject can
still reach every position through those tokens. This runs the box requests of
`motiontune bench motionbooth` with edits of growing reach, from the same noise as an unedited video:

* `official`: the default control (subject words; other prompt words suppressed everywhere);
* `keep other words`: the subject words only;
* `subject + end tokens`: the end and padding tokens (a causal encoder's summary of the prompt) are
  edited as subject tokens too;
* `every token from the subject on`: all later words, end and padding tokens as well; outside the box
  only the start token and the words before the subject remain.

For each it reports the IoU of the object's boxes with the requested ones and with the unedited
video's (same seed): an edit that steers raises the first; one that does not leaves the second high.

    python benchmarks/box_edit_reach.py --requests 12
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm.auto import tqdm

from motiontune.app.api import open_backbone
from motiontune.app.bench_common import model_clip
from motiontune.app.bench_motionbooth import box_requests
from motiontune.attention import BoxEdit, SubjectBox
from motiontune.control import BoxControl, ControlOptions, MotionScript, SubjectPath, control_hooks, sampling_timesteps
from motiontune.errors import MotiontuneError
from motiontune.generation import GenerationConfig, generate_latents
from motiontune.io.video import frames_to_uint8
from motiontune.lab.evaluation import box_iou, boxes, segment
from motiontune.lab.shapeworld import Clip, render

EDITS = ("official", "keep other words", "subject + end tokens", "every token from the subject on")


def edited_tokens(backbone, prompt: str, subject: str, edit: str) -> list[int]:
    """Token positions edited as the subject's under `edit` (`official` and `keep other words`: the subject words)."""
    words = backbone.phrase_positions(prompt, subject)
    text_length = backbone.tokenizer.model_max_length
    if edit == "subject + end tokens":
        return words + list(range(backbone.prompt_length(prompt) - 1, text_length))
    if edit == "every token from the subject on":
        return list(range(words[0], text_length))
    return words


def edit_hooks(backbone, clip: Clip, requested: np.ndarray, edit: str, steps: int, amplify_until: int) -> list:
    """The step hooks of one edit for `clip`'s prompt with the `requested` boxes `(F, 4)`, one per frame."""
    subject = f"{clip.colour} {clip.shape}"
    path = SubjectPath(subject, tuple(tuple(box) for box in requested.tolist()))
    if edit in ("official", "keep other words"):
        options = ControlOptions(amplify_until=amplify_until, keep_other_words=edit == "keep other words")
        script = MotionScript(clip.caption(), (path,), source="box_edit_reach")
        timesteps = sampling_timesteps(backbone, None, steps)
        return control_hooks(backbone, script, len(requested), timesteps, options)
    tokens = edited_tokens(backbone, clip.caption(), subject, edit)
    # boxes over the latent frames, as `control_hooks` lays them
    latent_boxes = path.boxes(backbone.latent_frames(len(requested)))
    box_edit = BoxEdit([SubjectBox(tokens, latent_boxes)], suppress_other_words=False)
    return [BoxControl(backbone.controller, box_edit, amplify_until)]


def reach(model: str | None, requests: int, steps: int, amplify_until: int, seed: int) -> dict[str, dict]:
    """Mean IoU of each edit's object boxes with the requested boxes and with the unedited video's."""
    backbone = open_backbone(model)
    frames, size, guidance = model_clip(backbone.path)
    settings = GenerationConfig(frames, size, size, steps, guidance, seed=seed, progress=False)

    def object_boxes(clip: Clip, hooks: list) -> np.ndarray:
        latents = generate_latents(backbone, [clip.caption()], [], settings, hooks)
        return boxes(segment(frames_to_uint8(backbone.decode_latents(latents)[0])))

    scores = {name: {"requested": [], "unedited": []} for name in ("none", *EDITS)}
    for clip in tqdm(box_requests(requests), desc="requests"):
        requested = render(clip, frames, size).boxes
        unedited = object_boxes(clip, [])
        scores["none"]["requested"].append(np.nanmean(box_iou(unedited, requested)))
        scores["none"]["unedited"].append(1.0)
        for edit in EDITS:
            found = object_boxes(clip, edit_hooks(backbone, clip, requested, edit, steps, amplify_until))
            scores[edit]["requested"].append(np.nanmean(box_iou(found, requested)))
            scores[edit]["unedited"].append(np.nanmean(box_iou(found, unedited)))
    return {name: {key: float(np.nanmean(values)) for key, values in row.items()} for name, row in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped ShapeWorld model)")
    parser.add_argument("--requests", type=int, default=12, help="box requests (bench motionbooth's paths)")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps (the model's own sampler)")
    parser.add_argument(
        "--amplify-until", type=int, default=700, help="amplify while t > this timestep (0: every step)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every video's noise")
    args = parser.parse_args()
    if args.requests < 1 or args.steps < 1:
        parser.error(f"--requests and --steps must be at least 1, got {args.requests} and {args.steps}")
    try:
        results = reach(args.model, args.requests, args.steps, args.amplify_until, args.seed)
    except MotiontuneError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    print(f"{args.requests} requests, seed {args.seed}, amplified while t > {args.amplify_until}")
    print("| edit | IoU with requested boxes | IoU with unedited video |")
    print("| --- | --- | --- |")
    for name, row in results.items():
        print(f"| {name} | {row['requested']:.2f} | {row['unedited']:.2f} |")


if __name__ == "__main__":
    main()
