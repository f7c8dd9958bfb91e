"""Engine benchmark on CPU: NewMove training step and guided sampling step of the tiny UNet3D.

    python benchmarks/engine_cpu.py --output docs/benchmarks.md

For each case (a model config at F frames of H x W pixels) three configurations are measured, each
in a fresh subprocess (`--single CONFIG`) so that the process peak RSS belongs to that configuration
alone: a NewMove training step without and with gradient checkpointing, and a guided sampling step.
Models are random tiny UNet3D folders written by `motiontune.lab.tiny.build_tiny_model`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from motiontune.backbones.base import Backbone

MODELS: dict[str, dict] = {
    "tiny": {},
    "small": {"block_out_channels": (64, 128, 128)},
}
DEFAULT_CASES = "tiny:8x32x32,tiny:16x64x64,small:8x32x32"
KINDS = ("train", "train+ckpt", "sample")
CAPTION = "a red square doing sks"
RESULT_PREFIX = "RESULT "
SECTION = "## Engine on CPU"


def parse_case(text: str) -> tuple[str, int, int, int]:
    """`MODEL:FxHxW` (e.g. `tiny:8x32x32`) to `(model, frames, height, width)`."""
    match = re.fullmatch(r"(\w+):(\d+)x(\d+)x(\d+)", text.strip())
    if not match or match.group(1) not in MODELS:
        raise argparse.ArgumentTypeError(f"case must be MODEL:FxHxW with MODEL in {', '.join(MODELS)}, got {text!r}")
    model, frames, height, width = match.groups()
    return model, int(frames), int(height), int(width)


# --- one configuration, in its own process ------------------------------------------------------


def quiet_libraries() -> None:
    """Keep diffusers/transformers load chatter off stderr."""
    import warnings

    import diffusers
    import transformers

    warnings.filterwarnings("ignore")
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


class OtherCpu:
    """Share of the machine's CPU time that other processes used between `start` and `stop` (Linux /proc/stat)."""

    def __init__(self) -> None:
        self.begin: tuple[float, float, float] | None = None
        self.share: float | None = None

    @staticmethod
    def _now() -> tuple[float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = sum(fields) - fields[3] - fields[4] - sum(fields[8:])  # less idle, iowait and guest (in user)
        return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()

    def start(self) -> None:
        try:
            self.begin = self._now()
        except (OSError, ValueError, IndexError):
            self.begin = None

    def stop(self) -> None:
        if self.begin is None:
            return
        wall, busy, own = (b - a for a, b in zip(self.begin, self._now(), strict=True))
        self.share = max(0.0, busy - own) / (wall * (os.cpu_count() or 1)) if wall > 0 else None


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "samples": len(ms)}


def measure_training(backbone: Backbone, config: dict) -> dict:
    """Median time of a NewMove step (forward, backward, grad clip, AdamW) as in `training.train`'s loop."""
    import torch

    from motiontune.methods import create_method
    from motiontune.training import Example, _draw_batch

    method = create_method("newmove", backbone, token="sks")
    method.prepare_for_training()
    if config["checkpointing"]:
        backbone.enable_gradient_checkpointing()
    learning_rate = method.default_learning_rate
    groups = method.parameter_groups(learning_rate)
    trainable = [p for group in groups for p in group["params"] if p.requires_grad]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=1e-2)

    h, w = backbone.latent_size(config["height"], config["width"])
    with torch.no_grad():
        text = backbone.encode_prompt([CAPTION])[0]
    latents = torch.randn(backbone.latent_channels, config["frames"], h, w)
    examples = [Example(latents, CAPTION, text, "target", "random")]
    generator = torch.Generator().manual_seed(0)
    baseline = rss_mb()

    backbone.denoiser.train()
    times = []
    other = OtherCpu()
    for index in range(config["warmup"] + config["steps"]):
        if index == config["warmup"]:
            other.start()
        started = time.perf_counter()
        batch = _draw_batch(examples, 1, generator, backbone.device)
        loss = method.loss(batch, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if index >= config["warmup"]:
            times.append(time.perf_counter() - started)
    other.stop()
    return {
        **_summary(times),
        "other_cpu": other.share,
        "baseline_mb": baseline,
        "unet_parameters": sum(p.numel() for p in backbone.denoiser.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
    }


def measure_sampling(backbone: Backbone, config: dict) -> dict:
    """Time per step of `sample` (CFG pair in one UNet call + DDIM step), after a warm-up call."""
    import torch

    from motiontune.sampling import make_scheduler, sample

    h, w = backbone.latent_size(config["height"], config["width"])
    with torch.no_grad():
        text = backbone.encode_prompt([CAPTION])
        uncond = backbone.encode_prompt([""])
    shape = (1, backbone.latent_channels, config["frames"], h, w)
    generator = torch.Generator().manual_seed(0)
    baseline = rss_mb()

    def run(steps: int) -> float:
        latents = torch.randn(shape, generator=generator)
        scheduler = make_scheduler(backbone, "ddim")
        started = time.perf_counter()
        sample(backbone, latents, text, uncond, scheduler, steps, 9.0, generator, progress=False)
        return time.perf_counter() - started

    run(max(1, config["sample_warmup_steps"]))
    steps = config["sample_steps"]
    other = OtherCpu()
    other.start()
    per_step = [run(steps) / steps for _ in range(config["sample_repeats"])]
    other.stop()
    return {**_summary(per_step), "other_cpu": other.share, "baseline_mb": baseline}


def rss_mb() -> float:
    """Current resident set size in MB (Linux), else the peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        from motiontune.utils import peak_memory_mb

        return peak_memory_mb("cpu")


def run_single(config: dict) -> dict:
    """Measure one configuration in this process and return its numbers."""
    quiet_libraries()
    import torch

    from motiontune.app.api import open_backbone
    from motiontune.utils import peak_memory_mb

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    started = time.perf_counter()
    backbone = open_backbone(config["model_dir"], "cpu")
    loaded_mb = peak_memory_mb("cpu")
    measure = measure_sampling if config["kind"] == "sample" else measure_training
    result = measure(backbone, config)
    return {
        **result,
        "peak_mb": peak_memory_mb("cpu"),
        "loaded_peak_mb": loaded_mb,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - started,
    }


# --- the driver ---------------------------------------------------------------------------------


def run_subprocess(config: dict, label: str, script: Path = Path(__file__)) -> dict:
    """Re-invoke `script` (this one by default) with `--single` and parse its JSON result line; `label` names
    the configuration when it fails."""
    command = [sys.executable, str(script.resolve()), "--single", json.dumps(config)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
        raise RuntimeError(f"{label} failed (exit {done.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def reproduction(script: str, argv: list[str], facts: dict[str, str], wall: float, where: str = "") -> str:
    """The report's opening: the command that reproduces it, when and `where` it ran, and the machine facts."""
    command = shlex.join(["python", script, *argv])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fact_lines = "\n".join(f"- {key}: {value}" for key, value in facts.items())
    return f"""Reproduce (from the repository root, in the project's virtual environment):

```
{command}
```

Run {stamp}{where}, {wall:.0f} s wall time.

{fact_lines}"""


def machine_facts(threads: int | None) -> dict[str, str]:
    """CPU model, core counts, memory and library versions of this machine."""
    import diffusers
    import torch

    cpu = platform.processor() or "unknown"
    memory = "unknown"
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        cpu = names[0].strip() if names else cpu
        kilobytes = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        memory = f"{int(kilobytes.group(1)) / 2**20:.1f} GiB" if kilobytes else memory
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": cpu,
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "torch threads": f"{threads} (set with --threads)"
        if threads
        else f"{torch.get_num_threads()} (default, `torch.set_num_threads` not called)",
        "memory": memory,
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}",
        "platform": platform.platform(),
    }


def _percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f} M"


def _peak(result: dict) -> str:
    """Peak RSS and, in brackets, its growth over the RSS just before the measured loop."""
    return f"{result['peak_mb']:.0f} (+{result['peak_mb'] - result['baseline_mb']:.0f})"


def case_label(case: tuple[str, int, int, int], scale: int) -> str:
    model, frames, height, width = case
    return f"{model} {frames}×{height}×{width} ({frames}×{height // scale}×{width // scale} latent)"


def results_table(cases: list[tuple], results: dict, scale: int) -> str:
    """The main markdown table: one row per case."""
    header = (
        "| model, clip F×H×W | UNet params | trainable (NewMove) | train ms/step | train ms/step, ckpt "
        "| ckpt time | peak RSS MB, train | peak RSS MB, train ckpt | sample ms/step | peak RSS MB, sample |"
    )
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for case in cases:
        plain, ckpt, samp = (results[(case, kind)] for kind in KINDS)
        rows.append(
            f"| {case_label(case, scale)} | {_millions(plain['unet_parameters'])} "
            f"| {_millions(plain['trainable_parameters'])} | {plain['median_ms']:.0f} | {ckpt['median_ms']:.0f} "
            f"| {ckpt['median_ms'] / plain['median_ms']:.2f}× | {_peak(plain)} | {_peak(ckpt)} "
            f"| {samp['median_ms']:.0f} | {_peak(samp)} |"
        )
    return "\n".join(rows)


def details_table(cases: list[tuple], results: dict, scale: int) -> str:
    """Every configuration: median, min and max time, peak RSS and the 1-minute load average after it."""
    rows = [
        "| case | configuration | median ms | min ms | max ms | timed | peak RSS MB | RSS before loop MB | other CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        for kind in KINDS:
            r = results[(case, kind)]
            rows.append(
                f"| {case_label(case, scale)} | {kind} | {r['median_ms']:.0f} | {r['min_ms']:.0f} | {r['max_ms']:.0f} "
                f"| {r['samples']} | {r['peak_mb']:.0f} | {r['baseline_mb']:.0f} | {_percent(r['other_cpu'])} |"
            )
    return "\n".join(rows)


def interpretation(cases: list[tuple], results: dict, scale: int) -> str:
    """One or two sentences computed from the numbers: what checkpointing costs and saves at the largest case."""
    largest = max(cases, key=lambda case: (case[1] * case[2] * case[3], len(MODELS[case[0]])))
    plain, ckpt, samp = (results[(largest, kind)] for kind in KINDS)
    grow_plain = plain["peak_mb"] - plain["baseline_mb"]
    grow_ckpt = ckpt["peak_mb"] - ckpt["baseline_mb"]
    saves = "cuts" if grow_ckpt < grow_plain else "does not cut"
    baseline = min(r["baseline_mb"] for r in results.values())
    text = (
        f"At the largest case ({case_label(largest, scale)}), gradient checkpointing makes a NewMove step "
        f"{ckpt['median_ms'] / plain['median_ms']:.2f}× as long "
        f"({plain['median_ms']:.0f} → {ckpt['median_ms']:.0f} ms) "
        f"and {saves} the memory the step adds on top of the loaded model ({grow_plain:.0f} → {grow_ckpt:.0f} MB; "
        f"peak RSS {plain['peak_mb']:.0f} → {ckpt['peak_mb']:.0f} MB); in the smaller cases the "
        f"~{baseline:.0f} MB of the Python/torch process with the model loaded dominates the peak. "
        f"A guided sampling step (the CFG pair in one UNet call, no backward) takes "
        f"{samp['median_ms'] / plain['median_ms']:.0%} of a training step there."
    )
    shares = {key: r["other_cpu"] for key, r in results.items() if r["other_cpu"] is not None}
    if shares and max(shares.values()) > 0.1:
        (case, kind), worst = max(shares.items(), key=lambda item: item[1])
        text += (
            f"\n\n**Caveat:** other processes were busy during this run: they used up to {worst:.0%} of the machine's "
            f"CPU time during a timed loop ({case_label(case, scale)}, {kind}; column *other CPU* below). Those "
            "times are inflated and noisy (torch's OpenMP threads oversubscribe the cores); compare the min column, "
            "or rerun on a quiet machine."
        )
    return text


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the `## Engine on CPU` section of `path`, atomically (temp file + os.replace)."""
    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(existing):
        updated = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", existing, count=1).rstrip("\n") + "\n"
    else:
        updated = existing.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            file.write(updated)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def run_all(args: argparse.Namespace) -> int:
    """Build the models, measure every configuration in a subprocess, print and write the tables."""
    quiet_libraries()
    from motiontune.lab.tiny import TINY_VAE, build_tiny_model

    scale = 2 ** (len(TINY_VAE["block_out_channels"]) - 1)
    cases = args.cases
    for _, _, height, width in cases:
        if height % (4 * scale) or width % (4 * scale):
            raise SystemExit(f"height and width must be multiples of {4 * scale} (VAE scale × 4 for the UNet)")
    facts = machine_facts(args.threads)
    started = time.perf_counter()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="motiontune-bench-") as folder:
        model_dirs = {
            name: str(build_tiny_model(Path(folder) / name, unet_config=MODELS[name], seed=0))
            for name in dict.fromkeys(case[0] for case in cases)
        }
        configs = [(case, kind) for case in cases for kind in KINDS]
        for index, (case, kind) in enumerate(configs, 1):
            model, frames, height, width = case
            config = {
                "case": f"{model}:{frames}x{height}x{width}",
                "kind": kind,
                "model_dir": model_dirs[model],
                "frames": frames,
                "height": height,
                "width": width,
                "checkpointing": kind == "train+ckpt",
                "warmup": args.warmup,
                "steps": args.steps,
                "sample_steps": args.sample_steps,
                "sample_repeats": args.sample_repeats,
                "sample_warmup_steps": args.sample_warmup_steps,
                "threads": args.threads,
            }
            print(f"[{index}/{len(configs)}] {config['case']} {kind} ...", end=" ", file=sys.stderr, flush=True)
            result = run_subprocess(config, f"configuration {config['case']} {kind}")
            results[(case, kind)] = result
            print(
                f"{result['median_ms']:.0f} ms/step (min {result['min_ms']:.0f}), peak RSS {result['peak_mb']:.0f} MB, "
                f"{result['seconds']:.1f} s, other CPU {_percent(result['other_cpu'])}",
                file=sys.stderr,
                flush=True,
            )
    wall = time.perf_counter() - started

    table = results_table(cases, results, scale)
    print(table)
    section = f"""{SECTION}

{reproduction("benchmarks/engine_cpu.py", args.argv, facts, wall)}

What is measured, for random tiny UNet3D models from `motiontune.lab.tiny.build_tiny_model` (`tiny` is its default
config, `small` sets `block_out_channels=(64, 128, 128)`), fp32 on CPU, batch of 1 clip, each configuration in a
fresh process:

- **train ms/step**: median over {args.steps} timed steps after {args.warmup} warm-up steps of the body of
  `training.train`'s loop for NewMove with default options (temporal layers + cross-attention k/v train): draw the
  batch, coarse-noise timestep, forward, MSE loss, backward, grad-norm clip at 1.0, AdamW step, zero grad. Latents and
  text embedding are cached as in training (no VAE or text encoder in the step). **ckpt**:
  the same with `backbone.enable_gradient_checkpointing()`; **ckpt time** is its ratio to the plain step.
- **sample ms/step**: time of `sampling.sample` (DDIM, guidance 9.0, both CFG halves in one UNet call) divided by
  its {args.sample_steps} steps, median of {args.sample_repeats} calls after a {args.sample_warmup_steps}-step warm-up.
- **peak RSS MB**: `utils.peak_memory_mb("cpu")` (process peak resident set) at the end; in brackets its growth
  over the RSS just before the timed loop (model, optimizer and inputs already in memory), i.e. roughly what the
  step itself needs.
- **UNet params**: all UNet parameters; **trainable**: those NewMove trains (temporal + cross-attention k/v).
- **other CPU** (details): share of the machine's CPU time used by other processes during the timed loop
  (from `/proc/stat`); well above 0% means the times were taken on a busy machine.

{table}

{interpretation(cases, results, scale)}

<details><summary>Every configuration</summary>

{details_table(cases, results, scale)}

</details>
"""
    if args.output is not None:
        write_section(args.output, section)
        print(f"wrote {args.output} ({wall:.0f} s)", file=sys.stderr)
    else:
        print(f"total {wall:.0f} s", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time and size NewMove training steps (with and without gradient checkpointing) and guided "
        "sampling steps of tiny UNet3D models on CPU; print a markdown table and optionally write it to a file.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown file whose '## Engine on CPU' section is written (e.g. docs/benchmarks.md)",
    )
    parser.add_argument(
        "--cases",
        type=lambda text: [parse_case(part) for part in text.split(",") if part.strip()],
        default=DEFAULT_CASES,
        help=f"comma-separated MODEL:FxHxW (pixels), MODEL in {', '.join(MODELS)} (default: {DEFAULT_CASES})",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first (default: 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps (default: 5)")
    parser.add_argument("--sample-steps", type=int, default=5, help="DDIM steps per timed sample call (default: 5)")
    parser.add_argument("--sample-repeats", type=int, default=3, help="timed sample calls (default: 3)")
    parser.add_argument("--sample-warmup-steps", type=int, default=1, help="steps of the warm-up call (default: 1)")
    add_process_arguments(parser, "configuration")
    return parser


def add_process_arguments(parser: argparse.ArgumentParser, measured: str) -> None:
    """`--threads N` and the internal `--single CONFIG` (one `measured` thing in this process)."""
    parser.add_argument(
        "--threads",
        type=int,
        help="call torch.set_num_threads(N) in each measurement (default: leave torch's default; on a busy machine "
        "fewer threads than cores avoids OpenMP oversubscription)",
    )
    parser.add_argument(
        "--single",
        metavar="CONFIG",
        help=f"internal: measure one {measured} given as JSON in this process and print one RESULT JSON line",
    )


def parse_or_run_single(
    parser: argparse.ArgumentParser, argv: list[str] | None, run_single: Callable[[dict], dict]
) -> argparse.Namespace | None:
    """Parse `argv` (default: the command line's), kept as `args.argv` for the report; with `--single CONFIG`,
    print the RESULT line of `run_single(config)` instead and return None."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.single is not None:
        print(RESULT_PREFIX + json.dumps(run_single(json.loads(args.single))), flush=True)
        return None
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_or_run_single(build_parser(), argv, run_single)
    if args is None:
        return 0
    for name in ("warmup", "steps", "sample_steps", "sample_repeats"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            raise SystemExit(f"--{name.replace('_', '-')} is too small")
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
