"""What the `motiontune bench` tasks share: row checks, one fresh process per row, `results.json`, and the
report section between markers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError


def chosen_rows(rows: list[str] | None, known: Iterable[str]) -> list[str]:
    """The requested rows (all `known` ones when None); an unknown name is a ConfigError."""
    known = list(known)
    rows = rows or known
    unknown = [r for r in rows if r not in known]
    if unknown:
        raise ConfigError(f"unknown bench row(s) {', '.join(unknown)} (known: {'; '.join(known)})")
    return rows


def bench_model(model: str | None, output: Path) -> str:
    """The model folder to bench: `model`, else the shipped model, else a tiny random one under `output`."""
    if model is not None:
        return model
    from .demo import default_or_tiny_model

    return str(default_or_tiny_model(output)[0])


def model_label(model: str) -> str:
    """How a report names the benched model folder: "the shipped model" for the package's own, else its path."""
    from .api import default_model_dir

    try:
        shipped = default_model_dir().resolve()
    except ConfigError:
        return f"`{model}`"
    return "the shipped model" if Path(model).resolve() == shipped else f"`{model}`"


def run_rows(bench: str, rows: list[str], output: Path, options: dict[str, object], progress: bool) -> list[dict]:
    """Run each row as `motiontune bench <bench> --row NAME --output output/row-<i> <options>` in a fresh
    process (so its peak memory is its own), collect the JSON line each prints, write `output/results.json`."""
    results = []
    for index, name in enumerate(rows):
        if progress:
            print(f"[{index + 1}/{len(rows)}] {name}", flush=True)
        command = [sys.executable, "-m", "motiontune.cli", "bench", bench, "--row", name]
        command += ["--output", str(output / f"row-{index}")]
        command += [str(part) for flag, value in options.items() for part in (flag, value)]
        finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if finished.returncode != 0:
            last = (finished.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"bench row '{name}' failed: {last}")
        results.append(json.loads(finished.stdout.strip().splitlines()[-1]))
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    return results


def write_marked_section(report: Path, begin: str, end: str, body: str, heading: str) -> None:
    """Replace what stands between the `begin` and `end` markers of `report` with `body`, or append the
    section under `## heading` when the markers are not there yet; atomic write."""
    from .utils import atomic_write_text

    report = Path(report)
    section = f"{begin}\n{body}{end}"
    text = report.read_text() if report.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + f"## {heading}\n\n{section}\n"
    atomic_write_text(report, text)
