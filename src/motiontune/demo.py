"""`motiontune demo`: the main job end to end on the shipped default, measured, with a report.

Renders ShapeWorld reference clips of a novel motion (zigzag, never seen by the base model),
customizes the model with NewMove, generates new prompts with and without the adapter, and scores
both with the analytic metrics: motion accuracy (the generated object zigzags), appearance accuracy
(colour and shape follow the prompt) and copy score (colour or shape taken from the references).
Without a shipped model it builds a tiny random one, so the numbers then only show the pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .shapeworld import Clip, sample_clips, write_dataset

TOKEN = "sks"
SUBJECT_LOOK = ("colour", "shape")  # what NewMove's copy score is about: the subject, not the background
NOVEL_MOTION = "zigzag"
REFERENCE_LOOK = {"shapes": ("circle", "triangle"), "colours": ("red", "green")}
PROMPTS = [
    Clip("square", "blue", "gray", NOVEL_MOTION),
    Clip("square", "yellow", "black", NOVEL_MOTION),
    Clip("square", "blue", "white", NOVEL_MOTION),
    Clip("square", "yellow", "gray", NOVEL_MOTION),
]


def write_task(folder: Path, frames: int, size: int) -> tuple[list[Clip], Path, Path]:
    """The zigzag task: 4 reference clips (red/green circles and triangles, captioned with the token) and
    4 regularization clips of known motions; returns the reference clips and both folders."""
    references = sample_clips(4, 0, motions=(NOVEL_MOTION,), backgrounds=("white", "black", "gray"), **REFERENCE_LOOK)
    reference_dir = write_dataset(folder / "reference", references, frames, size, token=TOKEN)
    regularization = sample_clips(4, 1, motions=("left", "right", "up", "down"), backgrounds=("white", "gray"))
    return references, reference_dir, write_dataset(folder / "regularization", regularization, frames, size)


def task_scores(predicted: list[dict], prompts: list[Clip], references: list[Clip]) -> dict[str, float]:
    """Motion accuracy (the object zigzags), appearance accuracy (colour and shape follow the prompt) and
    copy score (colour or shape taken from the references instead of the prompt) of evaluated videos."""
    from .evaluation import copy_rates

    copies = copy_rates(predicted, [c.to_dict() for c in prompts], [c.to_dict() for c in references], SUBJECT_LOOK)
    return {
        "motion": float(np.mean([p["motion"] == NOVEL_MOTION for p in predicted])),
        "appearance": float(np.mean([p["correct"]["colour"] and p["correct"]["shape"] for p in predicted])),
        "copy": copies["any"],
    }


def default_or_tiny_model(output: Path) -> tuple[Path, bool]:
    """The shipped model, else a tiny random one built (once) under `output/model`."""
    from .api import default_model_dir
    from .errors import ConfigError
    from .tiny import build_tiny_model

    try:
        return default_model_dir(), True
    except ConfigError:
        model = output / "model"
        if not (model / "model_index.json").exists():
            build_tiny_model(model)
        return model, False


def run_demo(output: Path, steps: int | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Customize the default model with NewMove on zigzag clips, generate, measure and report."""
    from . import api
    from .evaluation import evaluate_video
    from .video import write_contact_sheet

    output = Path(output)
    steps = steps or 150
    model, shipped = default_or_tiny_model(output)
    frames, size, sampling_steps = 8, 32, 25
    references, reference_dir, regularization_dir = write_task(output, frames, size)
    started = time.perf_counter()
    result = api.train(
        "newmove",
        data=reference_dir,
        reg_data=regularization_dir,
        output=output / "newmove",
        model=model,
        token=TOKEN,
        steps=steps,
        frames=frames,
        height=size,
        width=size,
        learning_rate=1e-3,
        checkpoint_every=max(steps // 2, 1),
        overwrite=True,
        device=device,
        progress=progress,
    )
    train_seconds = time.perf_counter() - started
    rows, labels, scores = [], [], {}
    for name, adapters in (("base", []), ("newmove", [result.adapter])):
        predicted = []
        for index, clip in enumerate(PROMPTS):
            prompt = clip.caption(TOKEN)
            paths = api.generate(
                prompt,
                output / "videos" / f"{name}_{index}.mp4",
                model=model,
                adapters=adapters,
                frames=frames,
                height=size,
                width=size,
                steps=sampling_steps,
                seed=index,
                device=device,
                progress=progress,
            )
            video = _read_gif(paths["gif"])
            predicted.append(evaluate_video(video, clip))
            rows.append(video)
            labels.append(f"{name}: {prompt}")
        scores[name] = task_scores(predicted, PROMPTS, references)
    sheet = write_contact_sheet(rows, output / "contact_sheet.png", labels=labels)
    reference_rows = [_read_mp4(p) for p in sorted(reference_dir.glob("*.mp4"))]
    reference_sheet = write_contact_sheet(reference_rows, output / "reference_sheet.png")
    report = _report(result, train_seconds, scores, steps, shipped, model, sheet, reference_sheet)
    (output / "report.md").write_text(report)
    print(report)
    return output / "report.md"


def _read_gif(path: Path) -> np.ndarray:
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def _read_mp4(path: Path) -> np.ndarray:
    from .video import count_frames, frames_to_uint8, read_video

    frames = count_frames(path)
    return frames_to_uint8(read_video(path, frames, 32, 32))


def _report(result, train_seconds, scores, steps, shipped, model, sheet, reference_sheet) -> str:
    model_line = (
        f"Model: the shipped ShapeWorld base model (`{model}`)."
        if shipped
        else "Model: a tiny random UNet3D built from config (no ShapeWorld model is shipped in this install),\n"
        "so the videos are noise and the scores only show that the pipeline runs."
    )
    lines = [
        "# motiontune demo: teach a ShapeWorld model to zigzag",
        "",
        model_line,
        f"Reference clips: 4 {NOVEL_MOTION} clips of red/green circles/triangles captioned `... doing {TOKEN} ...`;",
        "prompts ask for blue/yellow squares; copy score = share of videos whose object takes the references'",
        "colour or shape instead of the prompt's.",
        "",
        "| model | motion accuracy | appearance accuracy | copy score |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {s['motion']:.2f} | {s['appearance']:.2f} | {s['copy']:.2f} |" for name, s in scores.items()),
        "",
        "| training | value |",
        "| --- | --- |",
        f"| NewMove steps | {steps} |",
        f"| loss, first 10% -> last 10% of steps | {result.first_loss:.4f} -> {result.last_loss:.4f} |",
        f"| time (s, incl. latent encoding) | {train_seconds:.1f} |",
        f"| adapter size (MB) | {result.adapter_megabytes:.2f} |",
        "",
        f"Reference clips: `{reference_sheet.name}`; generated videos: `{sheet.name}` and `videos/`.",
    ]
    return "\n".join(lines) + "\n"
