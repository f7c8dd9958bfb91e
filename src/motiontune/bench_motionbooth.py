"""`motiontune bench motionbooth`: MotionBooth's claims on ShapeWorld, measured with the analytic metrics.

Rows (each trained and scored in a fresh process, so its peak memory is its own):

* **subject**: MotionBooth learns a novel subject, a blue star, from 5 stills with exact masks, all on a
  gray background (token `sks`, class word `star`), with video preservation on known-motion clips. Prompts
  ask for it on other backgrounds with known motions ("a sks star moving left on a black background").
  Scores: shape, colour, motion and background accuracy, and background leakage (share of videos whose
  background reads gray, the training images', instead of the prompt's), with and without the subject
  region loss (Eq. 2), against the untrained base model.
* **boxes**: the base model (no training) asked for an object along a box path (left to right, top to
  bottom, diagonal), with and without the box edit (Eq. 6-7). Scores: IoU of the segmented object's box
  with the requested box, per frame, and the share of frames with IoU >= 0.5. The edit runs with the
  official settings (other prompt words suppressed, alpha 10 while t > 700), keeping the other words,
  and stronger (alpha 25 at every step).
* **camera**: the base model on the textured background with requested pans (left, right, up, down,
  diagonal), with and without the latent shift (Eq. 8). Scores: `evaluation.pan_error` (fractions of the
  frame) and that error over the requested travel (1.0 = as far off as a still camera). The shift runs in
  the official window (800 >= t > 600) and, as a second row, late in denoising (400 >= t > 100).

The class word: `star` is in `shapeworld.VOCABULARY`, so the ShapeWorld tokenizer spells it as one token,
and the base model never saw a star (novel shapes are held out of its training data), so the word names
the subject's class without carrying a visual prior, as a class noun for a novel subject would; a generic
word like "shape" is not in the vocabulary and would be spelled letter by letter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bench_common import bench_model, chosen_rows, model_label, run_rows, write_marked_section
from .shapeworld import COLOURS, MOTION_PHRASES, Clip

TOKEN = "sks"
CLASS_WORD = "star"
SUBJECT_COLOUR = "blue"
TRAINING_BACKGROUND = "gray"
SUBJECT_STARTS = ((0.3, 0.3), (0.7, 0.35), (0.5, 0.5), (0.35, 0.7), (0.65, 0.68))
SUBJECT_MOTIONS = ("left", "right", "up", "down")
PROMPT_BACKGROUNDS = ("white", "black", "textured")
PANS = {"left": (-0.25, 0.0), "right": (0.25, 0.0), "up": (0.0, -0.25), "down": (0.0, 0.25), "diagonal": (0.25, 0.25)}
FRAMES, SIZE, GUIDANCE_SCALE = 8, 32, 7.5
LEARNING_RATE = 1e-4

BEGIN, END = "<!-- bench-motionbooth:begin -->", "<!-- bench-motionbooth:end -->"


@dataclass(frozen=True)
class Row:
    """One bench row: the task, the MotionBooth options to train with (None: the untrained base model),
    whether the training-free control (box edit or latent shift) is on, and its `ControlOptions` fields
    where they differ from the defaults."""

    task: str
    training: dict | None = None
    control: bool = False
    control_options: dict = field(default_factory=dict)


ROWS: dict[str, Row] = {
    "subject, base model": Row("subject"),
    "subject, motionbooth": Row("subject", training={}),
    "subject, motionbooth without region loss": Row("subject", training={"masked_loss": False}),
    "boxes, base model": Row("boxes"),
    "boxes, box edit": Row("boxes", control=True),
    "boxes, box edit keeping other words": Row("boxes", control=True, control_options={"keep_other_words": True}),
    "boxes, box edit alpha 25 at every step": Row(
        "boxes", control=True, control_options={"box_strength": 25.0, "amplify_until": 0}
    ),
    "camera, base model": Row("camera"),
    "camera, latent shift": Row("camera", control=True),
    "camera, latent shift at t 400-100": Row("camera", control=True, control_options={"shift_window": (400, 100)}),
}


# ----------------------------------------------------------------------------------------- tasks


def subject_images() -> list[Clip]:
    """The subject's training stills: a large blue star at five places on the gray background."""
    return [Clip(CLASS_WORD, SUBJECT_COLOUR, TRAINING_BACKGROUND, "static", "large", start) for start in SUBJECT_STARTS]


def subject_prompts(count: int) -> list[Clip]:
    """What each subject prompt asks for: the star with a known motion on a background other than gray."""
    return [
        Clip(CLASS_WORD, SUBJECT_COLOUR, PROMPT_BACKGROUNDS[i % 3], SUBJECT_MOTIONS[i % 4], "large")
        for i in range(count)
    ]


def subject_caption(clip: Clip) -> str:
    """ "a sks star moving left on a black background": the subject named by token and class word only."""
    return f"a {TOKEN} {CLASS_WORD} {MOTION_PHRASES[clip.motion]} on a {clip.background} background"


BOX_PATHS = {
    "left to right": ("right", (0.5, 0.3)),
    "top to bottom": ("down", (0.7, 0.5)),
    "diagonal": ("diagonal", (0.5, 0.5)),
}


def box_requests(count: int) -> list[Clip]:
    """Large known objects along the `BOX_PATHS` in turn (motion, midpoint); the rendered clip's boxes are the
    requested ones. Shape and background vary across the paths, so neither goes with one path only.
    Circles and squares only: the shipped model's tokenizer spells "triangle" in 7 pieces, and its 16-token
    text length then cuts the background words off the longer prompts."""
    paths = list(BOX_PATHS.values())
    shapes = ("circle", "square")
    colours = list(COLOURS)
    backgrounds = ("white", "black", "gray")
    requests = []
    for i in range(count):
        motion, start = paths[i % 3]
        shape, background = shapes[(i // 3) % 2], backgrounds[(i + i // 3) % 3]
        requests.append(Clip(shape, colours[i % 4], background, motion, "large", start))
    return requests


def camera_requests(count: int) -> list[Clip]:
    """A static known object on the textured background under each of the five pans in turn."""
    pans = list(PANS.values())
    colours = list(COLOURS)
    shapes = ("circle", "square")
    return [Clip(shapes[i % 2], colours[i % 4], "textured", "static", camera=pans[i % len(pans)]) for i in range(count)]


def regularization_clips() -> list[Clip]:
    """MotionBooth's video preservation data: captioned clips of known motions, shapes and backgrounds."""
    from .shapeworld import sample_clips

    return sample_clips(6, 1, motions=SUBJECT_MOTIONS)


# ----------------------------------------------------------------------------------------- one row


def train_subject(workdir: Path, model: str | None, row: Row, steps: int, learning_rate: float):
    """Write the subject stills and preservation clips under `workdir` and train MotionBooth on them (the
    attention loss at MotionBooth's default level, or the nearest level with cross-attention)."""
    from . import api
    from .shapeworld import write_dataset, write_subject_images

    images = write_subject_images(workdir / "subject", subject_images(), SIZE)
    regularization = write_dataset(workdir / "regularization", regularization_clips(), FRAMES, SIZE)
    return api.train(
        "motionbooth",
        data=images,
        reg_data=regularization,
        output=workdir / "run",
        model=model,
        token=TOKEN,
        steps=steps,
        frames=FRAMES,
        height=SIZE,
        width=SIZE,
        learning_rate=learning_rate,
        checkpoint_every=0,
        overwrite=True,
        progress=False,
        method_options={"class_word": CLASS_WORD, **(row.training or {})},
    )


def _control_hooks(backbone, row: Row, clip: Clip, requested: np.ndarray | None, sampling: int, seed: int) -> list:
    """The box edit (subject words = colour and shape, background words kept outside) or the latent shift."""
    from .control import ControlOptions, MotionScript, SubjectPath, control_hooks, sampling_timesteps

    if not row.control:
        return []
    if row.task == "boxes":
        subject = SubjectPath(f"{clip.colour} {clip.shape}", tuple(tuple(box) for box in requested.tolist()))
        script = MotionScript(
            clip.caption(), (subject,), background=f"{clip.background} background", source="bench motionbooth"
        )
    else:
        script = MotionScript(clip.caption(), camera_speed=clip.camera, source="bench motionbooth")
    timesteps = sampling_timesteps(backbone, "ddim", sampling)
    return control_hooks(backbone, script, FRAMES, timesteps, ControlOptions(**row.control_options), seed)


def _scores(row: Row, clip: Clip, video: np.ndarray, requested: np.ndarray | None) -> dict[str, float]:
    """The row's per-video measurements (see the module docstring)."""
    from .evaluation import box_iou, boxes, evaluate_video, pan_error, segment

    if row.task == "subject":
        result = evaluate_video(video, clip)
        scores = {f"{name}_accuracy": float(result["correct"][name]) for name in ("shape", "colour", "motion")}
        scores["background_accuracy"] = float(result["correct"]["background"])
        scores["background_leakage"] = float(result["background"] == TRAINING_BACKGROUND)
        return scores
    if row.task == "boxes":
        iou = box_iou(boxes(segment(video)), requested)
        return {"box_iou": float(iou.mean()), "box_hit_rate": float((iou >= 0.5).mean())}
    error = pan_error(video, clip.camera)
    return {"pan_error": error, "relative_pan_error": error / float(np.linalg.norm(clip.camera))}


def run_row(
    name: str,
    workdir: Path,
    model: str | None,
    steps: int,
    prompts: int,
    seeds: int,
    sampling: int,
    learning_rate: float = LEARNING_RATE,
) -> dict:
    """Train (subject rows with training) and score one row in this process; returns its measurements."""
    from . import api
    from .generation import GenerationConfig, generate_latents
    from .methods import load_adapter
    from .shapeworld import render
    from .utils import peak_memory_mb
    from .video import frames_to_uint8

    chosen_rows([name], ROWS)
    row = ROWS[name]
    workdir = Path(workdir)
    backbone = api.open_backbone(model)
    result: dict = {"row": name, "task": row.task, "train_seconds": None, "adapter_mb": None}
    methods = []
    if row.training is not None:
        started = time.perf_counter()
        trained = train_subject(workdir, model, row, steps, learning_rate)
        result["train_seconds"] = round(time.perf_counter() - started, 1)
        result["adapter_mb"] = round(trained.adapter_megabytes, 2)
        methods = [load_adapter(trained.adapter, backbone)]
    requests = {"subject": subject_prompts, "boxes": box_requests, "camera": camera_requests}[row.task](prompts)
    measured: list[dict[str, float]] = []
    sampling_seconds = 0.0
    for clip in requests:
        prompt = subject_caption(clip) if row.task == "subject" else clip.caption()
        requested = render(clip, FRAMES, SIZE).boxes if row.task == "boxes" else None
        for seed in range(seeds):
            hooks = _control_hooks(backbone, row, clip, requested, sampling, seed)
            settings = GenerationConfig(FRAMES, SIZE, SIZE, sampling, GUIDANCE_SCALE, seed=seed, progress=False)
            started = time.perf_counter()
            latents = generate_latents(backbone, [prompt], methods, settings, hooks)
            video = frames_to_uint8(backbone.decode_latents(latents)[0])
            sampling_seconds += time.perf_counter() - started
            measured.append(_scores(row, clip, video, requested))
    for key in measured[0]:
        result[key] = round(float(np.mean([m[key] for m in measured])), 4)
    result["seconds_per_video"] = round(sampling_seconds / len(measured), 2)
    result["peak_memory_mb"] = round(peak_memory_mb(backbone.device), 1)
    return result


# ----------------------------------------------------------------------------------------- all rows


def bench_motionbooth(
    output: Path,
    model: str | None = None,
    rows: list[str] | None = None,
    steps: int = 150,
    prompts: int = 12,
    seeds: int = 2,
    sampling: int = 25,
    learning_rate: float = LEARNING_RATE,
    report: Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run each row in a fresh process and write `output/results.json` (and the tables into `report`)."""
    rows = chosen_rows(rows, ROWS)
    output = Path(output)
    model = bench_model(model, output)
    options = {
        "--steps": steps,
        "--prompts": prompts,
        "--seeds": seeds,
        "--sampling-steps": sampling,
        "--lr": learning_rate,
        "--model": model,
    }
    results = run_rows("motionbooth", rows, output, options, progress)
    if report is not None:
        write_report_section(Path(report), results, steps, prompts, seeds, sampling, model)
    return results


TABLES = {
    "subject": (
        ("shape acc.", "shape_accuracy", ".2f"),
        ("colour acc.", "colour_accuracy", ".2f"),
        ("motion acc.", "motion_accuracy", ".2f"),
        ("background acc.", "background_accuracy", ".2f"),
        ("background leakage", "background_leakage", ".2f"),
        ("train s", "train_seconds", ""),
        ("adapter MB", "adapter_mb", ""),
    ),
    "boxes": (("box IoU", "box_iou", ".2f"), ("frames with IoU >= 0.5", "box_hit_rate", ".2f")),
    "camera": (("pan error", "pan_error", ".3f"), ("error / requested pan", "relative_pan_error", ".2f")),
}
COMMON_COLUMNS = (("s / video", "seconds_per_video", ""), ("peak MB", "peak_memory_mb", ""))


def markdown_tables(results: list[dict]) -> str:
    """One markdown table per task present in `results`, rows in the order given ("-": not measured)."""
    tables = []
    for task, columns in TABLES.items():
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        columns = columns + COMMON_COLUMNS
        lines = ["| row | " + " | ".join(title for title, _, _ in columns) + " |"]
        lines.append("| --- " * (len(columns) + 1) + "|")
        for r in rows:
            cells = ["-" if r.get(key) is None else format(r[key], spec) for _, key, spec in columns]
            lines.append("| " + " | ".join([r["row"], *cells]) + " |")
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


def write_report_section(
    report: Path, results: list[dict], steps: int, prompts: int, seeds: int, sampling: int, model: str
) -> None:
    """Replace the section between the bench markers of `report` with the new tables, atomically."""
    command = f"motiontune bench motionbooth --steps {steps} --prompts {prompts} --seeds {seeds}"
    body = (
        f"`{command} --sampling-steps {sampling}` on {model_label(model)}. Subject rows: a {SUBJECT_COLOUR} "
        f"{CLASS_WORD} learned from {len(SUBJECT_STARTS)} masked stills on {TRAINING_BACKGROUND} (token `{TOKEN}`, "
        f"class word `{CLASS_WORD}`), prompted on {', '.join(PROMPT_BACKGROUNDS)} backgrounds with known motions; "
        f"leakage = share of videos whose background reads {TRAINING_BACKGROUND}. Box rows: IoU of the object's "
        "box with the requested one per frame. Camera rows: pan error in fractions of the frame (still camera = "
        "1.0 x requested).\n\n"
        f"{markdown_tables(results)}"
    )
    write_marked_section(report, BEGIN, END, body, "MotionBooth bench")
