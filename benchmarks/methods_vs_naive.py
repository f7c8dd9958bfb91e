"""Motion Inversion and MotionMatcher against naive references of the same computation.

    python benchmarks/methods_vs_naive.py --output docs/benchmarks.md

Three workloads on one random tiny UNet3D (`motiontune.lab.tiny.build_tiny_model`), fp32, batch of one clip:

- `mi-train`: a Motion Inversion training step (epsilon-MSE, embeddings at the deepest temporal blocks);
- `mm-train`: a MotionMatcher feature-loss training step (LoRA pass, one DDIM step, two frozen feature passes);
- `mi-sample`: one guided DDIM step (guidance 12, object debiasing) with a Motion Inversion adapter.

A training step is the body of `training.train`'s loop (loss, backward, grad-norm clip, AdamW, zero grad);
only the loss computation differs between variants. Each workload runs in three variants:

- `ours`: the library as it runs (SDPA wherever nothing is recorded; MotionMatcher's target features
  under `torch.no_grad`, its LoRA switched off in peft, both feature passes stopped after the
  feature-level down block; the CFG pair in one UNet call).
- `official`: what the official code computes, from its source:
  * Motion Inversion (EnVision-Research/MotionInversion, `attn_ctrl.py`, `utils/gpu_utils.py`,
    `inference.py`): the temporal attentions that carry embeddings run a patched forward with explicit
    `get_attention_scores` + `bmm`; every other attention keeps torch SDPA; sampling is diffusers'
    `TextToVideoSDPipeline`, which puts both CFG halves in one UNet call.
  * MotionMatcher (b09902097/motionmatcher, `train.py::finetune_unet`, `utils/attention_processor.py`,
    `utils/ptp_utils.py`, `models/unet_3d_condition.py`): a store processor with explicit softmax attention
    on every attn1/attn2 but `transformer_in`'s, in every pass; the LoRA is switched off by setting its
    scale to 0, so its branch is still computed; both frozen feature passes run with autograd on (no
    `torch.no_grad`), so the target pass also builds a graph, through the scale-0 LoRA, that backward
    walks for zero gradients; both passes return after the *whole* down path (`get_features=True`),
    and the store keeps the maps of every down-block attention. Its sampling pipeline
    (`utils/pipeline.py`) also batches the CFG halves.
- `naive`: the plain reference: explicit softmax attention on every site (`AttentionController.explicit_attention`,
  diffusers' `AttnProcessor` where nothing is recorded), the CFG halves as two separate UNet calls, and
  MotionMatcher's `official` loss with the target pass run through the whole UNet (no early exit).
  Neither official code splits the CFG halves or runs the full UNet for the target features; this
  variant bounds what a straightforward implementation costs.

Before timing, every variant is run once on the same inputs and parameters as `ours` and must give the
same loss and gradients (training) or the same denoised latents (sampling) within a tolerance
(`check_equivalence`), so the numbers compare one computation done three ways. Each (workload, variant)
is then timed in a fresh process (`--single CONFIG`), so that peak memory belongs to it alone: the peak
of the timed steps from `torch.cuda.max_memory_allocated` on CUDA, or on CPU the peak RSS of the timed
steps (`VmHWM` after resetting it through `/proc/self/clear_refs`; where that is not possible, the
process peak of `utils.peak_memory_mb`, model loading included), each with its growth over the memory
in use just before the timed loop (on CPU after glibc's `malloc_trim` handed back what the warm-up freed).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from engine_cpu import (
    OtherCpu,
    add_process_arguments,
    machine_facts,
    parse_or_run_single,
    quiet_libraries,
    reproduction,
    rss_mb,
    run_subprocess,
)

if TYPE_CHECKING:
    import torch

    from motiontune.backbones.base import AttentionSite, Backbone
    from motiontune.methods.base import Method

WORKLOADS = ("mi-train", "mm-train", "mi-sample")
VARIANTS = ("ours", "official", "naive")
METHOD_NAMES = {"mi-train": "motion-inversion", "mm-train": "motionmatcher", "mi-sample": "motion-inversion"}
CAPTION = "a red square moving left"
GUIDANCE = 12.0  # the official Motion Inversion and MotionMatcher inference setting
SAMPLING_STEPS = 30  # Motion Inversion's inference steps; the timed step is the middle one
SEED = 0
# Largest difference to `ours` allowed in `check_equivalence`, relative to the largest value compared.
# MotionMatcher's loss is the MSE between the attention maps of two videos one DDIM step apart, so the
# fp32 rounding of the maps (~1e-7) is a 1e-4 to 1e-3 share of the difference it measures.
RELATIVE_TOLERANCE = {"mi-train": 1e-4, "mm-train": 5e-3, "mi-sample": 1e-4}
HEADING = "## Motion Inversion and MotionMatcher against naive references"
BEGIN = "<!-- BEGIN methods_vs_naive: written by benchmarks/methods_vs_naive.py, edits inside are overwritten -->"
END = "<!-- END methods_vs_naive -->"


# --- the workloads ------------------------------------------------------------------------------


@dataclass
class Case:
    """One workload set up on a backbone: its method (with non-zero adapter weights) and its inputs."""

    workload: str
    method: Method
    batch: dict
    uncond: torch.Tensor
    sampler: object
    timestep: torch.Tensor


def prepare_case(workload: str, backbone: Backbone, frames: int, size: int, seed: int = SEED) -> Case:
    """Create the workload's method, give its adapter random non-zero weights (as after training) and
    draw its inputs; everything is seeded, so two calls on equal backbones give equal cases."""
    import torch

    from motiontune.methods import create_method
    from motiontune.sampling import make_scheduler

    device = backbone.device
    h, w = backbone.latent_size(size, size)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, backbone.latent_channels, frames, h, w, generator=generator).to(device)
    with torch.no_grad():
        text = backbone.encode_prompt([CAPTION])
        uncond = backbone.encode_prompt([""])
    method = create_method(METHOD_NAMES[workload], backbone)
    method.bind_training_shape(latents.shape[1:])
    method.prepare_for_training()
    with torch.no_grad():
        if workload == "mm-train":
            for layer in method.lora_layers:
                weight = layer.lora_B[method.adapter_name].weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)
        else:
            for parameter in method.trainable_parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    if workload == "mi-sample":
        method.prepare_inference(SimpleNamespace(debias="object"))
    backbone.denoiser.train(workload != "mi-sample")  # training steps run in training mode (LoRA dropout on)
    sampler = make_scheduler(backbone, "ddim")
    sampler.set_timesteps(SAMPLING_STEPS, device=device)
    batch = {"latents": latents, "text": text, "captions": [CAPTION]}
    return Case(workload, method, batch, uncond, sampler, sampler.timesteps[SAMPLING_STEPS // 2])


def explicit_sites(case: Case, variant: str) -> Callable[[AttentionSite], bool] | None:
    """Which attention sites compute explicit softmax attention in `variant` (None: none, SDPA everywhere)."""
    if variant == "naive":
        return lambda site: True
    if variant == "official" and case.workload == "mm-train":
        return lambda site: site.block != "in"
    if variant == "official":
        embedded = set(case.method.embeddings)
        return lambda site: site.name in embedded
    return None


@contextlib.contextmanager
def attention_mode(case: Case, variant: str) -> Iterator[None]:
    select = explicit_sites(case, variant)
    if select is None:
        yield
        return
    with case.method.backbone.controller.explicit_attention(select):
        yield


def training_loss(case: Case, variant: str, generator: torch.Generator) -> torch.Tensor:
    """The workload's training loss in `variant`, with timesteps and noise drawn from `generator`."""
    with attention_mode(case, variant):
        if case.workload == "mm-train" and variant != "ours":
            return official_matcher_loss(case.method, case.batch, generator, whole_unet_target=variant == "naive")
        return case.method.loss(case.batch, generator)


@contextlib.contextmanager
def lora_at_scale_zero(method: Method) -> Iterator[None]:
    """MotionMatcher's official switch-off (`set_lora_scale(unet, 0.)`): the LoRA branch is still computed."""
    for layer in method.lora_layers:
        layer.set_scale(method.adapter_name, 0.0)
    try:
        yield
    finally:
        for layer in method.lora_layers:
            layer.set_scale(method.adapter_name, 1.0)


def official_matcher_loss(method: Method, batch: dict, generator: torch.Generator, whole_unet_target: bool):
    """L_mot as MotionMatcher's `finetune_unet` computes it (module docstring), DDIM step by diffusers'
    `DDIMScheduler.step` on the 1000-step grid; `whole_unet_target` runs the target pass to the end."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDIMScheduler

    backbone, config = method.backbone, method.config
    latents, text = batch["latents"], batch["text"]
    timesteps = method.sample_timesteps(latents.shape[0], generator)
    noisy, noise, _ = method.diffusion.noised(latents, timesteps, generator)
    timesteps = timesteps.to(latents.device)
    prediction = backbone.predict_noise(noisy, timesteps, text)
    ddim = DDIMScheduler.from_config(backbone.scheduler.config)
    ddim.set_timesteps(method.diffusion.num_timesteps)

    def ddim_step(eps: torch.Tensor) -> torch.Tensor:
        rows = [ddim.step(eps[i : i + 1], int(t), noisy[i : i + 1]).prev_sample for i, t in enumerate(timesteps)]
        return torch.cat(rows)

    predicted, target = ddim_step(prediction), ddim_step(noise)
    with lora_at_scale_zero(method):
        cross, temporal = official_features(method, predicted, timesteps - 1, text, whole_unet=False)
        target_cross, target_temporal = official_features(method, target, timesteps - 1, text, whole_unet_target)
    cross_loss, temporal_loss = F.mse_loss(cross, target_cross), F.mse_loss(temporal, target_temporal)
    return config.cross_attention_weight * cross_loss + config.temporal_attention_weight * temporal_loss


def official_features(method: Method, latents, timesteps, text, whole_unet: bool):
    """M_CA and M_TSA as the official `AttentionStore` + `aggregate_attention` build them: every down-block
    map is recorded with autograd on; those of the feature level are concatenated over heads and layers
    and averaged."""
    import torch

    backbone = method.backbone
    level = method.feature_level
    stop = contextlib.nullcontext([]) if whole_unet else backbone.down_blocks_only()
    with backbone.controller.record(lambda site: site.block == "down", with_grad=True) as maps, stop:
        backbone.predict_noise(latents, timesteps, text)
    sites = [s for s in backbone.sites if s.block == "down" and s.level == level]
    cross = [maps[s.name] for s in sites if s.kind == "cross"]  # (B, F, heads, h, w, T)
    temporal = [maps[s.name] for s in sites if s.kind == "temporal"]  # (B, h, w, heads, F, F)
    cross = torch.cat(cross, dim=2).float().mean(2).flatten(2, 3)
    return cross, torch.cat(temporal, dim=3).float().mean(3).flatten(1, 2)


def guided_step(case: Case, variant: str) -> torch.Tensor:
    """One DDIM step of classifier-free guidance, `e = e_u + w (e_c - e_u)`, from the case's latents."""
    import torch

    from motiontune.sampling import guided_prediction

    backbone, latents, t = case.method.backbone, case.batch["latents"], case.timestep
    text = case.batch["text"]
    with torch.no_grad(), attention_mode(case, variant):
        model_input = case.sampler.scale_model_input(latents, t)
        if variant == "naive":
            rows = latents.shape[0]
            uncond = backbone.predict_noise(model_input, t, case.uncond, torch.zeros(rows, dtype=torch.bool))
            cond = backbone.predict_noise(model_input, t, text, torch.ones(rows, dtype=torch.bool))
            noise = uncond + GUIDANCE * (cond - uncond)
        else:
            noise = guided_prediction(backbone, model_input, t, text, case.uncond, GUIDANCE)
        return case.sampler.step(noise, t, latents, return_dict=False)[0]


# --- equivalence --------------------------------------------------------------------------------


def variant_outputs(case: Case, variant: str) -> dict[str, torch.Tensor]:
    """What must agree between variants: loss and gradients (training) or the denoised latents (sampling)."""
    import torch

    if case.workload == "mi-sample":
        return {"latents": guided_step(case, variant)}
    trainable = case.method.trainable_parameters()
    for parameter in trainable:
        parameter.grad = None
    torch.manual_seed(SEED)  # LoRA dropout draws from the global generator
    loss = training_loss(case, variant, torch.Generator().manual_seed(SEED))
    loss.backward()
    gradients = torch.cat([parameter.grad.flatten() for parameter in trainable])
    for parameter in trainable:
        parameter.grad = None
    return {"loss": loss.detach(), "gradients": gradients}


def assert_close(label: str, ours: torch.Tensor, other: torch.Tensor, rtol: float) -> float:
    """Raise AssertionError unless `max |other - ours| <= rtol * max |ours|`; return that maximum over `max |ours|`."""
    if other.shape != ours.shape:
        raise AssertionError(f"{label}: shape {tuple(other.shape)} differs from ours {tuple(ours.shape)}")
    scale = ours.double().abs().max().item() or 1.0
    relative = (other.double() - ours.double()).abs().max().item() / scale
    if not relative <= rtol:
        raise AssertionError(
            f"{label}: differs from ours by {relative:.2g} of its largest value (tolerance {rtol:g}): "
            "not the same computation"
        )
    return relative


def check_equivalence(
    model_dir: str | Path, frames: int, size: int, device: str, workloads: Sequence[str] = WORKLOADS
) -> dict[tuple[str, str], float]:
    """Run every variant of each workload once on identical inputs and parameters (fresh backbone per
    workload, TF32 off) and assert that it gives what `ours` gives, within `RELATIVE_TOLERANCE`; return
    the largest difference relative to the largest value per (workload, variant)."""
    import torch

    from motiontune.app.api import open_backbone

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    differences = {}
    try:
        for workload in workloads:
            torch.manual_seed(SEED)
            case = prepare_case(workload, open_backbone(model_dir, device), frames, size)
            ours = variant_outputs(case, "ours")
            for variant in VARIANTS[1:]:
                other = variant_outputs(case, variant)
                differences[(workload, variant)] = max(
                    assert_close(f"{workload} {variant} {key}", value, other[key], RELATIVE_TOLERANCE[workload])
                    for key, value in ours.items()
                )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return differences


# --- one measurement, in its own process --------------------------------------------------------


def _memory_in_use_mb(device: torch.device) -> float:
    """Memory held right now: allocated CUDA memory, or the resident set size on CPU (Linux)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device) / 2**20
    return rss_mb()


def _release_freed_memory() -> None:
    """Hand memory that the warm-up freed back to the OS (glibc `malloc_trim`), so the RSS before the
    timed steps does not already hold their peak."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _start_peak(device: torch.device) -> bool:
    """Start measuring a new peak: CUDA's allocator statistics, or the kernel's RSS high-water mark
    (`VmHWM`, reset by writing 5 to `/proc/self/clear_refs`, Linux). False where it cannot be reset."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM:" in Path("/proc/self/status").read_text()
    except OSError:
        return False


def _peak_since_start_mb(device: torch.device, started: bool) -> float:
    """The peak since `_start_peak` (when it could reset), else the process peak (`utils.peak_memory_mb`)."""
    from motiontune.utils import peak_memory_mb

    if device.type == "cpu" and started:
        match = re.search(r"^VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 1024
    return peak_memory_mb(device)


def step_function(case: Case, variant: str) -> Callable[[], None]:
    """One timed step of the workload in `variant`: a full training step, or one guided sampling step."""
    import torch

    if case.workload == "mi-sample":
        return lambda: guided_step(case, variant)
    method = case.method
    trainable = method.trainable_parameters()
    learning_rate = method.default_learning_rate
    optimizer = torch.optim.AdamW(method.parameter_groups(learning_rate), lr=learning_rate, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(SEED)

    def step() -> None:
        loss = training_loss(case, variant, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()

    return step


def run_single(config: dict) -> dict:
    """Time one (workload, variant) in this process: median of `repeats` steps after `warmup` steps."""
    quiet_libraries()
    import torch

    from motiontune.app.api import open_backbone

    if config.get("threads"):
        torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    torch.manual_seed(SEED)
    backbone = open_backbone(config["model_dir"], device)
    case = prepare_case(config["workload"], backbone, config["frames"], config["size"])
    step = step_function(case, config["variant"])
    for _ in range(config["warmup"]):
        step()
    if device.type == "cpu":
        _release_freed_memory()
    baseline = _memory_in_use_mb(device)
    peak_started = _start_peak(device)
    times = []
    other = OtherCpu()
    other.start()
    for _ in range(config["repeats"]):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    other.stop()
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "peak_mb": _peak_since_start_mb(device, peak_started),
        "peak_of_timed_steps": peak_started,
        "baseline_mb": baseline,
        "other_cpu": other.share if device.type == "cpu" else None,
        "threads": torch.get_num_threads(),
    }


# --- the report ---------------------------------------------------------------------------------


def results_table(results: dict, differences: dict) -> str:
    """One row per (workload, variant): times, their ratio to `ours`, peak memory and the equivalence check."""
    rows = [
        "| workload | variant | median ms | min ms | max ms | time × ours | peak MB | step MB (over baseline) "
        "| step memory × ours | max rel. difference to ours |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for workload in WORKLOADS:
        ours = results[(workload, "ours")]
        ours_step = ours["peak_mb"] - ours["baseline_mb"]
        for variant in VARIANTS:
            r = results[(workload, variant)]
            step_mb = r["peak_mb"] - r["baseline_mb"]
            memory_ratio = f"{step_mb / ours_step:.2f}×" if ours_step >= 1 else "n/a"
            difference = "(reference)" if variant == "ours" else f"{differences[(workload, variant)]:.1e}"
            rows.append(
                f"| {workload} | {variant} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} "
                f"| {r['median_ms'] / ours['median_ms']:.2f}× | {r['peak_mb']:.0f} | {step_mb:.0f} "
                f"| {memory_ratio} | {difference} |"
            )
    return "\n".join(rows)


def summary(results: dict) -> str:
    """One sentence per workload, computed from the numbers."""
    lines = []
    for workload in WORKLOADS:
        ours = results[(workload, "ours")]
        parts = []
        for variant in VARIANTS[1:]:
            r = results[(workload, variant)]
            parts.append(f"`{variant}` takes {r['median_ms'] / ours['median_ms']:.2f}× its time")
        lines.append(f"- `{workload}`: against `ours` ({ours['median_ms']:.1f} ms), " + " and ".join(parts) + ".")
    busy = [key for key, r in results.items() if r.get("other_cpu") is not None and r["other_cpu"] > 0.1]
    if busy:
        lines.append(
            "\n**Caveat:** other processes used more than 10% of the machine's CPU time during "
            f"{len(busy)} of the timed loops; those times are inflated. Rerun on a quiet machine."
        )
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of `path` (heading + BEGIN ... END), or append it; atomic write."""
    from motiontune.utils import atomic_write_text

    existing = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^## [^\n]*\n{re.escape(BEGIN)}\n.*?{re.escape(END)}\n?", re.MULTILINE | re.DOTALL)
    block = section.rstrip("\n") + "\n"
    if pattern.search(existing):
        updated = pattern.sub(lambda _: block, existing, count=1)
    else:
        updated = existing.rstrip("\n") + "\n\n" + block
    atomic_write_text(path, updated)


def run_all(args: argparse.Namespace) -> int:
    """Build the model, check the variants agree, time each (workload, variant) in a subprocess, report."""
    quiet_libraries()
    import torch

    from motiontune.lab.tiny import TINY_VAE, build_tiny_model
    from motiontune.utils import default_device

    device = str(args.device or default_device())
    scale = 2 ** (len(TINY_VAE["block_out_channels"]) - 1)
    if args.size % (4 * scale):
        raise SystemExit(f"--size must be a multiple of {4 * scale} (VAE scale × 4 for the UNet)")
    facts = machine_facts(args.threads)
    if device.startswith("cuda"):
        facts["GPU"] = torch.cuda.get_device_name(torch.device(device))
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="motiontune-naive-") as folder:
        model_dir = str(build_tiny_model(Path(folder) / "tiny", seed=SEED))
        print("checking that the variants compute the same thing ...", end=" ", file=sys.stderr, flush=True)
        differences = check_equivalence(model_dir, args.frames, args.size, device)
        print("yes", file=sys.stderr, flush=True)
        for workload in WORKLOADS:
            for variant in VARIANTS:
                config = {
                    "workload": workload,
                    "variant": variant,
                    "model_dir": model_dir,
                    "frames": args.frames,
                    "size": args.size,
                    "device": device,
                    "warmup": args.warmup,
                    "repeats": args.repeats,
                    "threads": args.threads,
                }
                print(f"{workload} {variant} ...", end=" ", file=sys.stderr, flush=True)
                results[(workload, variant)] = result = run_subprocess(config, f"{workload} {variant}", Path(__file__))
                print(f"{result['median_ms']:.1f} ms, peak {result['peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    wall = time.perf_counter() - started

    table = results_table(results, differences)
    print(table)
    h, w = args.size // scale, args.size // scale
    if device.startswith("cuda"):
        memory = "the peak of `torch.cuda.max_memory_allocated` during the timed steps"
    elif all(r["peak_of_timed_steps"] for r in results.values()):
        memory = "the peak RSS during the timed steps (Linux `VmHWM`, reset through `/proc/self/clear_refs`)"
    else:
        memory = "the process peak RSS of `utils.peak_memory_mb` (model loading included)"
    section = f"""{HEADING}
{BEGIN}

{reproduction("benchmarks/methods_vs_naive.py", args.argv, facts, wall, f" on {device}")}

The random tiny UNet3D of `motiontune.lab.tiny.build_tiny_model`, fp32, one clip of
{args.frames}×{args.size}×{args.size} pixels ({args.frames}×{h}×{w} latents). Workloads: `mi-train`, a Motion
Inversion training step; `mm-train`, a MotionMatcher feature-loss training step (LoRA rank 32); `mi-sample`, one
guided DDIM step (guidance {GUIDANCE:g}, object debiasing) with a Motion Inversion adapter. A training step is
loss, backward, grad-norm clip, AdamW step and zero grad; only the loss computation differs between variants.
Variants (details in the script's docstring):

- `ours`: the library (SDPA wherever no map is recorded; MotionMatcher's target features without autograd,
  its LoRA off in peft, both feature passes stopped after the feature-level down block; CFG pair in one call).
- `official`: what the official code computes. Motion Inversion: explicit softmax attention on the embedded
  temporal attentions only, SDPA elsewhere, CFG pair in one call. MotionMatcher: explicit softmax attention
  on every attention but `transformer_in`'s, LoRA off by scale 0 (still computed), both feature passes with
  autograd on through the whole down path, every down-block map stored.
- `naive`: explicit softmax attention on every site, the CFG halves as two UNet calls, and MotionMatcher's
  target pass through the whole UNet (with autograd, as `official`).

Each variant was checked first to give the same loss and gradients, or the same denoised latents, as `ours`
on the same inputs (last column: the largest difference relative to the largest value). Times are the median,
min and max over {args.repeats} timed steps after {args.warmup} warm-up step(s), each (workload, variant) in a
fresh process; peak memory is {memory}; the step column is its growth over the memory in use just before the
timed steps.

{table}

{summary(results)}

{END}
"""
    if args.output is not None:
        write_section(args.output, section)
        print(f"wrote {args.output} ({wall:.0f} s)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time and size Motion Inversion and MotionMatcher training steps and a guided sampling step "
        "against naive references of the same computation (explicit softmax attention, split CFG, MotionMatcher's "
        "official feature passes) on a tiny UNet3D; print a markdown table and optionally write it to a file.",
    )
    parser.add_argument(
        "--output", type=Path, help="markdown file whose marked section is written (e.g. docs/benchmarks.md)"
    )
    parser.add_argument("--frames", type=int, default=16, help="frames of the clip (default: 16)")
    parser.add_argument("--size", type=int, default=64, help="height and width in pixels, square (default: 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_process_arguments(parser, "(workload, variant)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_or_run_single(build_parser(), argv, run_single)
    if args is None:
        return 0
    if args.frames < 2 or args.size < 1 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--frames must be at least 2, --size and --repeats at least 1, --warmup at least 0")
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
