"""`motiontune bench curves`: how fast each motion method learns, as motion accuracy against training steps
and seconds.

Each row trains once on the task of one novel motion (as `bench shapeworld` does, at the model's recommended
settings unless `--steps` is given), keeps a checkpoint every `--every` steps, and scores every checkpoint
on the same prompts and seeds: motion accuracy, appearance accuracy, copy score. The row `motionbooth
subject` trains MotionBooth on `bench motionbooth`'s subject task instead and scores subject accuracy (the
learned blue star with shape and colour right, on the bench's subject prompts). Seconds are the training
loop's own clock at that step (`training_log.jsonl`), without encoding or scoring. Writes `results.json`,
`curves.png` (accuracy against steps and against seconds) and, with `--report`, a markdown table.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from ..errors import ConfigError
from ..lab.tasks import NOVEL_MOTION
from ..utils import atomic_write_text
from .bench import DEFAULT_ROWS, ROWS, bench_prompts, score_adapter, train_row
from .bench_common import bench_model, chosen_rows, model_label, row_folder, write_marked_section

SUBJECT_ROW = "motionbooth subject"
CURVE_ROWS = (*DEFAULT_ROWS, SUBJECT_ROW)


def row_curve(
    name: str,
    workdir: Path,
    model: str,
    steps: int | None,
    every: int,
    prompts: int,
    seeds: int,
    sampling: int,
    motion: str = NOVEL_MOTION,
    progress: bool = False,
) -> list[dict]:
    """Train row `name` with a checkpoint every `every` steps, then score each checkpoint; one dict per point
    (step 0 is the base model with the row's generation settings)."""
    if name == SUBJECT_ROW:
        return subject_curve(workdir, model, steps, every, prompts, seeds, sampling, progress)
    result, references, generation = train_row(
        ROWS[name], workdir, model, steps, motion=motion, checkpoint_every=every, progress=progress
    )
    clips = bench_prompts(prompts, motion)
    points = []
    for point, adapter in _checkpoints(result.adapter.parent, name):
        started = time.perf_counter()
        _, scores = score_adapter(model, adapter, clips, seeds, sampling, generation, references, motion)
        point = {
            **point,
            "motion_accuracy": scores["motion"],
            "appearance_accuracy": scores["appearance"],
            "copy_score": scores["copy"],
        }
        points.append(point)
        if progress:
            seconds = time.perf_counter() - started
            print(f"  step {point['step']}: motion {scores['motion']:.2f} ({seconds:.0f} s)", flush=True)
    return points


def subject_curve(
    workdir: Path, model: str, steps: int | None, every: int, prompts: int, seeds: int, sampling: int, progress: bool
) -> list[dict]:
    """MotionBooth's subject task (`bench motionbooth`) with a checkpoint every `every` steps; each point's
    `subject_accuracy` is the share of videos showing the learned subject (shape and colour right)."""
    from ..methods import load_adapter
    from . import api
    from .bench_motionbooth import ROWS as SUBJECT_ROWS
    from .bench_motionbooth import measure, train_subject

    row = SUBJECT_ROWS["subject, motionbooth"]
    result = train_subject(workdir, model, row, steps, None, checkpoint_every=every)
    points = []
    for point, adapter in _checkpoints(result.adapter.parent, SUBJECT_ROW):
        backbone = api.open_backbone(model)
        methods = [load_adapter(adapter, backbone)] if adapter is not None else []
        measured, _ = measure(backbone, row, methods, prompts, seeds, sampling)
        point = {
            **point,
            **{key: sum(m[key] for m in measured) / len(measured) for key in ("subject_accuracy", "motion_accuracy")},
            "background_leakage": sum(m["background_leakage"] for m in measured) / len(measured),
        }
        points.append(point)
        if progress:
            print(f"  step {point['step']}: subject {point['subject_accuracy']:.2f}", flush=True)
    return points


def _checkpoints(run: Path, row: str) -> list[tuple[dict, Path | None]]:
    """Step 0 (no adapter) and each checkpoint of the training run in `run`, each with the start of its point:
    row, step, and the training log's seconds and loss at that step."""
    log = [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]
    steps = [(0, None)] + [
        (int(folder.name.removeprefix("step-")), _adapter_of(folder))
        for folder in sorted((run / "checkpoints").glob("step-*"))
    ]
    return [
        (
            {
                "row": row,
                "step": step,
                "seconds": round(log[step - 1]["seconds"], 1) if step else 0.0,
                "loss": log[step - 1]["loss"] if step else None,
            },
            adapter,
        )
        for step, adapter in steps
    ]


def _adapter_of(checkpoint: Path) -> Path:
    """What a run would save at this checkpoint: the weight average when it keeps one, else the weights."""
    average = checkpoint / "ema.safetensors"
    return average if average.exists() else checkpoint / "adapter.safetensors"


def bench_curves(
    output: Path,
    model: str | None = None,
    rows: list[str] | None = None,
    steps: int | None = None,
    every: int = 25,
    prompts: int = 8,
    seeds: int = 2,
    sampling: int = 25,
    motion: str = NOVEL_MOTION,
    report: Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Learning curves of `rows` (default: every motion method on `motion`, and MotionBooth's subject); writes
    `output/results.json`, `output/curves.png` and the report section. Each row's points are kept in its
    folder (`points.json`) with the settings they were measured at; a rerun with the same settings reuses them,
    so rows can be added to a finished bench."""
    if every < 1:
        raise ConfigError(f"--every must be at least 1, got {every}")
    rows = chosen_rows(rows, CURVE_ROWS) if rows else list(CURVE_ROWS)
    output = Path(output)
    model = bench_model(model, output)
    settings = {"model": str(model), "steps": steps, "every": every, "prompts": prompts, "seeds": seeds}
    settings |= {"sampling": sampling, "motion": motion}
    points = []
    for index, name in enumerate(rows):
        folder = output / row_folder(name, {})
        saved = folder / "points.json"
        if saved.is_file() and json.loads(saved.read_text()).get("settings") == settings:
            points += json.loads(saved.read_text())["points"]
            continue
        if progress:
            print(f"[{index + 1}/{len(rows)}] {name}", flush=True)
        row_points = row_curve(name, folder, model, steps, every, prompts, seeds, sampling, motion, progress)
        atomic_write_text(saved, json.dumps({"settings": settings, "points": row_points}, indent=2))
        points += row_points
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "results.json", json.dumps(points, indent=2))
    plot_curves(points, output / "curves.png", motion)
    if report is not None:
        budget = f" --steps {steps}" if steps is not None else ""
        command = (
            f"motiontune bench curves --motion {shlex.quote(motion)}{budget} --every {every} --prompts {prompts} "
            f"--seeds {seeds}"
        )
        body = f"`{command}` on {model_label(model)} (plot: `curves.png` in the output folder):\n\n"
        write_marked_section(report, BEGIN, END, body + markdown_table(points), "Learning curves")
    return points


def plot_curves(points: list[dict], path: Path, motion: str) -> Path:
    """Motion accuracy against steps (left) and training seconds (right), one line per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for name in dict.fromkeys(point["row"] for point in points):
        row = [point for point in points if point["row"] == name]
        accuracy = [point[_curve_key(point)] for point in row]
        label = f"{name} (subject accuracy)" if name == SUBJECT_ROW else name
        axes[0].plot([point["step"] for point in row], accuracy, marker="o", label=label)
        axes[1].plot([point["seconds"] for point in row], accuracy, marker="o", label=label)
    axes[0].set_xlabel("training steps")
    axes[1].set_xlabel("training seconds (2 CPU cores)")
    axes[0].set_ylabel(f"motion accuracy ({motion}); subject accuracy")
    axes[0].set_ylim(-0.02, 1.02)
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _curve_key(point: dict) -> str:
    """What a point's curve plots: subject accuracy for MotionBooth's subject, motion accuracy otherwise."""
    return "subject_accuracy" if point["row"] == SUBJECT_ROW else "motion_accuracy"


def markdown_table(points: list[dict]) -> str:
    """One line per point; "-" where a score does not apply to the row."""

    def cell(point: dict, key: str) -> str:
        return f"{point[key]:.2f}" if key in point else "-"

    header = "| row | step | train s | motion acc. | subject acc. | appearance acc. | copy |\n"
    header += "| --- | --- | --- | --- | --- | --- | --- |\n"
    return header + "".join(
        f"| {p['row']} | {p['step']} | {p['seconds']} | {cell(p, 'motion_accuracy')} | {cell(p, 'subject_accuracy')} | "
        f"{cell(p, 'appearance_accuracy')} | {cell(p, 'copy_score')} |\n"
        for p in points
    )


BEGIN, END = "<!-- bench-curves:begin -->", "<!-- bench-curves:end -->"
