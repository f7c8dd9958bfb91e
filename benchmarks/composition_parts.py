"""Which part of the demo's composition costs what? Its parts one at a time, on a finished demo's adapters.

`motiontune demo` composes, in one generate call, the MotionBooth subject adapter (`pll` star), the NewMove
zigzag adapter, boxes along a zigzag and a camera pan, and scores the result against the base model. This script
takes a finished demo folder and generates the same prompt with each subset of those parts (the base model alone,
each adapter alone, both adapters, both with the boxes, both with the pan, everything, the pan on the base model),
`--seeds` videos each, and scores them as the demo does: subject correct, zigzag, box IoU, pan error and the share
of videos whose background reads textured (the pan is measured on the texture). `--motion motion-inversion` swaps
the NewMove adapter for the demo's Motion Inversion one.

    python benchmarks/composition_parts.py --demo motiontune-demo --seeds 4
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from motiontune.app.api import model_folder
from motiontune.app.bench_common import default_or_tiny_model
from motiontune.app.demo import COMPOSED, composition_request, composition_scores, generate_composition
from motiontune.errors import ConfigError, MotiontuneError

PARTS = ("base", "subject", "motion", "both", "both + boxes", "both + camera", "all", "base + camera")


def part_options(part: str, subject: Path, motion: Path, path) -> dict:
    """The generate options of one part: its adapters, boxes and camera pan."""
    adapters = {"subject": [subject], "motion": [motion]}.get(part, [subject, motion])
    options = {} if part.startswith("base") else {"adapters": adapters}
    if part in ("both + boxes", "all"):
        options["boxes"] = [path]
    if part.endswith("camera") or part == "all":
        options["camera_speed"] = COMPOSED.camera
    return options


def measure(
    demo: Path,
    seeds: int,
    motion_method: str = "newmove",
    steps: int | None = None,
    model: str | None = None,
    parts: tuple[str, ...] = PARTS,
) -> dict:
    """Scores of every part over `seeds` seeds: `{"parts": {part: {score: value}}, ...}`. `model`: the model the
    demo ran on (default: what `motiontune demo` uses, the shipped model)."""
    demo = Path(demo)
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise ConfigError(f"--parts: unknown part '{unknown[0]}' (known: {', '.join(PARTS)})")
    if not demo.is_dir():
        raise ConfigError(f"--demo {demo}: no such folder (run `motiontune demo --output {demo}` first)")
    subject, motion = demo / "motionbooth" / "adapter.safetensors", demo / motion_method / "adapter.safetensors"
    for adapter in (subject, motion):
        if not adapter.is_file():
            raise ConfigError(f"--demo {demo}: no {adapter.relative_to(demo)} (run `motiontune demo` there first)")
    model = model_folder(model) if model is not None else default_or_tiny_model(demo)[0]
    prompt, path, filmed = composition_request(model)
    report = {"prompt": prompt, "seeds": seeds, "motion adapter": motion_method, "parts": {}}
    for part in parts:
        prefix = demo / "composition-parts" / part.replace(" + ", "-")
        videos = generate_composition(prefix, model, part_options(part, subject, motion, path), seeds, steps)
        scores = composition_scores(videos, filmed)
        report["parts"][part] = {name: round(float(value), 3) for name, value in scores.items()}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", default="motiontune-demo", help="a finished demo's output folder")
    parser.add_argument("--seeds", type=int, default=4, help="videos per part (seeds 0..N-1)")
    parser.add_argument(
        "--motion", default="newmove", choices=("newmove", "motion-inversion"), help="the demo's motion adapter to use"
    )
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--model", default=None, help="the demo's --model (default: the shipped model)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to generate (default: all)")
    args = parser.parse_args()
    try:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
        parts = tuple(part.strip() for part in args.parts.split(","))
        report = measure(Path(args.demo), args.seeds, args.motion, args.steps, args.model, parts)
        print(json.dumps(report, indent=2))
    except MotiontuneError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
