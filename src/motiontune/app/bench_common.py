"""What the `motiontune bench` tasks share: row checks, one fresh process per row, `results.json`, and the
report section between markers."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError
from ..utils import atomic_write_text
from .api import DEFAULT_SHIPPED_MODEL, default_model_dir, shipped_model_name


def chosen_rows(rows: list[str] | None, known: Iterable[str]) -> list[str]:
    """The requested rows (all `known` ones when None); an unknown name is a ConfigError."""
    known = list(known)
    rows = rows or known
    unknown = [r for r in rows if r not in known]
    if unknown:
        raise ConfigError(f"unknown bench row(s) {', '.join(unknown)} (known: {'; '.join(known)})")
    return rows


def default_or_tiny_model(output: Path) -> tuple[Path, bool]:
    """The shipped model, else a tiny random one built (once) under `output/model`."""
    from ..lab.tiny import build_tiny_model

    try:
        return default_model_dir(), True
    except ConfigError:
        model = output / "model"
        if not (model / "model_index.json").exists():
            build_tiny_model(model)
        return model, False


def bench_model(model: str | None, output: Path) -> str:
    """The model folder to bench: `model`, else the shipped model, else a tiny random one under `output`."""
    if model is not None:
        return model
    return str(default_or_tiny_model(output)[0])


def model_clip(model: str | os.PathLike | None) -> tuple[int, int, float]:
    """The frames, frame size (square) and guidance scale the benches use on `model` (None: the shipped one): its
    native clip and sampling guidance as its `motiontune.json` states them, else the shipped model's 8 frames of
    32 x 32 at guidance 7.5."""
    from ..settings import ModelDefaults

    defaults = ModelDefaults.read(Path(model) if model is not None else default_model_dir())
    frames, size = defaults.native.get("frames", 8), defaults.native.get("height", 32)
    return int(frames), int(size), float(defaults.generation.get("guidance_scale", 7.5))


def model_label(model: str) -> str:
    """How a report names the benched model folder: "the shipped model" for the package's own, else its path."""
    name = shipped_model_name(model)
    if name is None:
        return f"`{model}`"
    return "the shipped model" if name == DEFAULT_SHIPPED_MODEL else f"the shipped {name} model"


def run_rows(
    bench: str,
    rows: list[str],
    output: Path,
    options: dict[str, object],
    progress: bool,
    variants: list[dict[str, object]] | None = None,
) -> list[dict]:
    """Run each row (once per variant: extra options such as a motion and a training seed) as
    `motiontune bench <bench> --row NAME --output output/<row and variant> <options>` in a fresh process (so its peak
    memory is its own), collect the JSON line each prints, write `output/results.json`.

    Each finished row also leaves `result.json` in its folder (named after the row and variant) with its
    command; a rerun with the same command reuses it, so an interrupted or extended bench (more seeds or
    motions) continues where it stopped."""
    jobs = [(name, variant) for name in rows for variant in (variants or [{}])]
    results = []
    for index, (name, variant) in enumerate(jobs):
        folder = output / row_folder(name, variant)
        command = [sys.executable, "-m", "motiontune.app.cli", "bench", bench, "--row", name, "--output", str(folder)]
        command += [str(part) for flag, value in {**options, **variant}.items() for part in (flag, value)]
        saved = folder / "result.json"
        if saved.is_file() and _same_run(json.loads(saved.read_text()).get("command"), command[1:]):
            results.append(json.loads(saved.read_text())["result"])
            continue
        if progress:
            detail = " ".join(f"{flag} {value}" for flag, value in variant.items())
            print(f"[{index + 1}/{len(jobs)}] {name} {detail}".rstrip(), flush=True)
        finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if finished.returncode != 0:
            last = (finished.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"bench row '{name}' failed: {last}")
        result = json.loads(finished.stdout.strip().splitlines()[-1])
        atomic_write_text(saved, json.dumps({"command": command[1:], "result": result}))
        results.append(result)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "results.json", json.dumps(results, indent=2))
    return results


def _same_run(saved: list[str] | None, command: list[str]) -> bool:
    """Whether a saved row command is `command`, whatever the output folder was called (relative or absolute:
    the saved result sits in the folder either way)."""

    def without_output(parts: list[str]) -> list[str]:
        index = parts.index("--output") if "--output" in parts else len(parts)
        return parts[:index] + parts[index + 2 :]

    return saved is not None and without_output(saved) == without_output(command)


def row_folder(name: str, variant: dict[str, object]) -> str:
    """A folder name for one row and variant, e.g. `newmove-no-regularization--motion-orbit--training-seed-1`."""
    parts = [name, *(f"{flag.strip('-')} {value}" for flag, value in variant.items())]
    return "--".join(_slug(part) for part in parts)


def _slug(text: str) -> str:
    """Lower-case letters and digits joined by dashes; a `path:` motion, whose signs and decimals the slug would
    lose, keeps a short hash of its text so that two paths never share a folder."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if "path:" in text:
        slug = f"{slug[:40].rstrip('-')}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"
    return slug


def wilson_interval(successes: float, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% for z = 1.96) of a proportion `successes / total`."""
    if total == 0:
        return (0.0, 1.0)
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * ((share * (1 - share) / total + z * z / (4 * total * total)) ** 0.5) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def write_marked_section(report: Path, begin: str, end: str, body: str, heading: str) -> None:
    """Replace what stands between the `begin` and `end` markers of `report` with `body`, or append the
    section under `## heading` when the markers are not there yet; atomic write."""
    report = Path(report)
    section = f"{begin}\n{body}{end}"
    text = report.read_text() if report.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + f"## {heading}\n\n{section}\n"
    atomic_write_text(report, text)
