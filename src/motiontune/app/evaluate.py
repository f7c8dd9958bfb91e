"""`motiontune evaluate`: the papers' metrics on any videos, from local weights, written as a report.

Per video, every score its inputs allow (`metrics`): CLIP-T (with a prompt and `--clip`), temporal consistency
(CLIP and DINO), R-CLIP / R-DINO (with `--subject-images`, cropped at `--boxes`), motion fidelity and appearance
leakage (with `--reference`), camera travel and its error (`--camera-speed`), dynamic degree (always). Written to
the output folder: `metrics.json` (per video, per frame, and the means), `report.md` (a table), `per-frame.png`
(similarity curves) and, with a reference, `tracks-NAME.png` (the reference's and the video's point tracks).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from ..control import read_script
from ..errors import ConfigError, InputError
from ..io.video import IMAGE_EXTENSIONS, read_image_uint8, read_native_video
from ..metrics import embeddings, flow, tracks
from ..utils import atomic_directory, check_writable_folder

#: what `--shapeworld` reads of each video
SHAPEWORLD_ATTRIBUTES = ("colour", "shape", "background", "motion")
#: the scores of one video, in report order, with what each needs
SCORES = {
    "clip_t": "CLIP-T (prompt)",
    "temporal_consistency_clip": "temporal consistency, CLIP",
    "temporal_consistency_dino": "temporal consistency, DINO",
    "r_clip": "R-CLIP (subject images)",
    "r_dino": "R-DINO (subject images)",
    "motion_fidelity": "motion fidelity (reference)",
    "leakage_clip": "appearance leakage, CLIP (reference)",
    "leakage_dino": "appearance leakage, DINO (reference)",
    "camera_error": "camera error (camera speed)",
    "dynamic_degree": "dynamic degree",
}


@dataclass
class EvaluationInputs:
    """What `motiontune evaluate` is given besides the videos."""

    reference: Path | None = None
    prompts: list[str] | None = None
    subject_images: Path | None = None
    boxes: Path | None = None
    camera_speed: tuple[float, float] | None = None
    clip: Path | None = None
    dino: Path | None = None
    tracker: str | None = None
    #: also read each video as the ShapeWorld lab does (the object's colour, shape, background and motion)
    shapeworld: bool = False
    skipped: list[str] = field(default_factory=list)


def prompts_from_file(path: Path, videos: int) -> list[str]:
    """One prompt per line, one line per video (or one line for all)."""
    if not Path(path).is_file():
        raise InputError(f"--prompts {path}: file does not exist")
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(lines) == 1:
        return lines * videos
    if len(lines) != videos:
        raise InputError(f"--prompts {path}: {len(lines)} prompts for {videos} videos (give one per video, or one)")
    return lines


def _subject_images(folder: Path) -> list[np.ndarray]:
    if not Path(folder).is_dir():
        raise InputError(f"--subject-images {folder}: not a folder")
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise InputError(f"--subject-images {folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return [read_image_uint8(path) for path in files]


def _script_boxes(path: Path, frames: int) -> np.ndarray:
    """Boxes `(F, S, 4)` per frame and subject from a control script (the file `generate --script` reads)."""
    script = read_script(path)
    if not script.subjects:
        raise InputError(f"--boxes {path}: the script has no subject boxes")
    return np.stack([subject.boxes(frames).numpy() for subject in script.subjects], axis=1)


def requested_attributes(prompt: str | None) -> dict[str, str]:
    """What a ShapeWorld prompt asks for, as far as its words say: colour, shape, background ("on a W background")
    and motion (a known motion's phrase, or "moving in a/an M" for a novel one; a motion token names none)."""
    from ..lab.shapeworld import BACKGROUNDS, COLOURS, MOTION_PHRASES, NOVEL_MOTIONS, NOVEL_SHAPES, SHAPES

    words = (prompt or "").lower().split()
    text = " ".join(words)
    requested = {}
    for attribute, names in (("colour", COLOURS), ("shape", (*SHAPES, *NOVEL_SHAPES))):
        found = [word for word in words if word in names]
        if found:
            requested[attribute] = found[0]
    for name in BACKGROUNDS:
        if f"{name} background" in text:
            requested["background"] = name
    phrases = {phrase: motion for motion, phrase in MOTION_PHRASES.items()}
    phrases |= {f"moving in {article} {m}": m for m in NOVEL_MOTIONS for article in ("a", "an")}
    for phrase, motion in phrases.items():
        if phrase in text:
            requested["motion"] = motion
    return requested


def shapeworld_reading(video: np.ndarray, prompt: str | None) -> dict:
    """The ShapeWorld lab's reading of a video (`lab.evaluation.evaluate_video`): its object's colour, shape,
    background and motion, what the prompt asked for, and which of those it got right."""
    from ..lab.evaluation import evaluate_video as read_shapeworld

    requested = requested_attributes(prompt)
    result = read_shapeworld(video, requested or None)
    reading = {attribute: result[attribute] for attribute in SHAPEWORLD_ATTRIBUTES}
    return {**reading, "requested": requested, "correct": result.get("correct", {})}


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if values.size and not np.isnan(values).all() else math.nan


@dataclass
class Reference:
    """What every video is compared with, computed once: the reference video, its tracks and its frames' embeddings
    per model, and the subject images' embeddings per model."""

    video: np.ndarray | None = None
    tracks: tracks.Tracks | None = None
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    subject_embeddings: dict[str, torch.Tensor] = field(default_factory=dict)


def evaluate_video(
    video: np.ndarray,
    inputs: EvaluationInputs,
    prompt: str | None,
    models: dict[str, embeddings.Embedder],
    reference: Reference,
    tracker: tracks.Tracker,
) -> dict:
    """Every score the inputs allow for one video `(F, H, W, 3)` uint8: `{"scores": {...}, "per_frame": {...}}`.
    Each model embeds the video's frames once; the optical flow is computed once."""
    scores: dict[str, float] = {}
    per_frame: dict[str, list[float]] = {}
    boxes = _script_boxes(inputs.boxes, len(video)) if inputs.boxes is not None else None
    for name, model in models.items():
        key = name.lower()
        frames = model.images(list(video))
        if name == "CLIP" and prompt:
            per_frame["clip_t"] = embeddings.text_similarity(frames, model.texts([prompt])[0]).tolist()
        per_frame[f"temporal_consistency_{key}"] = embeddings.consecutive_similarity(frames).tolist()
        if name in reference.subject_embeddings:
            regions = frames if boxes is None else model.images(embeddings.box_crops(video, boxes[:, 0]))
            similarity = embeddings.subject_similarity(regions, reference.subject_embeddings[name])
            per_frame[f"r_{key}"] = similarity.tolist()
        if name in reference.embeddings:
            per_frame[f"leakage_{key}"] = embeddings.reference_similarity(frames, reference.embeddings[name]).tolist()
    for key, values in per_frame.items():
        scores[key] = _mean(values)
    result: dict = {"frames": len(video), "height": video.shape[1], "width": video.shape[2]}
    if reference.tracks is not None:
        generated_tracks = tracker(video)
        scores["motion_fidelity"], result["motion_fidelity_two_sided"] = tracks.motion_fidelities(
            reference.tracks, generated_tracks
        )
        result["moving_tracks"] = len(generated_tracks.complete(moving=tracks.MOVING))
        result["_tracks"] = generated_tracks
    flows = flow.optical_flow(video)
    travel = flow.camera_motion(video, boxes, flows)
    result["camera_motion"] = travel.tolist()
    if inputs.camera_speed is not None:
        scores["camera_error"] = flow.camera_error(travel, inputs.camera_speed)
    dynamic = flow.dynamic_degree(video, flows)
    scores["dynamic_degree"] = float(dynamic["dynamic"])
    result.update(flow_magnitude=dynamic["flow_magnitude"], moving_pairs=dynamic["moving_pairs"])
    return {**result, "scores": scores, "per_frame": per_frame}


def evaluate_videos(
    videos: list[Path], output: Path, inputs: EvaluationInputs, overwrite: bool = False, progress: bool = True
) -> dict:
    """Score `videos` and write the report into `output` (atomically; an existing report is kept unless
    `overwrite`). Returns the contents of `metrics.json`."""
    output = Path(output)
    check_writable_folder(output, "--output")
    if (output / "metrics.json").exists() and not overwrite:
        raise InputError(f"--output {output}: already holds a report; pass --overwrite to replace it")
    if inputs.prompts is not None and len(inputs.prompts) != len(videos):
        raise InputError(f"{len(inputs.prompts)} prompts for {len(videos)} videos")
    if inputs.camera_speed is not None and len(inputs.camera_speed) != 2:
        raise ConfigError(f"--camera-speed must be DX,DY, got {inputs.camera_speed}")
    if inputs.boxes is not None:
        read_script(inputs.boxes)
    subject_images = _subject_images(inputs.subject_images) if inputs.subject_images is not None else []
    tracker = tracks.load_tracker(inputs.tracker)
    models, skipped = {}, list(inputs.skipped)
    for name, folder in (("CLIP", inputs.clip), ("DINO", inputs.dino)):
        model, reason = embeddings.load_embedder(name, folder)
        if model is None:
            skipped.append(reason)
        else:
            models[name] = model
    reference = Reference()
    if inputs.reference is not None:
        reference.video = read_native_video(inputs.reference)
        reference.tracks = tracker(reference.video)
        reference.embeddings = {name: model.images(list(reference.video)) for name, model in models.items()}
    if subject_images:
        reference.subject_embeddings = {name: model.images(subject_images) for name, model in models.items()}
    if reference.video is None:
        skipped.append("motion fidelity and appearance leakage skipped: no --reference video given")
    if not subject_images:
        skipped.append("R-CLIP / R-DINO skipped: no --subject-images folder given")
    if inputs.prompts is None and "CLIP" in models:
        skipped.append("CLIP-T skipped: no --prompt or --prompts given")
    rows = []
    for index, path in enumerate(tqdm(videos, desc="evaluating", disable=not progress)):
        video = read_native_video(path)
        prompt = inputs.prompts[index] if inputs.prompts is not None else None
        row = evaluate_video(video, inputs, prompt, models, reference, tracker)
        if inputs.shapeworld:
            row["shapeworld"] = shapeworld_reading(video, prompt)
        row["_video"] = video
        rows.append({"video": str(path), "prompt": prompt, **row})
    names = [key for key in SCORES if any(key in row["scores"] for row in rows)]
    means = {key: _mean([row["scores"].get(key, math.nan) for row in rows]) for key in names}
    report = {
        "videos": [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows],
        "mean": means,
        "skipped": skipped,
        "reference": str(inputs.reference) if inputs.reference is not None else None,
        "models": {name: str(model.folder) for name, model in models.items()},
        "tracker": inputs.tracker or "opencv-lucas-kanade",
    }
    with atomic_directory(output) as staging:
        (staging / "metrics.json").write_text(json.dumps(_without_nan(report), indent=2))
        (staging / "report.md").write_text(markdown_report(report, names))
        if any(row["per_frame"] for row in rows):
            plot_per_frame(rows, staging / "per-frame.png")
        for index, row in enumerate(rows):
            if "_tracks" in row:
                name = f"tracks-{index:02d}-{Path(row['video']).stem}.png"
                draw_tracks(reference.video, reference.tracks, row["_video"], row["_tracks"], staging / name)
    return report


def _without_nan(value):
    """JSON has no NaN: a score that could not be computed is null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _without_nan(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nan(item) for item in value]
    return value


def _cell(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def markdown_report(report: dict, names: list[str]) -> str:
    """The report as a markdown table: one row per video and the mean, then what was skipped and why."""
    header = ["video", *[SCORES[name] for name in names]]
    lines = ["# motiontune evaluate", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in report["videos"]:
        cells = [Path(row["video"]).name, *[_cell(row["scores"].get(name)) for name in names]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(_cell(report["mean"][name]) for name in names) + " |")
    readings = [row for row in report["videos"] if "shapeworld" in row]
    if readings:
        lines += ["", "ShapeWorld reading (what the lab's analytic metrics see; * where the prompt asked otherwise):"]
        lines += ["", "| video | " + " | ".join(SHAPEWORLD_ATTRIBUTES) + " |", "|" + " --- |" * 5]
        for row in readings:
            reading = row["shapeworld"]
            cells = [
                f"{reading[a]}" + ("" if reading["correct"].get(a, True) else f" * ({reading['requested'][a]})")
                for a in SHAPEWORLD_ATTRIBUTES
            ]
            lines.append(f"| {Path(row['video']).name} | " + " | ".join(cells) + " |")
    if report["reference"]:
        lines += ["", f"Reference: `{report['reference']}`; tracker: {report['tracker']}."]
    if report["skipped"]:
        lines += ["", "Skipped:", *[f"- {reason}" for reason in report["skipped"]]]
    return "\n".join(lines) + "\n"


def plot_per_frame(rows: list[dict], path: Path) -> None:
    """One panel per per-frame score, one line per video."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [key for key in SCORES if any(key in row["per_frame"] for row in rows)]
    figure, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for axis, key in zip(axes[0], keys, strict=True):
        for row in rows:
            if key in row["per_frame"]:
                axis.plot(row["per_frame"][key], marker="o", markersize=3, label=Path(row["video"]).name)
        axis.set_title(SCORES[key], fontsize=9)
        axis.set_xlabel("frame pair" if key.startswith("temporal") else "frame")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _track_panel(video: np.ndarray, found: tracks.Tracks, height: int = 256, most: int = 60) -> np.ndarray:
    """The first frame (scaled to `height`) with up to `most` of the tracks that motion fidelity reads drawn over it,
    blue to red in time."""
    scale = height / video.shape[1]
    panel = cv2.resize(video[0], (round(video.shape[2] * scale), height), interpolation=cv2.INTER_NEAREST)
    usable = found.complete(moving=tracks.MOVING) * np.array([video.shape[2], video.shape[1]]) * scale
    steps = max(1, usable.shape[1] - 2)
    for track in usable[:: max(1, len(usable) // most)]:
        for k in range(len(track) - 1):
            if np.isnan(track[k : k + 2]).any():
                continue
            colour = (int(255 * k / steps), 64, int(255 * (1 - k / steps)))
            start, end = tuple(np.round(track[k]).astype(int)), tuple(np.round(track[k + 1]).astype(int))
            cv2.line(panel, start, end, colour, 1, cv2.LINE_AA)
    return panel


def draw_tracks(
    reference: np.ndarray, reference_tracks: tracks.Tracks, video: np.ndarray, found: tracks.Tracks, path: Path
) -> None:
    """The reference's and the video's point tracks side by side, as a PNG."""
    panels = [_track_panel(reference, reference_tracks), _track_panel(video, found)]
    gap = np.full((256, 8, 3), 255, dtype=np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate([panels[0], gap, panels[1]], axis=1), cv2.COLOR_RGB2BGR))
