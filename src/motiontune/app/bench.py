"""`motiontune bench shapeworld`: every method and NewMove ablation on one ShapeWorld task, measured.

Task: learn the novel motion zigzag from K reference clips (red/green circles and triangles captioned
`... doing sks ...`), then generate N prompts x S seeds asking for other colours and shapes. Each row is
trained and scored in a fresh process, so its peak memory is its own. Scores come from the analytic
metrics: motion accuracy (the object zigzags), appearance accuracy (colour and shape follow the prompt),
copy score (colour or shape taken from the references instead of the prompt).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..lab.shapeworld import COLOURS, KNOWN_DIRECTIONS, NOVEL_MOTIONS, SHAPES, Clip
from ..lab.tasks import NOVEL_MOTION, REFERENCE_LOOK, TOKEN, check_task_motion, task_scores, write_task
from .bench_common import (
    bench_model,
    chosen_rows,
    model_clip,
    model_label,
    run_rows,
    wilson_interval,
    write_marked_section,
)


@dataclass(frozen=True)
class Row:
    """One bench row: a method (`none`: the untrained base model) and its options.

    It trains on the 4 zigzag clips, or only on the first (`one_video`, the setting of Motion Inversion
    and MotionMatcher), with or without regularization videos, and generates with extra
    `GenerationConfig` settings (Motion Inversion's debiasing, a noise prior from the inverted reference).
    Learning rate, batch size and steps are the model's recommendations for the method unless given (the
    bench's `--steps` wins over the row's `steps`). The `regularization_clips` regularization clips are on white
    or gray backgrounds, or clip i on `regularization_backgrounds[i % n]`.
    """

    method: str
    options: dict = field(default_factory=dict)
    regularized: bool = True
    one_video: bool = False
    learning_rate: float | None = None
    generation: dict = field(default_factory=dict)
    steps: int | None = None
    batch_size: int | None = None
    regularization_backgrounds: tuple[str, ...] | None = None
    regularization_clips: int = 4


ONE_VIDEO = {"one_video": True, "regularized": False}
#: NewMove's own choices (cross-attention K/V, frozen token, targets and regularization videos drawn alike)
#: in place of the shipped model's recommended options
PAPER_NEWMOVE = {"spatial": "kv", "train_token": False, "regularization_share": 0.5}
FROM_REFERENCE = {"noise_prior": 0.5}
OBJECT = {"debias": "object"}
#: NewMove's share of regularization clips per batch: one in four (the default until stop 33) or one in eight
ONE_IN_FOUR = {"regularization_share": 0.25}
ONE_IN_EIGHT = {"regularization_share": 0.125}
#: MotionDirector's budget (240 steps of 8 clips) for MotionMatcher, whose own is 120 of 4
MATCHER_BUDGET = {"steps": 240, "batch_size": 8}
#: MotionDirector's LoRA placement and timesteps on MotionMatcher's loss
MATCHER_TEMPORAL = {"lora_layers": "temporal", "timestep_sampling": "coarse", "lora_dropout": 0.0}
#: lambda_CA = lambda_TSA = 2e6 instead of 2000: the feature loss's gradients above AdamW's epsilon (1e-8)
MATCHER_WEIGHTS_X1000 = {"cross_attention_weight": 2e6, "temporal_attention_weight": 2e6}
#: MotionDirector's temporal LoRA trained with NewMove's plain loss and coarse-noise timesteps
TEMPORAL_LORA = {"adapter": "lora", "spatial": "none", "train_token": False}
ROWS: dict[str, Row] = {
    "base model": Row("none"),
    "base model, from inverted reference": Row("none", one_video=True, generation=FROM_REFERENCE),
    "newmove": Row("newmove"),
    "newmove, spatial none": Row("newmove", {"spatial": "none"}),
    "newmove, spatial kv": Row("newmove", {"spatial": "kv"}),
    "newmove, spatial all": Row("newmove", {"spatial": "all"}),
    "newmove, temporal off": Row("newmove", {"temporal": False}),
    "newmove, token trained": Row("newmove", {"train_token": True}),
    "newmove, token frozen": Row("newmove", {"train_token": False}),
    "newmove, uniform sampling": Row("newmove", {"timestep_sampling": "uniform"}),
    "newmove, no regularization": Row("newmove", regularized=False),
    "newmove, regularization on every background": Row(
        "newmove", regularization_backgrounds=("white", "black", "gray", "textured")
    ),
    "newmove, 16 regularization clips": Row("newmove", ONE_IN_FOUR, regularization_clips=16),
    "newmove, 16 regularization clips, 1 in 8": Row("newmove", ONE_IN_EIGHT, regularization_clips=16),
    "newmove, regularization 1 in 8": Row("newmove", ONE_IN_EIGHT),
    "newmove, regularization 1 in 4": Row("newmove", ONE_IN_FOUR),
    "newmove, lr 5e-3": Row("newmove", learning_rate=5e-3),
    "newmove, lora 32": Row("newmove", {"adapter": "lora", "lora_rank": 32}),
    "dreambooth baseline": Row("dreambooth"),
    "motion inversion, debias object": Row(
        "motion-inversion", **ONE_VIDEO, generation={**FROM_REFERENCE, "debias": "object"}
    ),
    "motion inversion, no debias": Row(
        "motion-inversion", **ONE_VIDEO, generation={**FROM_REFERENCE, "debias": "none"}
    ),
    "motion inversion, value rank 4": Row(
        "motion-inversion", {"value_rank": 4}, **ONE_VIDEO, generation={**FROM_REFERENCE, "debias": "object"}
    ),
    "motionmatcher, feature loss": Row("motionmatcher", {"loss": "feature"}, **ONE_VIDEO, generation=FROM_REFERENCE),
    "motionmatcher, pixel loss": Row("motionmatcher", {"loss": "pixel"}, **ONE_VIDEO, generation=FROM_REFERENCE),
    "motiondirector baseline": Row("motiondirector", **ONE_VIDEO, generation=FROM_REFERENCE),
    "newmove, paper options": Row("newmove", PAPER_NEWMOVE),
    "newmove, paper options, no regularization": Row("newmove", PAPER_NEWMOVE, regularized=False),
    "motion inversion, 4 videos": Row("motion-inversion", regularized=False),
    "motionmatcher, 4 videos": Row("motionmatcher", regularized=False),
    "motiondirector, 4 videos": Row("motiondirector", regularized=False),
    "motionmatcher, 4 videos, pixel loss": Row("motionmatcher", {"loss": "pixel"}, regularized=False),
    "motiondirector, 4 videos, paper options": Row(
        "motiondirector", {"train_token": False, "lora_dropout": 0.1, "timestep_sampling": "uniform"}, regularized=False
    ),
    "motion inversion, 4 videos, debias object": Row("motion-inversion", regularized=False, generation=OBJECT),
    "motionmatcher, 4 videos, 240 x 8": Row("motionmatcher", regularized=False, **MATCHER_BUDGET),
    "motionmatcher, 4 videos, 240 x 8, coarse": Row(
        "motionmatcher", {"timestep_sampling": "coarse"}, regularized=False, **MATCHER_BUDGET
    ),
    "motionmatcher, 4 videos, 240 x 8, level 0, no dropout": Row(
        "motionmatcher", {"feature_level": 0, "lora_dropout": 0.0}, regularized=False, **MATCHER_BUDGET
    ),
    "motionmatcher, 4 videos, 240 x 8, pixel loss, no dropout": Row(
        "motionmatcher", {"loss": "pixel", "lora_dropout": 0.0}, regularized=False, **MATCHER_BUDGET
    ),
    "motionmatcher, 4 videos, 240 x 8, temporal lora, coarse, no dropout": Row(
        "motionmatcher", {**MATCHER_TEMPORAL, "loss": "feature"}, regularized=False, **MATCHER_BUDGET
    ),
    "motionmatcher, 4 videos, 240 x 8, temporal lora, coarse, no dropout, pixel loss, all t": Row(
        "motionmatcher",
        {**MATCHER_TEMPORAL, "loss": "pixel", "min_timestep": 1, "lora_window_start": 0},
        regularized=False,
        **MATCHER_BUDGET,
    ),
    "motionmatcher, 4 videos, 240 x 8, temporal lora, coarse, no dropout, weights x1000": Row(
        "motionmatcher", {**MATCHER_TEMPORAL, **MATCHER_WEIGHTS_X1000}, regularized=False, **MATCHER_BUDGET
    ),
    "motionmatcher, 4 videos, 240 x 8, temporal lora, coarse, no dropout, weights x1000, all t": Row(
        "motionmatcher",
        {**MATCHER_TEMPORAL, **MATCHER_WEIGHTS_X1000, "min_timestep": 1, "lora_window_start": 0},
        regularized=False,
        **MATCHER_BUDGET,
    ),
    "motionmatcher, 4 videos, 240 x 8, coarse, no dropout, weights x1000": Row(
        "motionmatcher",
        {"timestep_sampling": "coarse", "lora_dropout": 0.0, **MATCHER_WEIGHTS_X1000},
        regularized=False,
        **MATCHER_BUDGET,
    ),
    "newmove, temporal lora": Row("newmove", TEMPORAL_LORA, regularized=False, learning_rate=5e-3),
    "newmove, temporal lora, token trained": Row(
        "newmove", {**TEMPORAL_LORA, "train_token": True}, regularized=False, learning_rate=5e-3
    ),
}
#: `motiontune train --data CLIPS` with no tuning flag: every motion method on the 4 reference clips at the
#: model's recommended settings (NewMove with and without the regularization videos)
DEFAULT_ROWS = (
    "newmove",
    "newmove, no regularization",
    "motion inversion, 4 videos",
    "motionmatcher, 4 videos",
    "motiondirector, 4 videos",
)


def known_prompts(count: int) -> list[Clip]:
    """The appearances of `bench_prompts`, each moving in a known direction (left, right, up, down in turn)."""
    return [
        replace(clip, motion=KNOWN_DIRECTIONS[i % len(KNOWN_DIRECTIONS)]) for i, clip in enumerate(bench_prompts(count))
    ]


def bench_prompts(count: int, motion: str = NOVEL_MOTION) -> list[Clip]:
    """Prompts of `motion` whose colour and shape differ from the references' (blue/yellow, square and the rest)."""
    colours = [c for c in COLOURS if c not in REFERENCE_LOOK["colours"]]
    shapes = ["square", *(s for s in SHAPES if s != "square")]
    backgrounds = ["gray", "white", "black"]
    return [
        Clip(shapes[(i // len(colours)) % len(shapes)], colours[i % len(colours)], backgrounds[i % 3], motion)
        for i in range(count)
    ]


def train_row(
    row: Row,
    workdir: Path,
    model,
    steps: int | None,
    device=None,
    progress: bool = False,
    motion: str = NOVEL_MOTION,
    seed: int = 0,
    checkpoint_every: int = 0,
    task: tuple | None = None,
):
    """Write the task of `motion` (zigzag) under `workdir` (unless `task`, what `write_task` returned for it, is
    given) and train the row's method on it (nothing for `none`) for `steps` (None: the model's recommendation
    for the method), with training seed `seed` (which also draws the task's clips), keeping every checkpoint
    when `checkpoint_every` is set.

    Returns the training result (or None), the reference clips it learned from and the
    `GenerationConfig` settings its videos are generated with."""
    from . import api

    frames, size, _ = model_clip(model)
    references, reference_dir, regularization_dir = task or write_task(
        workdir, frames, size, motion, seed, row.regularization_backgrounds, row.regularization_clips
    )
    first_video = sorted(reference_dir.glob("*.mp4"))[0]
    if row.one_video:
        references = references[:1]
    generation = {**row.generation}
    if generation.get("noise_prior"):
        generation["reference"] = first_video
    if row.method == "none":
        return None, references, generation
    result = api.train(
        row.method,
        data=first_video if row.one_video else reference_dir,
        reg_data=regularization_dir if row.regularized else None,
        output=workdir / row.method,
        model=model,
        token=TOKEN,
        steps=steps or row.steps,
        frames=frames,
        height=size,
        width=size,
        learning_rate=row.learning_rate,
        batch_size=row.batch_size,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=10_000 if checkpoint_every else 2,
        seed=seed,
        overwrite=True,
        device=device,
        progress=progress,
        method_options=row.options,
    )
    return result, references, generation


def run_row(
    name: str,
    workdir: Path,
    model: str | None,
    steps: int | None,
    prompts: int,
    seeds: int,
    sampling: int,
    motion: str = NOVEL_MOTION,
    training_seed: int = 0,
) -> dict:
    """Train (with `training_seed`, which also draws the task's clips) and score one row on the task of
    `motion` in this process; returns its measurements."""
    from ..utils import peak_memory_mb

    started = time.perf_counter()
    result, references, generation = train_row(ROWS[name], workdir, model, steps, motion=motion, seed=training_seed)
    train_seconds = time.perf_counter() - started
    clips = bench_prompts(prompts, motion)
    adapter = result.adapter if result else None
    backbone, scores = score_adapter(model, adapter, clips, seeds, sampling, generation, references, motion, True)
    return {
        "row": name,
        "motion": motion,
        "training_seed": training_seed,
        "videos": prompts * seeds,
        "motion_accuracy": scores["motion"],
        "appearance_accuracy": scores["appearance"],
        "copy_score": scores["copy"],
        "known_kept": scores["known_kept"],
        "produced": scores["produced"],
        "by_prompt": scores["by_prompt"],
        "steps": result.steps if result else 0,
        "train_seconds": round(train_seconds, 1) if result else 0.0,
        "peak_memory_mb": round(peak_memory_mb(backbone.device), 1),
        "adapter_mb": round(result.adapter_megabytes, 2) if result else 0.0,
    }


def score_adapter(
    model: str | None,
    adapter: Path | None,
    clips: list[Clip],
    seeds: int,
    sampling: int,
    generation: dict,
    references: list[Clip],
    motion: str = NOVEL_MOTION,
    retention: bool = False,
):
    """Generate every prompt of `clips` at seeds 0..seeds-1 (one batch per seed) with `adapter` (or none) on a
    freshly loaded model (Motion Inversion's debiasing as the model recommends unless `generation` says) and
    score the videos with `task_scores`, adding `produced` (how many videos did which motion) and `by_prompt` (each
    prompt's motions, one per video in seed order: which prompts fail, and whether the seed changes that). With
    `retention`, also prompt the same appearances with known directions (no token) and add `known_kept`, the
    share that still moves as asked (what regularization should preserve). Returns the backbone and scores."""
    from ..generation import GenerationConfig, generate_latents
    from ..io.video import frames_to_uint8
    from ..lab.evaluation import evaluate_video
    from ..methods import load_adapter
    from ..settings import ModelDefaults, generation_settings
    from . import api

    backbone = api.open_backbone(model)
    frames, size, guidance = model_clip(model)
    adapters = [load_adapter(adapter, backbone)] if adapter is not None else []
    generation = {"debias": generation_settings(ModelDefaults.read(backbone.path), {})["debias"].value, **generation}

    def evaluated(prompts: list[Clip], check: bool) -> list[dict]:
        results = []
        for seed in range(seeds):
            settings = GenerationConfig(frames, size, size, sampling, guidance, seed=seed, progress=False, **generation)
            captions = [clip.caption(TOKEN) for clip in prompts]
            latents = generate_latents(backbone, captions, adapters, settings, check_prompts=check)
            for video, clip in zip(backbone.decode_latents(latents), prompts, strict=True):
                results.append(evaluate_video(frames_to_uint8(video), clip))
        return results

    predicted = evaluated(clips, True)
    scores = task_scores(predicted, clips * seeds, references, motion)
    scores["produced"] = dict(Counter(str(p["motion"]) for p in predicted).most_common())
    scores["by_prompt"] = {}
    for clip, result in zip(clips * seeds, predicted, strict=True):
        scores["by_prompt"].setdefault(clip.caption(TOKEN), []).append(str(result["motion"]))
    if retention:
        known = known_prompts(len(clips))
        scores["known_kept"] = float(np.mean([r["correct"]["motion"] for r in evaluated(known, False)]))
    return backbone, scores


def bench_shapeworld(
    output: Path,
    model: str | None = None,
    rows: list[str] | None = None,
    steps: int | None = None,
    prompts: int = 8,
    seeds: int = 2,
    sampling: int = 25,
    report: Path | None = None,
    progress: bool = True,
    motions: tuple[str, ...] = (NOVEL_MOTION,),
    training_seeds: int = 1,
) -> list[dict]:
    """Run each row on each of `motions` with training seeds 0..training_seeds-1, each in a fresh process, and
    write `output/results.json` (and a markdown table to `report`)."""
    if training_seeds < 1:
        raise ConfigError(f"--training-seeds must be at least 1, got {training_seeds}")
    if not motions:
        raise ConfigError(f"--motions must name novel motions ({', '.join(NOVEL_MOTIONS)}) or 'path:' motions")
    for motion in motions:
        check_task_motion(motion)
    rows = chosen_rows(rows, ROWS)
    output = Path(output)
    model = bench_model(model, output)
    options = {"--prompts": prompts, "--seeds": seeds, "--sampling-steps": sampling, "--model": model}
    if steps is not None:
        options["--steps"] = steps
    variants = [{"--motion": m, "--training-seed": s} for m in motions for s in range(training_seeds)]
    results = run_rows("shapeworld", rows, output, options, progress, variants)
    if report is not None:
        write_report_section(report, results, steps, prompts, seeds, model, motions, training_seeds)
    return results


def summarise(results: list[dict]) -> list[dict]:
    """One entry per (row, motion): accuracies and copy pooled over its training seeds, with 95% Wilson
    intervals over all its videos, and the mean training seconds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for result in results:
        groups.setdefault((result["row"], result["motion"]), []).append(result)
    summary = []
    for (row, motion), runs in groups.items():
        videos = sum(r["videos"] for r in runs)
        entry = {"row": row, "motion": motion, "training_seeds": len(runs), "videos": videos}
        for key in ("motion_accuracy", "appearance_accuracy", "copy_score", "known_kept"):
            hits = sum(r[key] * r["videos"] for r in runs)
            entry[key] = hits / videos
            entry[f"{key}_interval"] = wilson_interval(hits, videos)
        for key in ("steps", "train_seconds", "peak_memory_mb", "adapter_mb"):
            entry[key] = round(sum(r[key] for r in runs) / len(runs), 1 if key != "adapter_mb" else 2)
        summary.append(entry)
    return summary


def markdown_table(results: list[dict]) -> str:
    """Rows x motions, each figure with its 95% interval (pooled over training seeds and videos)."""

    def figure(entry: dict, key: str) -> str:
        low, high = entry[f"{key}_interval"]
        return f"{entry[key]:.2f} [{low:.2f}, {high:.2f}]"

    header = "| row | motion | seeds x videos | motion acc. | appearance acc. | copy | known motions kept | steps "
    header += "| train s | peak MB | adapter MB |\n"
    header += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    return header + "".join(
        f"| {e['row']} | {e['motion']} | {e['training_seeds']} x {e['videos'] // e['training_seeds']} | "
        f"{figure(e, 'motion_accuracy')} | {figure(e, 'appearance_accuracy')} | {figure(e, 'copy_score')} | "
        f"{figure(e, 'known_kept')} | "
        f"{e['steps']} | {e['train_seconds']} | {e['peak_memory_mb']} | {e['adapter_mb']} |\n"
        for e in summarise(results)
    )


BEGIN, END = "<!-- bench-shapeworld:begin -->", "<!-- bench-shapeworld:end -->"


def write_report_section(
    report: Path,
    results: list[dict],
    steps: int | None,
    prompts: int,
    seeds: int,
    model: str,
    motions: tuple[str, ...] = (NOVEL_MOTION,),
    training_seeds: int = 1,
) -> None:
    """Replace the bench section of `report` (between markers) with the new table, atomically."""
    budget = f" --steps {steps}" if steps is not None else ""
    command = f"motiontune bench shapeworld{budget} --prompts {prompts} --seeds {seeds}"
    command += f" --motions {','.join(motions)} --training-seeds {training_seeds}"
    body = f"`{command}` on {model_label(model)} (95% Wilson intervals over all videos of a cell):\n\n"
    write_marked_section(report, BEGIN, END, body + markdown_table(results), "Bench")
