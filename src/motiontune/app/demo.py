"""`motiontune demo`: the main job end to end on the shipped default, measured, with a report.

Renders ShapeWorld reference clips of a novel motion (zigzag, never seen by the base model),
customizes the model with every motion method (NewMove, Motion Inversion, MotionMatcher), generates
new prompts with and without each adapter, and scores them with the analytic metrics: motion
accuracy (the generated object zigzags), appearance accuracy (colour and shape follow the prompt)
and copy score (colour or shape taken from the references). Then MotionBooth learns a novel
subject, and one generate call composes it with the NewMove motion, a box path and a camera pan.
Without a shipped model it builds a tiny random one, so the numbers then only show the pipeline. On CPU the
four trainings run two at a time in worker processes of one thread each.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..control import SubjectPath
from ..errors import ConfigError
from ..lab.shapeworld import Clip, render, write_subject_images
from ..lab.tasks import NOVEL_MOTION, TOKEN, task_scores, write_task
from ..utils import atomic_write_text, check_writable_folder
from .api import shipped_model_name
from .bench import ROWS, bench_prompts, train_row
from .bench_common import default_or_tiny_model, model_clip
from .bench_motionbooth import subject_images

#: the bench's first 8 prompts (blue/yellow squares, circles and triangles), seed 0: 8 videos per method
PROMPTS = bench_prompts(8)


DEMO_ROWS = {
    "base": "base model",
    "newmove": "newmove",
    "motion-inversion": "motion inversion, 4 videos",
    "motionmatcher": "motionmatcher, 4 videos",
}
SUBJECT_TOKEN = "pll"
COMPOSED = Clip("star", "blue", "textured", NOVEL_MOTION, "large", start=(0.5, 0.35), camera=(0.25, 0.0))
COMPOSITION_PROMPT = f"a {SUBJECT_TOKEN} {COMPOSED.shape} doing {TOKEN} on a {COMPOSED.background} background"


def run_demo(
    output: Path,
    steps: int | None = None,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    model: Path | None = None,
) -> Path:
    """Teach the default model zigzag with every motion method, generate, measure and report; then learn
    a novel subject with MotionBooth and compose it with the NewMove motion, a box path and a camera pan.
    Each method trains for `steps`, or what the model recommends for it (`motiontune.json`). Every score is
    taken on the frames as generated (the MP4/GIF files are written from them). A folder that holds a finished
    demo (its report.md) is redone only with `overwrite`. `model`: a ShapeWorld model folder (default: the shipped
    one); clips are its native frames and size."""
    from ..io.video import read_native_video, write_contact_sheet

    output = Path(output)
    check_writable_folder(output, "--output")
    if (output / "report.md").exists() and not overwrite:
        raise ConfigError(f"{output}: holds a finished demo (report.md); pass --overwrite to run it again")
    given = model is not None
    model = Path(model) if given else default_or_tiny_model(output)[0]
    name = shipped_model_name(model)
    frames, size, _ = model_clip(model)
    task = write_task(output, frames, size, NOVEL_MOTION, 0)
    write_subject_images(output / "subject", subject_images(), size)
    trained = _train_all(output, model, steps, device, progress, task)
    rows, labels, scores = [], [], {}
    training = {name: (result, seconds) for name, (result, seconds, _, _) in trained.items()}
    for name in DEMO_ROWS:
        result, _, references, generation = trained.get(name) or (None, 0.0, task[0], {})
        videos, predicted = _generate_prompts(
            output, name, model, result.adapter if result else None, generation, device
        )
        rows += videos
        labels += [f"{name}: {clip.caption(TOKEN)}" for clip in PROMPTS]
        scores[name] = task_scores(predicted, PROMPTS, references)
    composed = _compose(
        output, model, training["newmove"][0].adapter, training["motionbooth"][0].adapter, device, progress
    )
    for label in ("composed", "base"):
        rows += composed[label]["videos"]
        labels += [f"{label}: {composed['prompt']}"] * len(composed[label]["videos"])
    sheet = write_contact_sheet(rows, output / "contact_sheet.png", labels=labels)
    reference_rows = [read_native_video(p) for p in sorted((output / "reference").glob("*.mp4"))]
    reference_sheet = write_contact_sheet(reference_rows, output / "reference_sheet.png")
    if name is not None:
        model_line = f"Model: the shipped ShapeWorld base model `{name}` (`{model}`)."
    elif given:
        model_line = f"Model: the ShapeWorld model `{model}`."
    else:
        model_line = (
            "Model: a tiny random UNet3D built from config (no ShapeWorld model is shipped in this install),\n"
            "so the videos are noise and the scores only show that the pipeline runs."
        )
    report = _report(training, scores, composed, steps, model_line, sheet, reference_sheet)
    atomic_write_text(output / "report.md", report)
    print(report)
    return output / "report.md"


#: the demo's trainings, longest first (so two workers finish together)
TRAINING_ORDER = ("motionmatcher", "newmove", "motionbooth", "motion-inversion")


def _train_all(output: Path, model, steps: int | None, device, progress: bool, task: tuple) -> dict:
    """Train every method of the demo: `{name: (result, seconds, references, generation settings)}`. On CPU two
    at a time in worker processes of one thread each (on 2 cores two small one-thread trainings together take
    less time than one after the other on two threads); on a GPU, or one core, one after the other here."""
    jobs = [(name, output, model, steps, device, task) for name in TRAINING_ORDER]
    if progress:
        print(f"training {', '.join(TRAINING_ORDER)} ({steps or 'the steps the model recommends'})", flush=True)
    parallel = (device is None or str(device) == "cpu") and not torch.cuda.is_available() and (os.cpu_count() or 1) > 1
    with contextlib.ExitStack() as stack:
        trained, note = map, ""
        if parallel:
            context = multiprocessing.get_context("spawn")
            pool = stack.enter_context(
                ProcessPoolExecutor(max_workers=2, mp_context=context, initializer=_worker_setup)
            )
            trained, note = pool.map, " (one thread, beside another training)"
        results = {}
        for name, *outcome in trained(_train_job, jobs):
            results[name] = tuple(outcome)
            if progress:
                print(f"  {name} trained in {outcome[1]:.1f} s{note}", flush=True)
    return results


def _worker_setup() -> None:
    """A training worker: one thread, and the command line's quiet libraries and one-line warnings."""
    from .cli import one_line_warnings, quiet_libraries

    torch.set_num_threads(1)
    quiet_libraries()
    one_line_warnings()


def _train_job(job: tuple) -> tuple:
    """One of the demo's trainings (run in a worker process): the name, the result, the seconds it took, the
    reference clips and the generation settings."""
    from . import api

    name, output, model, steps, device, task = job
    started = time.perf_counter()
    if name == "motionbooth":
        frames, size, _ = model_clip(model)
        result = api.train(
            "motionbooth",
            data=output / "subject",
            reg_data=task[2],
            output=output / "motionbooth",
            model=model,
            token=SUBJECT_TOKEN,
            steps=steps,
            frames=frames,
            height=size,
            width=size,
            checkpoint_every=0,
            overwrite=True,
            device=device,
            progress=False,
            method_options={"class_word": COMPOSED.shape},
        )
        return name, result, time.perf_counter() - started, task[0], {}
    result, references, generation = train_row(ROWS[DEMO_ROWS[name]], output, model, steps, device, task=task)
    return name, result, time.perf_counter() - started, references, generation


def _generate_prompts(
    output: Path, name: str, model, adapter: Path | None, generation: dict, device
) -> tuple[list[np.ndarray], list[dict]]:
    """All `PROMPTS` in one batch (seed 0) with `adapter` (or none) at the model's sampling settings; writes
    `videos/<name>_<i>.mp4` (+ GIF, PNG) and returns the frames and their evaluations."""
    from ..generation import GenerationConfig, generate_latents
    from ..io.video import frames_to_uint8, save_outputs
    from ..lab.evaluation import evaluate_video
    from ..methods import load_adapter
    from ..settings import ModelDefaults, generation_settings
    from . import api

    backbone = api.open_backbone(model, device)
    adapters = [load_adapter(adapter, backbone)] if adapter is not None else []
    sampling = {
        key: setting.value for key, setting in generation_settings(ModelDefaults.read(backbone.path), {}).items()
    }
    options = {"debias": sampling["debias"], **generation}  # the row's own debias mode, if it has one
    frames, size, _ = model_clip(model)
    settings = GenerationConfig(
        frames, size, size, sampling["steps"], sampling["guidance_scale"], seed=0, progress=False, **options
    )
    captions = [clip.caption(TOKEN) for clip in PROMPTS]
    latents = generate_latents(backbone, captions, adapters, settings)
    videos = [frames_to_uint8(video) for video in backbone.decode_latents(latents)]
    for index, (video, caption) in enumerate(zip(videos, captions, strict=True)):
        save_outputs(video, output / "videos" / f"{name}_{index}.mp4", label=caption)
    return videos, [evaluate_video(video, clip) for video, clip in zip(videos, PROMPTS, strict=True)]


#: seeds of the composition prompt, for the composed row and the base model alike
COMPOSITION_SEEDS = 4


def composition_request(model) -> tuple[str, SubjectPath, np.ndarray]:
    """The composition's prompt, its box path (a zigzag in the upper half of the frame, as asked with a still
    camera) and the boxes the same zigzag takes when filmed by the panning camera (what the object should fill)."""
    frames, size, _ = model_clip(model)
    requested = render(replace(COMPOSED, camera=(0.0, 0.0)), frames, size).boxes
    filmed = render(COMPOSED, frames, size).boxes
    path = SubjectPath(f"{SUBJECT_TOKEN} {COMPOSED.shape}", tuple(tuple(box) for box in requested.tolist()))
    return COMPOSITION_PROMPT, path, filmed


def _compose(output: Path, model, motion_adapter: Path, subject_adapter: Path, device, progress: bool) -> dict:
    """MotionBooth learns a blue star from 5 masked stills (token `pll`); one generate call then combines
    it with the NewMove zigzag adapter, boxes along a zigzag in the upper half of the frame (box edit) and
    a camera pan to the right (latent shift). The boxes move with the scene, so the object should end in
    the boxes of the same zigzag filmed by the panning camera. The base model gets the same prompt with no
    adapter and no control, for comparison; a still camera's pan error is the requested pan's length."""
    prompt, path, filmed = composition_request(model)
    controlled = {"adapters": [subject_adapter, motion_adapter], "boxes": [path], "camera_speed": COMPOSED.camera}
    composed = {"prompt": prompt, "still_pan_error": float(np.linalg.norm(COMPOSED.camera))}
    files = {"composed": "composed", "base": "composed_base"}
    for label, options in (("composed", controlled), ("base", {})):
        prefix = output / "videos" / files[label]
        videos = generate_composition(prefix, model, options, device=device, progress=progress)
        composed[label] = {"videos": videos, **composition_scores(videos, filmed)}
    return composed


def generate_composition(
    prefix: Path,
    model,
    options: dict,
    seeds: int = COMPOSITION_SEEDS,
    steps: int | None = None,
    device=None,
    progress: bool = False,
) -> list[np.ndarray]:
    """The composition prompt generated with `options` (adapters and controls of `api.generate_video`) at seeds
    0..`seeds`-1 and the model's native clip, written as `<prefix>_<seed>.mp4`; returns the frames as generated."""
    from . import api

    frames, size, _ = model_clip(model)
    videos = []
    for seed in range(seeds):
        generated = api.generate_video(
            COMPOSITION_PROMPT,
            prefix.parent / f"{prefix.name}_{seed}.mp4",
            model=model,
            frames=frames,
            height=size,
            width=size,
            steps=steps,
            seed=seed,
            device=device,
            progress=progress,
            overwrite=True,
            **options,
        )
        videos.append(generated.frames)
    return videos


def composition_scores(videos: list[np.ndarray], filmed: np.ndarray) -> dict[str, float]:
    """Subject correct (a blue star), zigzag, box IoU against the `filmed` boxes, camera pan error, and the share
    of videos whose background reads textured (the pan is measured on the texture; on a plain background a video
    shows no camera motion)."""
    from ..lab.evaluation import box_iou, boxes, evaluate_video, pan_error, segment

    results = [evaluate_video(video, COMPOSED) for video in videos]
    return {
        "subject": float(np.mean([r["correct"]["shape"] and r["correct"]["colour"] for r in results])),
        "motion": float(np.mean([r["motion"] == NOVEL_MOTION for r in results])),
        "box_iou": float(np.mean([np.nanmean(box_iou(boxes(segment(v)), filmed)) for v in videos])),
        "pan_error": float(np.mean([pan_error(video, COMPOSED.camera) for video in videos])),
        "textured": float(np.mean([r["background"] == COMPOSED.background for r in results])),
    }


def _report(training, scores, composed, steps, model_line, sheet, reference_sheet) -> str:
    lines = [
        "# motiontune demo: teach a ShapeWorld model to zigzag",
        "",
        model_line,
        f"Reference clips: 4 {NOVEL_MOTION} clips of red/green circles/triangles captioned `... doing {TOKEN} ...`",
        "(every method learns from all 4 at the model's recommended settings, as `motiontune train --data CLIPS`",
        "with no tuning flag; NewMove with 4 regularization clips of known motions); 8 prompts (seed 0) ask for",
        "blue/yellow squares, circles and triangles; copy score = share of videos whose object takes the",
        "references' colour or shape instead of the prompt's.",
        "",
        "| model | motion accuracy | appearance accuracy | copy score | steps | train s | adapter MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in scores.items():
        result, seconds = training.get(name, (None, 0.0))
        size = f"{result.adapter_megabytes:.2f}" if result else "-"
        cost = f"{seconds:.1f}" if result else "-"
        trained = result.steps if result else "-"
        lines.append(
            f"| {name} | {s['motion']:.2f} | {s['appearance']:.2f} | {s['copy']:.2f} | {trained} | {cost} | {size} |"
        )
    subject, seconds = training["motionbooth"]
    subject_size = f"{subject.adapter_megabytes:.2f} MB adapter"
    lines += [
        "",
        f"Composition (one generate call): MotionBooth subject (`{SUBJECT_TOKEN}` = a blue star, learned from 5",
        f"masked stills in {seconds:.1f} s, {subject_size}) + the NewMove zigzag adapter + boxes along a zigzag in "
        f"the upper half of the frame + a camera pan right by {COMPOSED.camera[0]} of the frame:",
        f"`{composed['prompt']}`, {COMPOSITION_SEEDS} seeds. Box IoU: the object's box against the requested",
        "boxes moved with the scene; textured: share of videos whose background reads textured, as asked (the pan",
        "is measured on the texture).",
        "",
        "| model | subject correct (blue star) | zigzag | box IoU | camera pan error (fraction of frame) | textured |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {label} | {c['subject']:.2f} | {c['motion']:.2f} | {c['box_iou']:.2f} | {c['pan_error']:.3f} "
            f"| {c['textured']:.2f} |"
            for label, c in (("composed", composed["composed"]), ("base model, same prompt", composed["base"]))
        ),
        "",
        f"A still camera's pan error is {composed['still_pan_error']:.3f} (the requested pan's length).",
        "",
        f"Training steps per method: {steps or 'as the model recommends (steps column)'}.",
        f"Reference clips: `{reference_sheet.name}`; generated videos: `{sheet.name}` and `videos/`.",
    ]
    return "\n".join(lines) + "\n"
