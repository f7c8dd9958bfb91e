"""`motiontune bench motionbooth`: MotionBooth's claims on ShapeWorld, measured with the analytic metrics.

Rows (each trained and scored in a fresh process, so its peak memory is its own):

* **subject**: MotionBooth learns a novel subject, a blue star, from 5 stills with exact masks, all on a
  gray background (token `sks`, class word `star`), with video preservation on known-motion clips. Prompts
  ask for it on other backgrounds with known motions ("a sks star moving left on a black background").
  Scores: subject accuracy (shape and colour both right), shape, colour, motion and background accuracy,
  and background leakage (share of videos whose background reads gray, the training images', instead of
  the prompt's), with each of MotionBooth's three
  losses left out in turn (the subject region loss of Eq. 2 replaced by the plain MSE, the subject-token
  attention loss of Eq. 4, the video preservation loss of Eq. 3), against the untrained base model.
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

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..lab.shapeworld import COLOURS, KNOWN_DIRECTIONS, MOTION_PHRASES, Clip
from ..utils import atomic_write_text
from .bench_common import (
    bench_model,
    chosen_rows,
    model_clip,
    model_label,
    run_rows,
    wilson_interval,
    write_marked_section,
)

TOKEN = "sks"
CLASS_WORD = "star"
SUBJECT_COLOUR = "blue"
TRAINING_BACKGROUND = "gray"
SUBJECT_STARTS = ((0.3, 0.3), (0.7, 0.35), (0.5, 0.5), (0.35, 0.7), (0.65, 0.68))
SUBJECT_MOTIONS = KNOWN_DIRECTIONS
PROMPT_BACKGROUNDS = ("white", "black", "textured")
PANS = {"left": (-0.25, 0.0), "right": (0.25, 0.0), "up": (0.0, -0.25), "down": (0.0, 0.25), "diagonal": (0.25, 0.25)}
#: per-video yes/no scores (their share gets a Wilson interval); the other scores are means over videos
PROPORTIONS = (
    "subject_accuracy",
    "shape_accuracy",
    "colour_accuracy",
    "motion_accuracy",
    "background_accuracy",
    "background_leakage",
)
#: per-video scores between 0 and 1 that are not yes/no (their mean's interval stays inside [0, 1])
FRACTIONS = ("box_iou", "box_hit_rate")

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
    "subject, motionbooth without attention loss": Row("subject", training={"attention_loss_weight": 0.0}),
    "subject, motionbooth without video preservation": Row("subject", training={"video_loss_weight": 0.0}),
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
    from ..lab.shapeworld import sample_clips

    return sample_clips(6, 1, motions=SUBJECT_MOTIONS)


# ----------------------------------------------------------------------------------------- one row


def train_subject(
    workdir: Path,
    model: str | None,
    row: Row,
    steps: int | None,
    learning_rate: float | None,
    seed: int = 0,
    checkpoint_every: int = 0,
):
    """Write the subject stills and preservation clips under `workdir` and train MotionBooth on them with
    training seed `seed` (steps, learning rate and options the model recommends where not given; the attention
    loss at MotionBooth's default level, or the nearest level with cross-attention)."""
    from ..lab.shapeworld import write_dataset, write_subject_images
    from . import api

    frames, size, _ = model_clip(model)
    images = write_subject_images(workdir / "subject", subject_images(), size)
    regularization = write_dataset(workdir / "regularization", regularization_clips(), frames, size)
    return api.train(
        "motionbooth",
        data=images,
        reg_data=regularization,
        output=workdir / "run",
        model=model,
        token=TOKEN,
        steps=steps,
        frames=frames,
        height=size,
        width=size,
        learning_rate=learning_rate,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=10_000 if checkpoint_every else 2,
        seed=seed,
        overwrite=True,
        progress=False,
        method_options={"class_word": CLASS_WORD, **(row.training or {})},
    )


def _control_hooks(
    backbone, row: Row, clip: Clip, requested: np.ndarray | None, frames: int, sampling: int, seed: int
) -> list:
    """The box edit (subject words = colour and shape, background words kept outside) or the latent shift."""
    from ..control import ControlOptions, MotionScript, SubjectPath, control_hooks, sampling_timesteps

    if not row.control:
        return []
    if row.task == "boxes":
        subject = SubjectPath(f"{clip.colour} {clip.shape}", tuple(tuple(box) for box in requested.tolist()))
        script = MotionScript(
            clip.caption(), (subject,), background=f"{clip.background} background", source="bench motionbooth"
        )
    else:
        script = MotionScript(clip.caption(), camera_speed=clip.camera, source="bench motionbooth")
    timesteps = sampling_timesteps(backbone, None, sampling)
    return control_hooks(backbone, script, frames, timesteps, ControlOptions(**row.control_options), seed)


def _scores(row: Row, clip: Clip, video: np.ndarray, requested: np.ndarray | None) -> dict[str, float]:
    """The row's per-video measurements (see the module docstring)."""
    from ..lab.evaluation import box_iou, boxes, evaluate_video, pan_error, segment

    if row.task == "subject":
        result = evaluate_video(video, clip)
        scores = {f"{name}_accuracy": float(result["correct"][name]) for name in ("shape", "colour", "motion")}
        scores["subject_accuracy"] = float(result["correct"]["shape"] and result["correct"]["colour"])
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
    steps: int | None,
    prompts: int,
    seeds: int,
    sampling: int,
    learning_rate: float | None = None,
    training_seed: int = 0,
) -> dict:
    """Train (subject rows with training, with `training_seed`) and score one row in this process; returns its
    measurements: the mean of each score and, under `per_video`, every video's."""
    from ..methods import load_adapter
    from ..utils import peak_memory_mb
    from . import api

    chosen_rows([name], ROWS)
    row = ROWS[name]
    workdir = Path(workdir)
    backbone = api.open_backbone(model)
    result: dict = {"row": name, "task": row.task, "training_seed": training_seed, "train_seconds": None}
    result["adapter_mb"] = None
    methods = []
    if row.training is not None:
        started = time.perf_counter()
        trained = train_subject(workdir, model, row, steps, learning_rate, training_seed)
        result["train_seconds"] = round(time.perf_counter() - started, 1)
        result["adapter_mb"] = round(trained.adapter_megabytes, 2)
        methods = [load_adapter(trained.adapter, backbone)]
    measured, sampling_seconds = measure(backbone, row, methods, prompts, seeds, sampling)
    for key in measured[0]:
        result[key] = round(float(np.mean([m[key] for m in measured])), 4)
    result["videos"] = len(measured)
    result["per_video"] = {key: [round(m[key], 4) for m in measured] for key in measured[0]}
    result["seconds_per_video"] = round(sampling_seconds / len(measured), 2)
    result["peak_memory_mb"] = round(peak_memory_mb(backbone.device), 1)
    return result


def measure(backbone, row: Row, methods: list, prompts: int, seeds: int, sampling: int) -> tuple[list[dict], float]:
    """Generate the row's `prompts` requests at seeds 0..seeds-1 with `methods` (adapters) and the row's control;
    returns each video's scores and the seconds spent sampling."""
    from ..generation import GenerationConfig, generate_latents
    from ..io.video import frames_to_uint8
    from ..lab.shapeworld import render

    requests = {"subject": subject_prompts, "boxes": box_requests, "camera": camera_requests}[row.task](prompts)
    frames, size, guidance = model_clip(backbone.path)
    measured: list[dict[str, float]] = []
    sampling_seconds = 0.0
    for clip in requests:
        prompt = subject_caption(clip) if row.task == "subject" else clip.caption()
        requested = render(clip, frames, size).boxes if row.task == "boxes" else None
        for seed in range(seeds):
            hooks = _control_hooks(backbone, row, clip, requested, frames, sampling, seed)
            settings = GenerationConfig(frames, size, size, sampling, guidance, seed=seed, progress=False)
            started = time.perf_counter()
            latents = generate_latents(backbone, [prompt], methods, settings, hooks)
            video = frames_to_uint8(backbone.decode_latents(latents)[0])
            sampling_seconds += time.perf_counter() - started
            measured.append(_scores(row, clip, video, requested))
    return measured, sampling_seconds


# ----------------------------------------------------------------------------------------- all rows


def bench_motionbooth(
    output: Path,
    model: str | None = None,
    rows: list[str] | None = None,
    steps: int | None = None,
    prompts: int = 12,
    seeds: int = 2,
    sampling: int = 25,
    learning_rate: float | None = None,
    report: Path | None = None,
    progress: bool = True,
    training_seeds: int = 1,
) -> list[dict]:
    """Run each row in a fresh process (rows that train once per training seed 0..training_seeds-1) and write
    `output/results.json` (and the tables into `report`). Steps and learning rate: the model's recommendation
    for MotionBooth unless given."""
    if training_seeds < 1:
        raise ConfigError(f"--training-seeds must be at least 1, got {training_seeds}")
    rows = chosen_rows(rows, ROWS)
    output = Path(output)
    model = bench_model(model, output)
    options: dict[str, object] = {
        "--prompts": prompts,
        "--seeds": seeds,
        "--sampling-steps": sampling,
        "--model": model,
    }
    options.update({flag: value for flag, value in (("--steps", steps), ("--lr", learning_rate)) if value is not None})
    trained = [name for name in rows if ROWS[name].training is not None]
    variants = [{"--training-seed": seed} for seed in range(training_seeds)]
    results = run_rows("motionbooth", trained, output, options, progress, variants) if trained else []
    untrained = [name for name in rows if ROWS[name].training is None]
    results += run_rows("motionbooth", untrained, output, options, progress) if untrained else []
    results.sort(key=lambda result: rows.index(result["row"]))
    atomic_write_text(output / "results.json", json.dumps(results, indent=2))
    if report is not None:
        write_report_section(Path(report), results, steps, prompts, seeds, sampling, model, learning_rate)
    return results


def mean_interval(
    values: list[float], z: float = 1.96, bounds: tuple[float, float] = (0.0, math.inf)
) -> tuple[float, float]:
    """The normal 95% interval of a mean, mean +- z sd / sqrt(n) (the sample sd; a single value: itself), kept
    inside the score's `bounds` (every score here is >= 0; a share of frames or an IoU also <= 1)."""
    array = np.asarray(values, float)
    if len(array) < 2:
        return (float(array.mean()), float(array.mean()))
    half = z * array.std(ddof=1) / np.sqrt(len(array))
    return (max(bounds[0], float(array.mean() - half)), min(bounds[1], float(array.mean() + half)))


def summarise(results: list[dict]) -> list[dict]:
    """One entry per row, pooled over its training seeds: each score's mean over all videos with its 95%
    interval (Wilson for the yes/no scores of `PROPORTIONS`, normal for means), the other columns averaged."""
    groups: dict[str, list[dict]] = {}
    for result in results:
        groups.setdefault(result["row"], []).append(result)
    summary = []
    for name, runs in groups.items():
        entry = {"row": name, "task": runs[0]["task"], "training_seeds": len(runs)}
        entry["videos"] = sum(run["videos"] for run in runs)
        for key in runs[0]["per_video"]:
            values = [value for run in runs for value in run["per_video"][key]]
            entry[key] = float(np.mean(values))
            if key in PROPORTIONS:
                interval = wilson_interval(sum(values), len(values))
            else:
                interval = mean_interval(values, bounds=(0.0, 1.0 if key in FRACTIONS else math.inf))
            entry[f"{key}_interval"] = interval
        for key in ("train_seconds", "adapter_mb", "seconds_per_video", "peak_memory_mb"):
            known = [run[key] for run in runs if run.get(key) is not None]
            entry[key] = round(float(np.mean(known)), 2) if known else None
        summary.append(entry)
    return summary


TABLES = {
    "subject": (
        ("subject acc. (shape and colour)", "subject_accuracy", ".2f"),
        ("shape acc.", "shape_accuracy", ".2f"),
        ("colour acc.", "colour_accuracy", ".2f"),
        ("motion acc.", "motion_accuracy", ".2f"),
        ("background acc.", "background_accuracy", ".2f"),
        ("background leakage", "background_leakage", ".2f"),
    ),
    "boxes": (("box IoU", "box_iou", ".2f"), ("frames with IoU >= 0.5", "box_hit_rate", ".2f")),
    "camera": (("pan error", "pan_error", ".3f"), ("error / requested pan", "relative_pan_error", ".2f")),
}
COMMON_COLUMNS = (
    ("train s", "train_seconds", ""),
    ("adapter MB", "adapter_mb", ""),
    ("s / video", "seconds_per_video", ""),
    ("peak MB", "peak_memory_mb", ""),
)


def markdown_tables(results: list[dict]) -> str:
    """One markdown table per task present in `results`, rows in the order given, each score with its 95%
    interval pooled over training seeds and videos ("-": not measured)."""
    summary = summarise(results)
    tables = []
    for task, scores in TABLES.items():
        entries = [e for e in summary if e["task"] == task]
        if not entries:
            continue
        titles = ["row", "seeds x videos", *(title for title, _, _ in scores + COMMON_COLUMNS)]
        lines = ["| " + " | ".join(titles) + " |", "| --- " * len(titles) + "|"]
        for e in entries:
            cells = [e["row"], f"{e['training_seeds']} x {e['videos'] // e['training_seeds']}"]
            for _, key, spec in scores:
                low, high = e[f"{key}_interval"]
                cells.append(f"{e[key]:{spec}} [{low:{spec}}, {high:{spec}}]")
            cells += ["-" if e.get(key) is None else format(e[key], spec) for _, key, spec in COMMON_COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


def write_report_section(
    report: Path,
    results: list[dict],
    steps: int | None,
    prompts: int,
    seeds: int,
    sampling: int,
    model: str,
    learning_rate: float | None = None,
) -> None:
    """Replace the section between the bench markers of `report` with the new tables, atomically."""
    training_seeds = max(r.get("training_seed", 0) for r in results) + 1
    tuning = "".join(f" {flag} {value}" for flag, value in (("--steps", steps), ("--lr", learning_rate)) if value)
    command = (
        f"motiontune bench motionbooth{tuning} --training-seeds {training_seeds} --prompts {prompts} --seeds {seeds}"
    )
    body = (
        f"`{command} --sampling-steps {sampling}` on {model_label(model)} (MotionBooth at the model's recommended "
        f"settings unless the command gives them; 95% intervals in brackets). Subject rows: a {SUBJECT_COLOUR} "
        f"{CLASS_WORD} learned from {len(SUBJECT_STARTS)} masked stills on {TRAINING_BACKGROUND} (token `{TOKEN}`, "
        f"class word `{CLASS_WORD}`), prompted on {', '.join(PROMPT_BACKGROUNDS)} backgrounds with known motions; "
        f"leakage = share of videos whose background reads {TRAINING_BACKGROUND}. Box rows: IoU of the object's "
        "box with the requested one per frame. Camera rows: pan error in fractions of the frame (still camera = "
        "1.0 x requested).\n\n"
        f"{markdown_tables(results)}"
    )
    write_marked_section(report, BEGIN, END, body, "MotionBooth bench")
