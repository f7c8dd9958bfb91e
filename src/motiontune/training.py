"""One training loop for every method: accelerate, gradient accumulation, checkpoints, resume.

A method supplies trainable parameters, a loss for a batch and a timestep sampler; this loop draws
batches from cached latents, steps the optimizer, writes atomic checkpoints every N steps (adapter and
optimizer state, safetensors + JSON: nothing is pickled) and validation videos, and resumes bit-exactly
from the last checkpoint. With `ema_decay` it also keeps an exponential moving average of the trained
weights, which the final adapter holds.

Every micro-batch draws its randomness (its examples, timesteps, noise, dropout) from its own stream, seeded by
the run's seed and the micro-batch's index over the whole run and all processes (`micro_batch_seed`): a run
resumed at step k draws what it would have drawn, and P processes with accumulation A run the same micro-batches
as one process with accumulation P x A (the same global batch), and their results agree (identical on CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from safetensors import SafetensorError
from safetensors.torch import load_file
from tqdm.auto import tqdm

from .backbones.base import Backbone
from .errors import ConfigError, InputError, MotiontuneError, TrainingDiverged, warn
from .generation import GenerationConfig, generate_latents
from .io.adapters import atomic_save_tensors, read_adapter, save_adapter
from .io.data import VideoDataset
from .io.video import frames_to_uint8, save_outputs
from .methods.base import Method, uniform_picks
from .sharding import (
    as_placed,
    average_unsharded_gradients,
    clip_gradients,
    full_tensors,
    local_part,
    shard_denoiser,
)
from .utils import atomic_directory, atomic_write_text, check_seed, peak_memory_mb


@dataclass
class Example:
    """One training clip: cached latents `(C, F, h, w)`, its caption and its text embedding `(L, D)`.

    `mask` is a binary foreground mask `(1, H, W)` at pixel resolution, for subject images. A rendered
    clip may carry its object's per-frame `boxes` `(F, 4)` (x1, y1, x2, y2 in [0, 1]) and the caption
    words naming the object (`subject`, e.g. "red circle").
    """

    latents: torch.Tensor
    caption: str
    text: torch.Tensor
    source: str
    path: str
    mask: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    subject: str | None = None


@dataclass
class TrainConfig:
    output_dir: Path
    steps: int = 400
    learning_rate: float | None = None
    batch_size: int = 1
    gradient_accumulation: int | None = None
    max_grad_norm: float = 1.0
    ema_decay: float = 0.0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    validate_every: int = 0
    validation_prompts: list[str] = field(default_factory=list)
    validation_sampling_steps: int = 25
    guidance_scale: float = 9.0
    seed: int = 0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    #: shard the denoiser's blocks across the processes (FSDP2; `sharding.py`) instead of a full copy on each
    fsdp: bool = False
    save_precision: str = "fp32"
    resume: bool = False
    progress: bool = True
    frames: int | None = None  # pixel frames of the videos the adapter is for; default: the longest example's
    #: from this step the learning rate falls along a cosine to 0 at `steps` (None: constant)
    decay_from: int | None = None

    def __post_init__(self):
        self.output_dir = Path(self.output_dir)
        if self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")
        if self.batch_size < 1 or (self.gradient_accumulation is not None and self.gradient_accumulation < 1):
            raise ConfigError("--batch-size and --gradient-accumulation must be at least 1")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"--lr must be a positive finite number, got {self.learning_rate}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ConfigError(f"--max-grad-norm must be a finite number >= 0 (0 = off), got {self.max_grad_norm}")
        check_seed(self.seed)
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(
                f"--mixed-precision must be one of {', '.join(MIXED_PRECISIONS)}, got '{self.mixed_precision}'"
            )
        if self.checkpoint_every < 0 or self.validate_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError("--checkpoint-every/--validate-every must be >= 0 and --keep-checkpoints >= 1")
        if not 0.0 <= self.ema_decay < 1.0:  # also refuses NaN
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        if self.save_precision not in SAVE_DTYPES:
            raise ConfigError(f"--save-precision must be one of {', '.join(SAVE_DTYPES)}")
        if self.decay_from is not None and not 0 <= self.decay_from < self.steps:
            raise ConfigError(f"decay_from must be in [0, steps), got {self.decay_from}")
        if self.fsdp and self.validate_every:
            raise ConfigError("--fsdp with --validate-every: validation videos are not sampled from a sharded model")


def cosine_decay(step: int, steps: int, decay_from: int | None) -> float:
    """The learning rate's factor at `step`: 1, then from `decay_from` a cosine to 0 at `steps`,
    `(1 + cos(pi * (step - d) / (steps - d))) / 2`."""
    if decay_from is None or step < decay_from:
        return 1.0
    return (1 + math.cos(math.pi * (step - decay_from) / (steps - decay_from))) / 2


MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def prepare_examples(
    backbone: Backbone,
    dataset: VideoDataset,
    source: str,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> list[Example]:
    """Encode every clip once with the VAE (cached on disk by file content and size) and its caption."""
    examples = []
    for index in tqdm(range(len(dataset)), desc=f"encoding {source} videos", disable=not progress, leave=False):
        item = dataset.items[index]
        cache_file = None
        if cache_dir is not None:
            stat = Path(item.path).stat()
            key = f"{Path(item.path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{dataset.num_frames}|"
            key += f"{dataset.height}|{dataset.width}|{dataset.sampling}|{backbone.path}"
            cache_file = cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
        latents = _cached_latents(cache_file) if cache_file is not None and cache_file.exists() else None
        if latents is not None:
            latents = latents.to(backbone.device, backbone.dtype)
        else:
            pixels = dataset[index]["pixels"][None]
            latents = backbone.encode_video(pixels)[0]
            if cache_file is not None:
                atomic_save_tensors({"latents": latents}, cache_file, {})
        with torch.no_grad():
            text = backbone.encode_prompt([item.caption])[0]
        examples.append(Example(latents, item.caption, text, source, str(item.path)))
    return examples


def _cached_latents(cache_file: Path) -> torch.Tensor | None:
    """The latents of a cache entry, or None (with a warning) when the entry is damaged: it is then rebuilt."""
    try:
        latents = load_file(str(cache_file))["latents"]
    except (SafetensorError, OSError, KeyError, ValueError) as error:
        warn(f"{cache_file}: damaged latent cache entry ({' '.join(str(error).split())}); encoding the video again")
        return None
    if latents.ndim != 4 or not latents.is_floating_point() or not torch.isfinite(latents).all():
        warn(f"{cache_file}: damaged latent cache entry (shape {tuple(latents.shape)}); encoding the video again")
        return None
    return latents


class _TrainingModule(torch.nn.Module):
    """Holds everything that trains, so accelerate (DDP) sees and syncs it; forward is the method's loss."""

    def __init__(self, method: Method):
        super().__init__()
        self.denoiser = method.backbone.denoiser
        self.extra = method.extra_modules()
        embedding = method.backbone.text_encoder.get_input_embeddings()
        # a trained token's rows live in the text encoder's embedding: registered here so DDP averages their
        # gradients too (else each process would train its own token)
        self.text_embedding = embedding if embedding.weight.requires_grad else None
        self.method = [method]  # a list, so the method's own modules are not registered twice

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.method[0].loss(batch, generator)


def _draw_batch(
    examples: list[Example],
    size: int,
    generator: torch.Generator,
    device,
    method: Method | None = None,
    micro_step: int = 0,
) -> dict:
    """The batch `method.pick_examples` chooses; without a method, drawn uniformly from all examples
    (the literal union D^m ∪ D^r of NewMove Eq. 3). Masks, and boxes with subject words, come along when
    every chosen example has them."""
    if method is None:
        picks = uniform_picks(examples, size, generator)
    else:
        picks = method.pick_examples(examples, size, generator, micro_step)
    chosen = [examples[i] for i in picks]
    batch = {
        "latents": torch.stack([e.latents for e in chosen]).to(device),
        "text": torch.stack([e.text for e in chosen]).to(device),
        "captions": [e.caption for e in chosen],
        "sources": [e.source for e in chosen],
    }
    if all(e.mask is not None for e in chosen):
        batch["masks"] = torch.stack([e.mask for e in chosen]).to(device)
    if all(e.boxes is not None and e.subject is not None for e in chosen):
        batch["boxes"] = torch.stack([e.boxes for e in chosen])
        batch["subjects"] = [e.subject for e in chosen]
    return batch


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state as safetensors-ready tensors and a JSON-ready layout (`load_optimizer` reads them)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], layout: dict) -> None:
    """Restore what `optimizer_tensors` wrote."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in layout["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": layout["param_groups"]})
    for parameter, values in optimizer.state.items():  # a shard's moments go back into shards like it
        for name, value in values.items():
            if torch.is_tensor(value) and value.shape == parameter.shape:
                values[name] = as_placed(value, parameter)


class WeightAverage:
    """Exponential moving average of the trained weights (Polyak averaging): `w_ema <- d w_ema + (1 - d) w`
    after every optimizer step. Saved by the method's own adapter keys (see `swapped_in`)."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float):
        self.parameters = parameters
        self.decay = decay
        self.average = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def update(self) -> None:
        for average, parameter in zip(self.average, self.parameters, strict=True):
            average.lerp_(parameter.detach(), 1 - self.decay)

    @contextlib.contextmanager
    def swapped_in(self):
        """Inside the block the parameters hold the average (to save or sample it); the raw weights come back."""
        raw = [p.detach().clone() for p in self.parameters]
        self.copy_into_parameters()
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, value in zip(self.parameters, raw, strict=True):
                    parameter.copy_(value)

    @torch.no_grad()
    def copy_into_parameters(self) -> None:
        for parameter, average in zip(self.parameters, self.average, strict=True):
            parameter.copy_(average)

    @torch.no_grad()
    def take_from_parameters(self) -> None:
        for average, parameter in zip(self.average, self.parameters, strict=True):
            average.copy_(parameter)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint folder that finished writing (it holds `state.json`), or None."""
    complete = completed_checkpoints(output_dir)
    return complete[-1] if complete else None


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """The checkpoint folders motiontune wrote (`step-NNNNNN`), oldest first; other files there are the user's."""
    folders = (output_dir / "checkpoints").glob("step-[0-9]*")
    return sorted(f for f in folders if f.is_dir() and f.name[5:].isdigit())


def completed_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders that finished writing, oldest first."""
    return [c for c in checkpoint_folders(output_dir) if (c / "state.json").exists()]


def remove_staging_folders(output_dir: Path) -> None:
    """Remove checkpoint folders a killed process left half-written (hidden `.step-*` staging folders)."""
    for staging in (output_dir / "checkpoints").glob(".step-*"):
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)


def micro_batch_seed(seed: int, index: int) -> int:
    """The seed of micro-batch `index` of a run seeded `seed`: `index = (step * accumulation + micro) * processes +
    process`, so the same global batch gets the same seeds however it is split across processes and micro-batches
    (a hash of both numbers: neighbouring runs share no stream)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _micro_batch_streams(seed: int, index: int) -> torch.Generator:
    """Seed torch's global stream (dropout) and return the generator of micro-batch `index`'s own draws."""
    micro_seed = micro_batch_seed(seed, index)
    torch.manual_seed(micro_seed)
    return torch.Generator().manual_seed(micro_seed)


@dataclass
class _CheckpointContents:
    """What a checkpoint holds, read on every process (shards gathered): the adapter, its weight average, the
    optimizer's tensors and layout, and the adapter's metadata."""

    adapter: dict[str, torch.Tensor]
    average: dict[str, torch.Tensor] | None
    optimizer: dict[str, torch.Tensor]
    layout: dict
    metadata: dict


def _checkpoint_contents(method: Method, optimizer, average: WeightAverage | None) -> _CheckpointContents:
    adapter = full_tensors(method.adapter_tensors())
    averaged = None
    if average is not None:
        with average.swapped_in():
            averaged = full_tensors(method.adapter_tensors())
    tensors, layout = optimizer_tensors(optimizer)
    return _CheckpointContents(adapter, averaged, full_tensors(tensors), layout, method.adapter_metadata())


def _save_checkpoint(output_dir: Path, step: int, contents: _CheckpointContents, keep: int) -> Path:
    """Write adapter and optimizer state to a temporary folder, then rename it into place (no random state: each
    micro-batch seeds its own, `micro_batch_seed`). With a weight average, `ema.safetensors` holds it as an
    adapter of the same method (usable with `--adapter`)."""
    root = output_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    with atomic_directory(final) as staging:
        save_adapter(staging / "adapter.safetensors", contents.adapter, contents.metadata)
        if contents.average is not None:
            save_adapter(staging / "ema.safetensors", contents.average, contents.metadata)
        atomic_save_tensors(contents.optimizer, staging / "optimizer.safetensors", {})
        (staging / "state.json").write_text(json.dumps({"step": step, "optimizer": contents.layout}))
    for old in checkpoint_folders(output_dir)[:-keep]:
        shutil.rmtree(old)
    return final


@dataclass
class _Checkpoint:
    """Everything a checkpoint folder holds, read and checked before any of it is applied."""

    path: Path
    step: int
    adapter: dict[str, torch.Tensor]
    average: dict[str, torch.Tensor] | None
    optimizer: dict[str, torch.Tensor]
    layout: dict


def _read_checkpoint(checkpoint: Path, device) -> _Checkpoint:
    """Read one checkpoint; any damage (missing or truncated file, bad JSON, missing keys, non-finite
    weights) raises InputError naming the file."""
    try:
        state = json.loads((checkpoint / "state.json").read_text())
        step, layout = int(state["step"]), state["optimizer"]
        adapter, _ = read_adapter(checkpoint / "adapter.safetensors", device=device)
        saved_average = checkpoint / "ema.safetensors"
        average = read_adapter(saved_average, device=device)[0] if saved_average.exists() else None
        optimizer = load_file(str(checkpoint / "optimizer.safetensors"))
        for stale in ("rng.generator", "rng.torch"):  # random states that checkpoints of earlier versions kept
            optimizer.pop(stale, None)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, MotiontuneError) as error:
        raise InputError(f"{checkpoint}: damaged checkpoint ({' '.join(str(error).split())})") from None
    for name, tensors in (("adapter", adapter), ("weight average", average or {})):
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in tensors.values()):
            raise InputError(f"{checkpoint}: damaged checkpoint (its {name} holds non-finite values)")
    return _Checkpoint(checkpoint, step, adapter, average, optimizer, layout)


def _restore_checkpoint(output_dir: Path, method: Method, optimizer, average: WeightAverage | None) -> int:
    """Restore the newest intact checkpoint (a damaged one is reported and the one before it tried); a weight
    average starts from the saved one, or from the weights when it has none. Returns its step (0: none)."""
    checkpoints = completed_checkpoints(output_dir)
    for checkpoint in reversed(checkpoints):
        try:
            saved = _read_checkpoint(checkpoint, method.backbone.device)
            if average is not None:
                method.load_adapter_tensors(saved.average or saved.adapter, str(checkpoint))
                average.take_from_parameters()
            method.load_adapter_tensors(saved.adapter, str(checkpoint))
            load_optimizer(optimizer, saved.optimizer, saved.layout)
        except (MotiontuneError, ValueError, KeyError, RuntimeError) as error:
            warn(f"{error}; trying the checkpoint before it" if checkpoint != checkpoints[0] else str(error))
            continue
        if checkpoint != checkpoints[-1]:
            warn(f"resuming from {checkpoint} (the newer checkpoints are damaged)")
        return saved.step
    if checkpoints:
        raise InputError(
            f"{output_dir / 'checkpoints'}: no intact checkpoint to resume from; pass --overwrite to start over"
        )
    return 0


def _finite(parameters: list[torch.nn.Parameter]) -> bool:
    """Whether every trained value is finite (this process's part of a shard)."""
    return all(bool(torch.isfinite(local_part(p)).all()) for p in parameters)


def _diverged(output_dir: Path, step: int, what: str) -> TrainingDiverged:
    checkpoint = latest_checkpoint(output_dir)
    kept = f"the last good checkpoint {checkpoint} is kept" if checkpoint else "no checkpoint was written"
    return TrainingDiverged(
        f"training diverged at step {step} ({what}); stopped without writing an adapter, {kept} "
        "(try a lower --lr or --max-grad-norm)"
    )


#: the autocast precision that weights loaded in a low precision train under
LOW_PRECISIONS = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def check_mixed_precision(weights: str, requested: str) -> None:
    """Weights loaded in bf16 / fp16 (`weights`, as `--weights-dtype` names it) train under autocast in that
    precision: `--mixed-precision` must then be `auto` or the same, else a ConfigError."""
    if weights in LOW_PRECISIONS.values() and requested not in ("auto", weights):
        raise ConfigError(
            f"weights loaded in {weights} train under {weights} autocast: --mixed-precision must be auto or "
            f"{weights}, got {requested}"
        )


def _resolve_precision(requested: str, device: torch.device, weights: torch.dtype) -> str:
    """The mixed precision to train under: weights loaded in bf16 / fp16 train under autocast in that precision
    (their trained tensors are float32); float32 weights under what was asked (`auto`: bf16 or fp16 on CUDA)."""
    if weights in LOW_PRECISIONS:
        check_mixed_precision(LOW_PRECISIONS[weights], requested)
        return LOW_PRECISIONS[weights]
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _float32_trained(groups: list[dict]) -> None:
    """Trained tensors of a model loaded in a low precision become float32 (the optimizer's steps would round away
    in bf16); the frozen weights stay as loaded, and autocast mixes the two."""
    for group in groups:
        for parameter in group["params"]:
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()


def train(method: Method, examples: list[Example], config: TrainConfig) -> Path:
    """Train `method` on `examples` and write `output_dir/adapter.safetensors`; return its path."""
    if not examples:
        raise InputError("no training examples (empty dataset)")
    backbone = method.backbone
    output_dir = config.output_dir
    learning_rate = config.learning_rate or method.paper_settings["learning_rate"]
    accumulation = config.gradient_accumulation or method.paper_settings.get("gradient_accumulation", 1)
    weights = backbone.dtype
    longest = max((e.latents.shape for e in examples), key=lambda shape: shape[1])
    frames = backbone.latent_frames(config.frames) if config.frames else longest[1]
    latent_shape = torch.Size([longest[0], frames, *longest[2:]])
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=_resolve_precision(config.mixed_precision, backbone.device, weights),
        gradient_accumulation_steps=accumulation,
        cpu=backbone.device.type == "cpu",
        # some trained tensors get no gradient in some steps (a two-expert model's other expert, a LoRA window)
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    torch.manual_seed(config.seed)  # every process starts from the same trained tensors
    method.bind_training_shape(latent_shape)
    method.prepare_for_training()
    if config.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    if config.fsdp:
        if accelerator.num_processes < 2:
            raise ConfigError("--fsdp shards the model across processes: launch 2 or more (torchrun, accelerate)")
        if method.sharding_obstacle():
            raise ConfigError(f"--fsdp: {method.name} cannot train sharded: {method.sharding_obstacle()}")
        shard_denoiser(backbone)
    groups = method.parameter_groups(learning_rate)
    if not any(p.requires_grad for group in groups for p in group["params"]):
        raise ConfigError(f"method '{method.name}' has no trainable parameters with these options")
    _float32_trained(groups)
    optimizer = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=1e-2, foreach=False if config.fsdp else None)
    group_rates = [group["lr"] for group in optimizer.param_groups]
    module = _TrainingModule(method)
    if config.fsdp:  # the shards average their own gradients; no DDP copy around them
        optimizer = accelerator.prepare(optimizer)
    else:
        module, optimizer = accelerator.prepare(module, optimizer)
    trainable = [p for group in groups for p in group["params"] if p.requires_grad]
    average = WeightAverage(trainable, config.ema_decay) if config.ema_decay else None

    start = 0
    if accelerator.is_main_process:
        remove_staging_folders(output_dir)
    if config.resume:
        start = _restore_checkpoint(output_dir, method, optimizer, average)
        if start == 0 and accelerator.is_main_process:
            tqdm.write(f"no checkpoint under {output_dir / 'checkpoints'}: starting from step 0")
    log_path = output_dir / "training_log.jsonl"
    output_dir.mkdir(parents=True, exist_ok=True)
    log_lines = _log_lines(log_path)[:start] if start else []
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_text(log_path, "".join(line + "\n" for line in log_lines))
    seconds_before = json.loads(log_lines[-1]).get("seconds", 0.0) if log_lines else 0.0

    module.train()
    bar = tqdm(range(start, config.steps), desc=f"training {method.name}", disable=not config.progress)
    started = time.perf_counter()
    for step in bar:
        for group, rate in zip(optimizer.param_groups, group_rates, strict=True):
            group["lr"] = rate * cosine_decay(step, config.steps, config.decay_from)
        total = 0.0
        for micro in range(accumulation):
            index = (step * accumulation + micro) * accelerator.num_processes + accelerator.process_index
            generator = _micro_batch_streams(config.seed, index)
            batch = _draw_batch(examples, config.batch_size, generator, backbone.device, method, index)
            with accelerator.accumulate(module), accelerator.autocast():
                loss = module(batch, generator)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.fsdp:
                    average_unsharded_gradients(trainable)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    if config.fsdp:
                        clip_gradients(trainable, config.max_grad_norm)
                    else:
                        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if average is not None and accelerator.sync_gradients:
                average.update()
            total += loss.detach().item() / accumulation
        if not math.isfinite(total):
            raise _diverged(output_dir, step + 1, f"loss {total}")
        bar.set_postfix(loss=f"{total:.4f}")
        if accelerator.is_main_process:
            with log_path.open("a") as log:
                seconds = seconds_before + time.perf_counter() - started
                log.write(json.dumps({"step": step + 1, "loss": total, "seconds": round(seconds, 3)}) + "\n")
        done = step + 1
        if (
            config.checkpoint_every
            and done % config.checkpoint_every == 0
            and (config.fsdp or accelerator.is_main_process)
        ):
            contents = _checkpoint_contents(method, optimizer, average)  # sharded: every process gathers
            if accelerator.is_main_process:
                if not _finite(trainable):
                    raise _diverged(output_dir, done, "non-finite weights")
                _save_checkpoint(output_dir, done, contents, config.keep_checkpoints)
        if accelerator.is_main_process and config.validate_every and done % config.validate_every == 0:
            module.eval()
            with average.swapped_in() if average is not None else contextlib.nullcontext():
                _validate(method, config, done, latent_shape, weights)
            module.train()
    module.eval()
    if average is not None:
        average.copy_into_parameters()
    if not _finite(trainable):
        raise _diverged(output_dir, config.steps, "non-finite weights")
    elapsed = time.perf_counter() - started
    _check_processes_agree(accelerator, trainable)
    tensors = full_tensors(method.adapter_tensors())
    if accelerator.is_main_process:
        _save_adapter(
            method, tensors, config, output_dir, examples, latent_shape, learning_rate, accumulation, elapsed, weights
        )
    accelerator.wait_for_everyone()  # every process returns once the adapter is there
    return output_dir / "adapter.safetensors"


def _save_adapter(
    method: Method,
    tensors: dict[str, torch.Tensor],
    config: TrainConfig,
    output_dir: Path,
    examples: list[Example],
    latent_shape: torch.Size,
    learning_rate: float,
    accumulation: int,
    elapsed: float,
    weights: torch.dtype,
) -> Path:
    """The trained adapter with its training record (and the final validation videos when asked)."""
    backbone = method.backbone
    dtype = SAVE_DTYPES[config.save_precision]
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    metadata = method.adapter_metadata()
    metadata["training"] = {
        "steps": config.steps,
        "learning_rate": learning_rate,
        "batch_size": config.batch_size,
        "gradient_accumulation": accumulation,
        "ema_decay": config.ema_decay,
        "seed": config.seed,
        "examples": len(examples),
        "latent_shape": list(latent_shape),
        "base_model": str(backbone.path),
        "seconds": round(elapsed, 2),
        "peak_memory_mb": round(peak_memory_mb(backbone.device), 1),
        "processes": AcceleratorState().num_processes,
    }
    path = save_adapter(output_dir / "adapter.safetensors", tensors, metadata)
    if config.validation_prompts and not config.validate_every:
        _validate(method, config, config.steps, latent_shape, weights)
    return path


def trained_checksum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A float64 fingerprint of trained tensors: the sums of the tensors and of their squares and a position-weighted
    sum, so a change of any value shows."""
    parts = []
    for tensor in tensors:
        flat = tensor.detach().double().reshape(-1).cpu()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64) / flat.numel()
        parts.append(torch.stack([flat.sum(), flat.square().sum(), (flat * weights).sum()]))
    return torch.stack(parts).sum(0) if parts else torch.zeros(3, dtype=torch.float64)


def _check_processes_agree(accelerator: Accelerator, trainable: list[torch.Tensor]) -> None:
    """With several processes (`accelerate launch`, `torchrun`), every one must end with the same trained tensors:
    their gradients were averaged every step. A difference (a trained tensor outside what DDP syncs) is a
    ConfigError on every process, before anything is saved."""
    if accelerator.num_processes == 1:
        return
    checksum = trained_checksum(list(full_tensors(dict(enumerate(trainable))).values()))
    checksum = checksum.to(accelerator.device, torch.float64)
    gathered = accelerator.gather(checksum[None]).cpu()
    if not torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-6, atol=1e-9):
        raise ConfigError(
            f"the {accelerator.num_processes} training processes ended with different weights (checksums "
            f"{gathered[:, 0].tolist()}); nothing was saved"
        )


def _log_lines(log_path: Path) -> list[str]:
    """The lines of a training log up to its first line that is not valid JSON (a line cut by a kill)."""
    if not log_path.exists():
        return []
    lines = []
    for line in log_path.read_text().splitlines():
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break
        lines.append(line)
    return lines


def _validate(method: Method, config: TrainConfig, step: int, latent_shape: torch.Size, weights: torch.dtype) -> None:
    """Validation videos, under autocast in the precision the weights were loaded in (`weights`) when it is low: the
    trained tensors are float32 then."""
    backbone = method.backbone
    with torch.autocast(backbone.device.type, dtype=weights, enabled=weights in LOW_PRECISIONS):
        _validation_videos(method, config, step, latent_shape)


def _validation_videos(method: Method, config: TrainConfig, step: int, latent_shape: torch.Size) -> None:
    backbone = method.backbone
    _, latent_frames, h, w = latent_shape
    scale = backbone.vae_scale_factor
    settings = GenerationConfig(
        frames=backbone.pixel_frames(latent_frames),
        height=h * scale,
        width=w * scale,
        steps=config.validation_sampling_steps,
        guidance_scale=config.guidance_scale,
        seed=config.seed,
        progress=False,
    )
    for index, prompt in enumerate(config.validation_prompts):
        latents = generate_latents(backbone, [prompt], [method], settings)
        frames_uint8 = frames_to_uint8(backbone.decode_latents(latents)[0])
        save_outputs(frames_uint8, config.output_dir / "validation" / f"step-{step:06d}-{index}.mp4", label=prompt)
