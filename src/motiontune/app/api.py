"""Python API: the same two jobs as the command line, `train` and `generate`, with the same options.

>>> from motiontune import api
>>> result = api.train("newmove", data="clips/", output="out/", model="zeroscope/", token="sks", steps=400)
>>> api.generate("a bear doing sks", "bear.mp4", model="zeroscope/", adapters=[result.adapter])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..backbones.base import Backbone, resolve_model_dir
from ..errors import ConfigError, warn
from ..io.data import check_items, check_video_source, find_video_items
from ..settings import (
    FALLBACK,
    NATIVE_KEYS,
    ModelDefaults,
    Setting,
    describe,
    generation_settings,
    option_settings,
    training_settings,
)
from ..utils import (
    atomic_write_text,
    check_output_files,
    check_regular_file,
    check_writable_folder,
    default_device,
    is_main_process,
)

if TYPE_CHECKING:
    from ..generation import GeneratedVideo

PathLike = str | os.PathLike


#: the ShapeWorld models shipped inside the package, by the name `--model` takes: their folders under assets/
SHIPPED_MODELS = {"unet3d": "shapeworld", "dit": "shapeworld-dit"}
#: the shipped model used when no `--model` is given
DEFAULT_SHIPPED_MODEL = "unet3d"


def shipped_model_dir(name: str = DEFAULT_SHIPPED_MODEL) -> Path:
    """The folder of the shipped ShapeWorld model `name` (`unet3d`: the UNet3D model, `dit`: the Wan-format DiT)."""
    if name not in SHIPPED_MODELS:
        raise ConfigError(f"no shipped model '{name}' (shipped: {', '.join(SHIPPED_MODELS)})")
    shipped = Path(str(resources.files("motiontune") / "assets" / SHIPPED_MODELS[name]))
    if not (shipped / "model_index.json").exists():
        raise ConfigError(
            f"this install ships no '{name}' model: pass --model DIR "
            "(a diffusers text-to-video folder, or one written by `motiontune tiny-model DIR`)"
        )
    return shipped


def default_model_dir() -> Path:
    """The model folder shipped inside the package that runs when no model is given."""
    return shipped_model_dir(DEFAULT_SHIPPED_MODEL)


def shipped_model_name(model: PathLike) -> str | None:
    """The name of the shipped model whose folder `model` is, else None."""
    folder = Path(model).resolve()
    for name in SHIPPED_MODELS:
        try:
            if shipped_model_dir(name).resolve() == folder:
                return name
        except ConfigError:
            continue
    return None


def model_folder(model: PathLike) -> Path:
    """`model` as a folder: a shipped model's name (`unet3d`, `dit`) names its folder in the package unless a
    local folder of that name exists; anything else is taken as given."""
    text = str(model)
    if text in SHIPPED_MODELS and not Path(text).exists():
        return shipped_model_dir(text)
    return Path(text)


#: `--weights-dtype` names
WEIGHT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def open_backbone(
    model: PathLike | None,
    device: str | torch.device | None = None,
    motion_adapter: PathLike | None = None,
    weights_dtype: str = "fp32",
) -> Backbone:
    """Load a model folder (the shipped default when `model` is None) with the attention controller installed;
    `motion_adapter` is the `MotionAdapter` folder that makes a Stable Diffusion folder AnimateDiff; `weights_dtype`
    the precision of its weights (`fp32`, `bf16`, `fp16`)."""
    from ..attention import controlled_backbone

    if weights_dtype not in WEIGHT_DTYPES:
        raise ConfigError(f"--weights-dtype must be one of {', '.join(WEIGHT_DTYPES)}, got '{weights_dtype}'")
    model = model if model is not None else default_model_dir()
    return controlled_backbone(model, _checked_device(device), motion_adapter, WEIGHT_DTYPES[weights_dtype])


def _checked_device(device: str | torch.device | None) -> torch.device:
    """The torch device to use, as a ConfigError (one line) when it is malformed or not available."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: unknown torch device '{device}' (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return device


@dataclass
class TrainResult:
    adapter: Path
    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    adapter_megabytes: float
    settings: dict[str, Setting] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"adapter: {self.adapter} ({self.adapter_megabytes:.2f} MB)",
            f"steps: {self.steps}, loss {self.first_loss:.4g} -> {self.last_loss:.4g} "
            f"(mean of first/last 10%), {self.seconds:.1f} s",
        ]
        if self.settings:
            lines += ["settings (value, where it came from):", describe(self.settings)]
        return "\n".join(lines)


def _loss_summary(log_path: Path) -> tuple[float, float]:
    losses = [json.loads(line)["loss"] for line in log_path.read_text().splitlines() if line.strip()]
    window = max(1, len(losses) // 10)
    return sum(losses[:window]) / window, sum(losses[-window:]) / window


RUN_FILE = "run.json"
#: Settings a resumed run may change: the step target (a longer run continues where the shorter one stopped).
RESUMABLE_CHANGES = ("steps",)


def _data_fingerprint(files: list[tuple[str, Path, str]]) -> str:
    """sha256 over each training file's source, content and caption: resuming on other data is refused."""
    digest = hashlib.sha256()
    for source, path, caption in files:
        digest.update(f"{source}\0{caption}\0".encode())
        if path.is_file():
            with path.open("rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        else:
            digest.update(str(path.resolve()).encode())
    return digest.hexdigest()


def _check_resumable(output: Path, current: dict) -> None:
    """Refuse to resume a finished run, or one whose recorded settings (method, options, data, model, seed,
    learning rate, size, ...) differ from the current ones, naming each difference."""
    if (output / "adapter.safetensors").exists():
        raise ConfigError(
            f"{output}: the run is finished (adapter.safetensors is written), there is nothing to resume; "
            "pass --overwrite to train it again, or give a new --output"
        )
    saved_file = output / RUN_FILE
    if not saved_file.is_file():
        return
    try:
        saved = json.loads(saved_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"{saved_file}: damaged run settings; pass --overwrite to start over") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{saved_file}: damaged run settings; pass --overwrite to start over")
    saved.setdefault("weights_dtype", "fp32")  # runs from before --weights-dtype loaded float32 weights
    changed = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES or saved.get(key) == current.get(key):
            continue
        if key == "hyperparameters":
            before, now = saved.get(key) or {}, current.get(key) or {}
            changed += [
                f"{name} {before.get(name)!r} -> {now.get(name)!r}"
                for name in sorted(set(before) | set(now))
                if before.get(name) != now.get(name)
            ]
        elif key in ("data", "model"):
            changed.append(f"{key} changed")
        else:
            changed.append(f"{key} {saved.get(key)!r} -> {current.get(key)!r}")
    if changed:
        raise ConfigError(
            f"{saved_file}: cannot resume with other settings ({', '.join(changed)}); use the same settings, "
            "or --overwrite / a new --output"
        )


def _holds_a_run(output: Path) -> bool:
    return any((output / name).exists() for name in ("adapter.safetensors", "checkpoints", RUN_FILE))


def _remove_previous_run(output: Path) -> None:
    """`--overwrite`: remove what an earlier motiontune run wrote in `output` (adapter, log, run settings,
    checkpoint and validation folders of its own naming), nothing else; the latent cache stays (its entries
    are keyed by content)."""
    from ..training import checkpoint_folders, remove_staging_folders

    for name in ("adapter.safetensors", "training_log.jsonl", RUN_FILE):
        (output / name).unlink(missing_ok=True)
    checkpoints = output / "checkpoints"
    for folder in checkpoint_folders(output):
        shutil.rmtree(folder)
    remove_staging_folders(output)
    validation = output / "validation"
    for file in validation.glob("step-[0-9]*-[0-9]*.*"):
        if file.suffix in (".mp4", ".gif", ".png"):
            file.unlink()
    for folder in (checkpoints, validation):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _clean_failed_run(output: Path, created: bool) -> None:
    """After a run failed before its first checkpoint, leave nothing half-written: the output folder if this
    run created it, else the log and settings it wrote. A run with a checkpoint stays, to resume."""
    from ..training import completed_checkpoints

    if completed_checkpoints(output):
        return
    if created:
        shutil.rmtree(output, ignore_errors=True)
        return
    for name in ("training_log.jsonl", RUN_FILE):
        (output / name).unlink(missing_ok=True)


def _out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
    )


def train(
    method: str,
    data: PathLike,
    output: PathLike,
    model: PathLike | None = None,
    motion_adapter: PathLike | None = None,
    token: str | None = "sks",
    reg_data: PathLike | None = None,
    steps: int | None = None,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    sampling: str = "uniform",
    learning_rate: float | None = None,
    batch_size: int | None = None,
    gradient_accumulation: int | None = None,
    max_grad_norm: float = 1.0,
    ema_decay: float | None = None,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 2,
    resume: bool = False,
    overwrite: bool = False,
    validate_every: int = 0,
    validation_prompts: list[str] | None = None,
    seed: int = 0,
    mixed_precision: str = "auto",
    gradient_checkpointing: bool = False,
    fsdp: bool = False,
    save_precision: str = "fp32",
    cache_dir: PathLike | None = None,
    device: str | torch.device | None = None,
    weights_dtype: str = "fp32",
    progress: bool = True,
    method_options: dict | None = None,
    sources: dict[str, str] | None = None,
    allow_outside_data: bool = False,
) -> TrainResult:
    """Train `method` on the captioned videos in `data` and write `output/adapter.safetensors`.

    For a subject method (motionbooth), `data` holds the subject's images with masks instead
    (`subject_data.find_subject_images`), captioned by the method (e.g. "a sks dog"; give the class
    word in `method_options={"class_word": "dog"}`). Every input is checked (videos readable and long
    enough, inside the dataset folder unless `allow_outside_data`, captions carry the token, options known,
    `output` writable) before anything is written to `output`. `resume` continues an unfinished run with the
    same settings (`run.json`); `overwrite` replaces what an earlier run wrote. A run that fails before its
    first checkpoint leaves nothing behind.

    Steps, learning rate, batch size, accumulation, weight average, frames and size left as None (and method
    options not given) come from the model folder's `motiontune.json`, else the method's paper setting
    (`motiontune.settings`); `sources` names where given values came from (default "argument"), and the
    result's `settings` says where each value came from. `fsdp` shards the denoiser's blocks across the training
    processes (`motiontune.sharding`; launched with 2 or more). `weights_dtype` (`fp32`, `bf16`, `fp16`) is the
    precision the model's weights load in; trained tensors stay float32 and train under autocast in that precision.
    """
    import time

    from ..io.data import VideoDataset
    from ..io.subject_data import find_subject_images, prepare_subject_examples
    from ..methods import create_method, method_class
    from ..training import TrainConfig, check_mixed_precision, prepare_examples
    from ..training import train as run_training

    cls = method_class(method)
    subject_images = cls.training_data == "subject images"
    settings, options = training_settings_for(
        cls,
        model,
        given={
            "steps": steps,
            "learning_rate": learning_rate,
            "batch_size": batch_size,
            "gradient_accumulation": gradient_accumulation,
            "ema_decay": ema_decay,
            "frames": frames,
            "height": height,
            "width": width,
        },
        given_options=method_options or {},
        sources=sources or {},
    )
    steps, frames, height, width = (settings[key].value for key in ("steps", "frames", "height", "width"))
    config = TrainConfig(
        output_dir=Path(output),
        steps=steps,
        learning_rate=settings["learning_rate"].value,
        batch_size=settings["batch_size"].value,
        gradient_accumulation=settings["gradient_accumulation"].value,
        max_grad_norm=max_grad_norm,
        ema_decay=settings["ema_decay"].value,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        validate_every=validate_every,
        validation_prompts=list(validation_prompts or []),
        seed=seed,
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
        fsdp=fsdp,
        save_precision=save_precision,
        resume=resume,
        progress=progress,
        frames=frames,
    )
    output = Path(output)
    check_writable_folder(output, "--output")
    cache = Path(cache_dir) if cache_dir is not None else output / "cache"
    check_writable_folder(cache, "--cache-dir")
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: give one")
    main = is_main_process()
    if main and not resume and not overwrite and _holds_a_run(output):
        raise ConfigError(
            f"{output}: already holds a training run; pass --resume to continue it or --overwrite to replace it"
        )
    images = find_subject_images(data) if subject_images else []
    sources = {} if subject_images else {"target": find_video_items(data, allow_outside_data)}
    if reg_data is not None:
        sources["regularization"] = find_video_items(reg_data, allow_outside_data)
    for items in sources.values():
        check_items(items, frames, sampling)
    check_mixed_precision(weights_dtype, mixed_precision)
    backbone = open_backbone(model, device, motion_adapter, weights_dtype)
    if height % backbone.pixel_multiple or width % backbone.pixel_multiple:
        raise ConfigError(f"--height/--width must be multiples of {backbone.pixel_multiple}, got {height}x{width}")
    trainer = create_method(method, backbone, {key: option.value for key, option in options.items()}, token=token)
    for source, items in sources.items():
        for item in items:
            trainer.check_caption(item.caption, source, str(item.path))
    long = [item for items in sources.values() for item in items if backbone.prompt_overflow(item.caption)]
    if long:
        dropped = backbone.prompt_overflow(long[0].caption)
        warn(
            f"{long[0].path}: caption is longer than the text encoder reads and is cut "
            f"({len(long)} caption(s) in all; {dropped} tokens dropped from this one)",
            once=True,
        )
    for prompt in config.validation_prompts:
        trainer.check_prompt(prompt)
    files = [(source, Path(item.path), item.caption) for source, items in sources.items() for item in items]
    files += [("subject", image.path, trainer.subject_caption()) for image in images]
    described = trainer.adapter_metadata()
    run_settings = {
        **{key: described[key] for key in ("method", "token", "hyperparameters")},
        **{key: setting.value for key, setting in settings.items()},
        "sampling": sampling,
        "seed": seed,
        "max_grad_norm": max_grad_norm,
        "mixed_precision": mixed_precision,
        "weights_dtype": weights_dtype,
        "model": backbone.fingerprint(),
        "data": _data_fingerprint(files),
    }
    if resume and main:
        _check_resumable(output, run_settings)
    elif overwrite and main:
        _remove_previous_run(output)

    created = main and not output.exists()
    try:
        examples = []
        if subject_images:
            examples += prepare_subject_examples(backbone, images, trainer.subject_caption(), height, width, progress)
        for source, items in sources.items():
            dataset = VideoDataset(items, frames, height, width, sampling)
            examples += prepare_examples(backbone, dataset, source, cache, progress)
        if main:
            atomic_write_text(output / RUN_FILE, json.dumps(run_settings, indent=2, sort_keys=True) + "\n")
        started = time.perf_counter()
        adapter = run_training(trainer, examples, config)
        seconds = time.perf_counter() - started
    except BaseException as error:
        if main:
            _clean_failed_run(output, created)
        if _out_of_memory(error):
            raise ConfigError(
                f"out of memory training {steps} steps of batch size {config.batch_size} at {frames}x{height}x{width}; "
                "lower --batch-size (and raise --gradient-accumulation), --frames or the size"
            ) from None
        raise
    first, last = _loss_summary(config.output_dir / "training_log.jsonl")
    every = {**settings, **{f"{method} {key}": option for key, option in options.items()}}
    return TrainResult(adapter, steps, first, last, seconds, adapter.stat().st_size / 2**20, every)


def training_settings_for(
    cls,
    model: PathLike | None,
    given: dict[str, object],
    given_options: dict[str, object],
    sources: dict[str, str],
    check_options: bool = True,
) -> tuple[dict[str, Setting], dict[str, Setting]]:
    """Resolve `given` training values (None = not given) and method options against the model folder's
    recommendations and the method's paper settings; a value's source is `sources[key]` or "argument". With
    `check_options` off the options are not checked as a whole (to show the defaults before the user has given
    what a method requires, e.g. MotionBooth's class word)."""
    model_dir = resolve_model_dir(model if model is not None else default_model_dir())
    defaults = ModelDefaults.read(model_dir)
    stated = {key: Setting(value, sources.get(key, "argument")) for key, value in given.items() if value is not None}
    settings = training_settings(cls.name, {"ema_decay": 0.0, **cls.paper_settings}, defaults, stated)
    stated_options = {k: Setting(v, sources.get(k, "argument")) for k, v in given_options.items() if v is not None}
    options = option_settings(cls.name, defaults, stated_options)
    if not check_options:
        return settings, options
    error = _config_error(cls, options)
    if error is None:
        return settings, options
    recommended = [key for key, option in options.items() if option.source == defaults.label]
    if recommended and defaults.path is not None and _config_error(cls, stated_options) is None:
        raise ConfigError(f"{defaults.path}: training.{cls.name}.options: {error}") from None
    raise error


def _config_error(cls, options: dict[str, Setting]) -> ConfigError | None:
    """What the method says against `options` (on its own defaults for the rest), or None when it accepts them.
    When the user's options alone are refused, the error is theirs, not the model folder's recommendations'."""
    try:
        cls.config_from_dict({key: option.value for key, option in options.items()})
    except ConfigError as error:
        return error
    return None


def generate(prompt: str | None = None, output: PathLike = "output.mp4", **options) -> dict[str, Path]:
    """Generate one video for `prompt` (`generate_video`, with the same options); returns the MP4, GIF and PNG
    paths."""
    return generate_video(prompt, output, **options).paths


def generate_video(
    prompt: str | None = None,
    output: PathLike = "output.mp4",
    model: PathLike | None = None,
    motion_adapter: PathLike | None = None,
    adapters: list[PathLike] | None = None,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    negative_prompt: str = "",
    sampler: str | None = None,
    seed: int = 0,
    reference: PathLike | None = None,
    noise_prior: float = 0.0,
    image: PathLike | None = None,
    debias: str | None = None,
    fps: int = 8,
    device: str | torch.device | None = None,
    weights_dtype: str = "fp32",
    progress: bool = True,
    script: PathLike | None = None,
    subject: str | None = None,
    boxes: dict[str, list[list[float]]] | list | None = None,
    camera_speed: tuple[float, float] | None = None,
    box_strength: float = 10.0,
    amplify_until: int = 700,
    keep_other_words: bool = False,
    shift_window: tuple[int, int] | None = None,
    attention_maps: list[str] | None = None,
    allow_other_model: bool = False,
    overwrite: bool = False,
) -> GeneratedVideo:
    """Generate one video for `prompt` with any number of adapters; returns its frames as decoded and the
    paths of the MP4, GIF and PNG written from them. Existing outputs are replaced only with `overwrite`; the
    output paths, the prompt and the reference are checked before the model loads.

    Frames and size default to those the (first) adapter was trained at, else the model folder's native
    size (`motiontune.json`), else 16 frames at the UNet's configured sample size. Sampling steps, guidance
    scale, Motion Inversion's `debias` and the camera `shift_window` default to the model folder's
    recommendation, else 50, 9.0, object, (800, 600).

    `weights_dtype` (`fp32`, `bf16`, `fp16`) is the precision the model's weights load in. `image` is a start image,
    the video's first frame, on a model trained to start from one (Wan 2.2 TI2V; refused in one line elsewhere).

    MotionBooth controls (`motiontune.control`): `script` is an official JSON control script whose
    prompt, boxes and camera speed are used unless `prompt`, `boxes` (subject words -> keyframe boxes
    x1, y1, x2, y2 in [0, 1], spread evenly over the video; or a list of `control.SubjectPath`) or
    `camera_speed` (fraction of the frame travelled, dx, dy) are given; `subject` fills its
    '[rare token] [class name]' placeholder. The other control options are those of `control.ControlOptions`.

    `attention_maps`: words of the prompt whose cross-attention maps (`attention_maps.WordAttention`) are drawn over
    the frames into `OUTPUT.attention.png` (`paths["attention"]`).
    """
    from ..attention_maps import WordAttention, write_attention_sheet
    from ..control import ControlOptions, control_hooks, motion_script, sampling_timesteps
    from ..generation import GenerationConfig
    from ..generation import generate as run_generation
    from ..io.adapters import read_metadata
    from ..io.video import output_paths
    from ..methods import load_adapters

    motion = motion_script(prompt, script, subject, boxes, camera_speed)
    if not motion.prompt.strip():
        raise ConfigError("--prompt is empty" if script is None else f"{script}: the script's prompt is empty")
    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise ConfigError(f"{output}: output must be an .mp4 path (GIF and PNG are written beside it)")
    attention_sheet = output.with_suffix(".attention.png")
    written = [*output_paths(output).values(), *([attention_sheet] if attention_maps else [])]
    check_output_files(written, "--output", overwrite)
    if reference is not None:
        check_video_source(Path(reference), "--reference")
    if image is not None:
        check_regular_file(Path(image), "--image")
    adapters = [Path(a) for a in adapters or []]
    metadata = [read_metadata(path) for path in adapters]
    backbone = open_backbone(model, device, motion_adapter, weights_dtype)
    methods = load_adapters(adapters, backbone, allow_other_model)
    defaults = ModelDefaults.read(backbone.path)
    given = {"steps": steps, "guidance_scale": guidance_scale, "debias": debias, "shift_window": shift_window}
    given = {key: Setting(value, "argument") for key, value in given.items()}
    sampling = generation_settings(defaults, given)
    window = tuple(sampling["shift_window"].value)
    control = ControlOptions(box_strength, amplify_until, keep_other_words, window)
    trained = next((m["training"] for m in metadata if "training" in m), None)
    if trained:
        _, trained_frames, latent_h, latent_w = trained["latent_shape"]
        scale = backbone.vae_scale_factor
        native = (backbone.pixel_frames(trained_frames), latent_h * scale, latent_w * scale)
    elif defaults.native or defaults.family.get("native"):
        stated = {**defaults.family.get("native", {}), **defaults.native}
        native = tuple(stated.get(key, FALLBACK[key]) for key in NATIVE_KEYS)
    else:
        size = (backbone.denoiser.config.sample_size or 32) * backbone.vae_scale_factor
        native = (16, size, size)
    settings = GenerationConfig(
        frames=frames or native[0],
        height=height or native[1],
        width=width or native[2],
        steps=sampling["steps"].value,
        guidance_scale=sampling["guidance_scale"].value,
        seed=seed,
        negative_prompt=negative_prompt,
        sampler=sampler,
        reference=Path(reference) if reference is not None else None,
        image=Path(image) if image is not None else None,
        noise_prior=noise_prior,
        debias=sampling["debias"].value,
        progress=progress,
        fps=fps,
    )
    timesteps = sampling_timesteps(backbone, settings.sampler, settings.steps)
    hooks = control_hooks(backbone, motion, settings.frames, timesteps, control, seed)
    if not attention_maps:
        return run_generation(backbone, motion.prompt, output, methods, settings, hooks)
    attention = WordAttention(backbone, motion.prompt, attention_maps)
    with attention.recording():
        video = run_generation(backbone, motion.prompt, output, methods, settings, [*hooks, attention])
    video.paths["attention"] = write_attention_sheet(video.frames, attention.maps(), attention_sheet)
    return video


def evaluate(
    videos: list[str | os.PathLike],
    output: str | os.PathLike,
    *,
    reference: str | os.PathLike | None = None,
    prompt: str | None = None,
    prompts: list[str] | None = None,
    subject_images: str | os.PathLike | None = None,
    boxes: str | os.PathLike | None = None,
    camera_speed: tuple[float, float] | None = None,
    clip: str | os.PathLike | None = None,
    dino: str | os.PathLike | None = None,
    tracker: str | None = None,
    shapeworld: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Score `videos` with the papers' metrics and write the report into `output` (`motiontune evaluate`; see
    docs/evaluate.md): `prompt` for every video or `prompts` one per video (CLIP-T), `reference` (motion fidelity,
    appearance leakage), `subject_images` and `boxes` (a control script; R-CLIP / R-DINO), `camera_speed` (camera
    error), local `clip` / `dino` folders (a missing one skips its scores), `tracker` as `module:factory`,
    `shapeworld` to add the ShapeWorld lab's reading of each video. Returns the contents of `metrics.json`."""
    from .evaluate import EvaluationInputs, evaluate_videos

    paths = [Path(video) for video in videos]
    if prompt is not None and prompts is not None:
        raise ConfigError("give prompt (one for every video) or prompts (one per video), not both")
    inputs = EvaluationInputs(
        reference=Path(reference) if reference is not None else None,
        prompts=[prompt] * len(paths) if prompt is not None else prompts,
        subject_images=Path(subject_images) if subject_images is not None else None,
        boxes=Path(boxes) if boxes is not None else None,
        camera_speed=camera_speed,
        clip=Path(clip) if clip is not None else None,
        dino=Path(dino) if dino is not None else None,
        tracker=tracker,
        shapeworld=shapeworld,
    )
    return evaluate_videos(paths, Path(output), inputs, overwrite=overwrite, progress=progress)
