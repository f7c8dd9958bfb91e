"""`motiontune` command line: train, generate, demo, tiny-model. Every option can also come from YAML."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import math
import sys
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from ..errors import LOGGER, ConfigError, InputError, MotiontuneError
from ..io.export import FORMATS as EXPORT_FORMATS
from ..utils import MAX_SEED, check_regular_file, check_writable_folder, is_main_process

FITTED = (
    "(default: the model folder's recommendation for the method in its motiontune.json, else the method's "
    "paper setting; the training summary says which; see docs/defaults.md)"
)
FITTED_NATIVE = "(default: the model folder's native size in its motiontune.json, else the method's paper setting)"
FITTED_SAMPLING = "(default: the model folder's recommendation in its motiontune.json, else {})"
ALLOW_OTHER_MODEL_HELP = "load adapters trained on another base model than --model (their fingerprints differ)"
MOTION_TOKEN_HELP = "rare token that stands for the learned motion or subject in prompts (V*), e.g. sks"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are ConfigErrors: one `motiontune: error:` line and exit 2, like every other error."""

    def error(self, message: str) -> None:
        raise ConfigError(f"{self.prog}: {' '.join(message.split())} (see {self.prog} --help)")


def _checked_number(kind: type, valid, requirement: str):
    """An argparse `type` that parses `kind` and refuses values outside `valid` (nan and inf included), saying
    what the option must be."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    return parse


_positive_int = _checked_number(int, lambda value: value >= 1, "a positive integer")
_finite_float = _checked_number(float, math.isfinite, "a finite number")
_seed = _checked_number(int, lambda value: 0 <= value <= MAX_SEED, "an integer from 0 to 2**63 - 1")
SHIPPED_MODEL_HELP = "'unet3d' or 'dit' names a ShapeWorld model shipped with motiontune"


def _model_argument(text: str) -> str:
    """`--model`: a folder or hub id as given, or the folder of the shipped model it names (`unet3d`, `dit`)."""
    from .api import model_folder

    return str(model_folder(text))


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="YAML file whose keys are this command's options (dashes or underscores); "
        "options given on the command line win",
    )


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=_model_argument,
        help="diffusers text-to-video model folder (e.g. a local ZeroScope checkout); "
        f"defaults to the model shipped with motiontune; {SHIPPED_MODEL_HELP}",
    )
    parser.add_argument(
        "--motion-adapter",
        type=Path,
        help="AnimateDiff motion adapter folder (a diffusers MotionAdapter) that turns a Stable Diffusion "
        "--model folder into an AnimateDiff model; not needed for a saved AnimateDiffPipeline folder",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--weights-dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="precision the model's weights are loaded in; bf16 halves the memory of a large model (Wan 14B). "
        "Trained tensors stay float32 and training runs under autocast in that precision",
    )


def _method_fields() -> dict[str, dataclasses.Field]:
    from ..methods import METHODS

    fields: dict[str, dataclasses.Field] = {}
    for cls in METHODS.values():
        for item in dataclasses.fields(cls.Config):
            fields.setdefault(item.name, item)
    return fields


def _method_help() -> str:
    """`train --method` help: every method `train` offers, with its one-line summary."""
    from ..methods import METHODS

    offered = [f"{name}: {cls.summary}" for name, cls in METHODS.items() if not cls.internal]
    return "method to train, one of " + "; ".join(offered)


def _add_method_options(parser: argparse.ArgumentParser) -> None:
    from ..methods import METHODS

    group = parser.add_argument_group("method options (each applies to the methods whose config has it)")
    for name, item in _method_fields().items():
        owners = [m for m, cls in METHODS.items() if name in {f.name for f in dataclasses.fields(cls.Config)}]
        help_text = f"{item.metadata.get('help', '')} [{', '.join(owners)}; default {item.default}]"
        flag = "--" + name.replace("_", "-")
        if item.type in (bool, "bool"):
            group.add_argument(flag, dest=f"method_{name}", action=argparse.BooleanOptionalAction, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(str(item.type), str)
            group.add_argument(flag, dest=f"method_{name}", type=kind, help=help_text)


def _add_motion_controls(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "MotionBooth controls (training-free; boxes are x1,y1,x2,y2 fractions of the frame, timesteps count down "
        "from 1000)"
    )
    group.add_argument(
        "--script",
        type=Path,
        default=None,
        help="MotionBooth control script (JSON: prompt, phrases, bbox, bbox_proportions, camera_speed, bg_phrase); "
        "--prompt, --box and --camera-speed override its values",
    )
    group.add_argument(
        "--subject",
        default=None,
        help="words that replace the script placeholder '[rare token] [class name]', e.g. 'sks dog'",
    )
    group.add_argument(
        "--box",
        action="append",
        default=None,
        metavar="WORDS:x1,y1,x2,y2[;x1,y1,x2,y2...]",
        help="box path of the subject named by WORDS in the prompt; keyframes are spread evenly over the frames "
        "(repeatable, one per subject; replaces the script's boxes)",
    )
    group.add_argument(
        "--camera-speed",
        default=None,
        metavar="DX,DY",
        help="camera travel over the video as fractions of the frame width and height "
        "(positive DX pans right, positive DY moves down); overrides the script's",
    )
    group.add_argument(
        "--box-strength",
        type=_finite_float,
        default=10.0,
        help="alpha: subject tokens inside their box get + alpha * (1 - box area / frame area)",
    )
    group.add_argument(
        "--amplify-until",
        type=int,
        default=700,
        metavar="TIMESTEP",
        help="tau: amplify inside the boxes while the timestep is above this (700 = the first 15 of 50 steps; "
        "timesteps of a 1000-step model, i.e. noise level x 1000 on any model)",
    )
    group.add_argument(
        "--keep-other-words",
        action="store_true",
        help="leave prompt words other than the boxed subjects untouched instead of suppressing them everywhere "
        "as the official code does (which leaves only the start/end tokens to carry the scene)",
    )
    group.add_argument(
        "--shift-window",
        default=None,
        metavar="START,END",
        help="camera shift at the steps with START >= timestep > END (noise level x 1000; default: the model's "
        "recommendation, else MotionBooth's 800,600 = steps 10-19 of 50)",
    )


def _add_video_counts(parser: argparse.ArgumentParser, prompts: int, per: str) -> None:
    """A bench's `--prompts`, `--seeds` and `--sampling-steps`: how many videos it scores and how."""
    parser.add_argument("--prompts", type=_positive_int, default=prompts, help=f"prompts per {per}")
    parser.add_argument("--seeds", type=_positive_int, default=2, help="seeds per prompt")
    parser.add_argument("--sampling-steps", type=_positive_int, default=25, help="DDIM steps per video")


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    """`motiontune train`: every option, with the method options of every method."""
    train = commands.add_parser(
        "train",
        help="customize a model on a few reference videos and write an adapter",
        description="Train an adapter. DATA holds name.mp4 + name.txt pairs (or a metadata.csv/.jsonl with "
        "video_path,caption). Writes OUTPUT/adapter.safetensors, checkpoints and a training log.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_config(train)
    train.add_argument("--method", default="newmove", help=_method_help())
    _add_model(train)
    train.add_argument(
        "--data",
        type=Path,
        help="folder of reference videos with captions (required); for motionbooth, subject images with masks "
        "(masks/NAME.png, NAME_mask.png or an alpha channel)",
    )
    train.add_argument("--reg-data", type=Path, help="folder of real captioned regularization videos (NewMove Eq. 3)")
    train.add_argument(
        "--allow-outside-data",
        action="store_true",
        help="let metadata.csv/.jsonl rows name videos outside the dataset folder (refused by default)",
    )
    train.add_argument("--token", default="sks", help=MOTION_TOKEN_HELP)
    train.add_argument("--output", type=Path, help="output folder for the adapter and checkpoints (required)")
    train.add_argument("--steps", type=_positive_int, default=None, help=f"optimizer steps {FITTED}")
    train.add_argument(
        "--frames", type=_positive_int, default=None, help=f"frames sampled from each video {FITTED_NATIVE}"
    )
    train.add_argument("--height", type=_positive_int, default=None, help=f"training height in pixels {FITTED_NATIVE}")
    train.add_argument("--width", type=_positive_int, default=None, help=f"training width in pixels {FITTED_NATIVE}")
    train.add_argument("--sampling", default="uniform", help="frame sampling: uniform or stride:K")
    train.add_argument("--lr", type=_finite_float, default=None, help=f"learning rate {FITTED}")
    train.add_argument("--batch-size", type=_positive_int, default=None, help=f"clips per micro-batch {FITTED}")
    train.add_argument(
        "--gradient-accumulation",
        type=_positive_int,
        default=None,
        help=f"micro-batches per step (2 for motionbooth's image + video batches) {FITTED}",
    )
    train.add_argument("--max-grad-norm", type=_finite_float, default=1.0, help="gradient clipping (0 = off)")
    train.add_argument(
        "--ema-decay",
        type=_finite_float,
        default=None,
        help="keep an exponential moving average of the trained weights with this decay (e.g. 0.999) and save "
        f"it as the adapter; checkpoints hold it as ema.safetensors (0 = off) {FITTED}",
    )
    train.add_argument("--checkpoint-every", type=int, default=100, help="write a checkpoint every N steps")
    train.add_argument("--keep-checkpoints", type=int, default=2, help="how many checkpoints to keep")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT")
    train.add_argument("--overwrite", action="store_true", help="replace a finished or started run in OUTPUT")
    train.add_argument("--validate-every", type=int, default=0, help="write validation videos every N steps")
    train.add_argument(
        "--validation-prompt", action="append", default=None, help="prompt for validation videos (repeatable)"
    )
    train.add_argument("--seed", type=_seed, default=0, help="seed of every random draw in training")
    train.add_argument("--mixed-precision", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), no, bf16, fp16")
    train.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations in backward to save memory",
    )
    train.add_argument(
        "--fsdp",
        action="store_true",
        help="shard the denoiser's blocks across the training processes (FSDP2) instead of a full copy on each: "
        "for models whose weights do not fit one device (Wan 14B); needs 2 or more processes (torchrun)",
    )
    train.add_argument("--save-precision", default="fp32", help="adapter tensor precision: fp32, fp16 or bf16")
    train.add_argument("--cache-dir", type=Path, default=None, help="cache VAE latents here (default OUTPUT/cache)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_method_options(train)


def _add_generate_command(commands: argparse._SubParsersAction) -> None:
    """`motiontune generate`: prompt, adapters, sampling and the training-free controls."""
    from ..methods.motion_inversion import DEBIAS_MODES

    generate = commands.add_parser(
        "generate",
        help="generate a video, optionally with adapters",
        description="Generate one video and write VIDEO.mp4 with VIDEO.gif and a VIDEO.png contact sheet beside it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_config(generate)
    _add_model(generate)
    generate.add_argument("--adapter", type=Path, action="append", default=None, help="adapter file (repeatable)")
    generate.add_argument(
        "--prompt", help="text prompt; must contain each adapter's token (required unless --script gives one)"
    )
    generate.add_argument("--negative-prompt", default="", help="prompt of the unconditional branch")
    generate.add_argument("--frames", type=_positive_int, default=None, help="frames (default: the adapter's)")
    generate.add_argument("--height", type=_positive_int, default=None, help="height (default: the adapter's)")
    generate.add_argument("--width", type=_positive_int, default=None, help="width (default: the adapter's)")
    generate.add_argument(
        "--steps", type=_positive_int, default=None, help=f"sampling steps {FITTED_SAMPLING.format(50)}"
    )
    generate.add_argument(
        "--guidance-scale",
        type=_finite_float,
        default=None,
        help=f"classifier-free guidance scale {FITTED_SAMPLING.format(9.0)}",
    )
    generate.add_argument(
        "--sampler",
        default=None,
        help="DDPM models: ddim (their default), ddpm, dpm++, euler, euler-a or unipc; flow-matching models (Wan): "
        "unipc (the default of a folder that ships it, as Wan's do) or flow-euler",
    )
    generate.add_argument("--seed", type=_seed, default=0, help="the same seed gives the same frames")
    generate.add_argument("--reference", type=Path, default=None, help="reference video for --noise-prior")
    generate.add_argument(
        "--image",
        type=Path,
        default=None,
        help="start image: the video's first frame, animated with the prompt and adapters (a model trained to start "
        "from an image: Wan 2.2 TI2V)",
    )
    generate.add_argument(
        "--noise-prior",
        type=_finite_float,
        default=0.0,
        help="start from sqrt(p) * inverted reference + sqrt(1-p) * noise",
    )
    generate.add_argument(
        "--debias",
        default=None,
        choices=list(DEBIAS_MODES),
        help="Motion Inversion adapters: object/hybrid use the value embedding's frame difference, "
        f"camera drops it, none keeps it as trained {FITTED_SAMPLING.format('object')}",
    )
    generate.add_argument("--fps", type=_positive_int, default=8, help="frames per second of the MP4/GIF")
    generate.add_argument(
        "--attention-maps",
        action="append",
        default=None,
        metavar="WORDS",
        help="also write OUTPUT.attention.png: where these words of the prompt look (their cross-attention, "
        "averaged over steps, as MotionBooth's box control reads it) over the frames (repeatable)",
    )
    generate.add_argument("--output", type=Path, default=Path("output.mp4"), help="output MP4 path")
    generate.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the MP4, GIF and PNG (and attention sheet) if they exist (refused otherwise)",
    )
    generate.add_argument("--quiet", action="store_true", help="no progress bars")
    generate.add_argument(
        "--allow-other-model",
        action="store_true",
        help=ALLOW_OTHER_MODEL_HELP,
    )
    _add_motion_controls(generate)


def _add_demo_command(commands: argparse._SubParsersAction) -> None:
    """`motiontune demo`."""
    demo = commands.add_parser(
        "demo",
        help="run the main job end to end on the shipped default and write a report",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_config(demo)
    demo.add_argument("--output", type=Path, default=Path("motiontune-demo"), help="folder for everything")
    demo.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the demo's)")
    demo.add_argument(
        "--model",
        type=_model_argument,
        default=None,
        help="a ShapeWorld model folder, UNet3D or Wan format (default: the shipped model); the demo's clips take "
        f"its native frames and size; {SHIPPED_MODEL_HELP}",
    )
    demo.add_argument("--device", default=None, help="torch device")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--overwrite", action="store_true", help="run again in a folder that holds a finished demo")


def _add_world_command(commands: argparse._SubParsersAction) -> None:
    """`motiontune world render|base|evaluate`: the ShapeWorld lab."""
    world = commands.add_parser("world", help="ShapeWorld: render clips, train the base model")
    world_commands = world.add_subparsers(dest="world_command", required=True, metavar="WORLD_COMMAND")
    render = world_commands.add_parser(
        "render",
        help="write ShapeWorld clips (mp4 + caption + ground truth) of one motion",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    render.add_argument("--motion", default="zigzag", help="static, left, right, up, down or novel: zigzag, orbit, ...")
    render.add_argument("--count", type=_positive_int, default=4, help="number of clips")
    render.add_argument("--frames", type=_positive_int, default=8, help="frames per clip")
    render.add_argument("--size", type=_positive_int, default=32, help="frame height and width in pixels")
    render.add_argument("--token", default="sks", help="token that names a novel motion in captions")
    render.add_argument("--shapes", default="circle,square,triangle", help="comma-separated shapes to draw from")
    render.add_argument("--backgrounds", default="white,black,gray", help="comma-separated backgrounds")
    render.add_argument("--seed", type=_seed, default=0, help="the same seed gives the same clips")
    render.add_argument("--output", type=Path, required=True, help="folder to write")
    base = world_commands.add_parser(
        "train-base",
        help="train the ShapeWorld base model (autoencoder, then UNet) from a YAML recipe",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    base.add_argument(
        "--config", dest="recipe", type=Path, default=None, help="YAML recipe (keys of worldmodel.BaseModelConfig)"
    )
    base.add_argument("--output", type=Path, required=True, help="folder for stages, checkpoints and model/")
    base.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    base.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this model folder (autoencoder, text encoder, UNet) instead of from scratch, "
        "e.g. to go on training the shipped model under a changed recipe",
    )
    base.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate = world_commands.add_parser(
        "evaluate",
        help="score a ShapeWorld model with the analytic metrics (colour, shape, background, motion)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    evaluate.add_argument(
        "--model",
        type=_model_argument,
        help=f"model folder (default: the shipped ShapeWorld model); {SHIPPED_MODEL_HELP}",
    )
    evaluate.add_argument(
        "--adapter", type=Path, action="append", default=[], help="adapter to apply, e.g. a training checkpoint"
    )
    evaluate.add_argument("--prompts", type=_positive_int, default=64, help="sampled prompts")
    evaluate.add_argument("--seeds", type=_positive_int, default=2, help="seeds per prompt")
    evaluate.add_argument("--steps", type=_positive_int, default=25, help="sampling steps")
    evaluate.add_argument("--guidance-scale", type=_finite_float, default=5.0, help="classifier-free guidance scale")
    evaluate.add_argument(
        "--sheet",
        type=Path,
        default=None,
        help="write a PNG contact sheet of samples here (with --autoencoder: clips above their reconstructions)",
    )
    evaluate.add_argument(
        "--autoencoder",
        action="store_true",
        help="score the autoencoder instead: --prompts held-out clips encoded and decoded (what it loses caps the "
        "model's accuracies); --model may then be a recipe's stages/autoencoded folder before the denoiser trains, or "
        "an autoencoder checkpoint in training (OUTPUT/stages/autoencoder-training/latest)",
    )
    evaluate.add_argument(
        "--novel-motions",
        action="store_true",
        help="with --autoencoder: held-out clips of the novel motions (zigzag, orbit, bounce, diagonal) instead of "
        "the known ones, to see whether a novel motion survives the autoencoder's temporal compression",
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.add_argument(
        "--allow-other-model",
        action="store_true",
        help=ALLOW_OTHER_MODEL_HELP,
    )


def _add_bench_command(commands: argparse._SubParsersAction) -> None:
    """`motiontune bench shapeworld|curves|motionbooth`."""
    bench = commands.add_parser("bench", help="measure methods and ablations on a task")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    shapeworld_bench = bench_commands.add_parser(
        "shapeworld",
        help="every method and NewMove ablation learning a novel ShapeWorld motion, scored analytically",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    shapeworld_bench.add_argument(
        "--model",
        type=_model_argument,
        default=None,
        help=f"model folder (default: shipped, else tiny random); {SHIPPED_MODEL_HELP}",
    )
    shapeworld_bench.add_argument("--rows", default=None, help="semicolon-separated rows (default: all)")
    shapeworld_bench.add_argument("--row", default=None, help=argparse.SUPPRESS)
    shapeworld_bench.add_argument(
        "--steps", type=_positive_int, default=None, help="training steps per row (default: the model's recommendation)"
    )
    shapeworld_bench.add_argument(
        "--motions",
        default="zigzag",
        help="comma list of motions to learn: the novel zigzag, orbit, bounce, diagonal, or a path of your own "
        "('path:x y;x y;...', keyframe offsets in fractions of the frame, e.g. 'path:0 0;0.3 0;0.3 0.3')",
    )
    shapeworld_bench.add_argument(
        "--training-seeds", type=_positive_int, default=1, help="training runs per row and motion (seeds 0..N-1)"
    )
    shapeworld_bench.add_argument("--motion", default="zigzag", help=argparse.SUPPRESS)
    shapeworld_bench.add_argument("--training-seed", type=int, default=0, help=argparse.SUPPRESS)
    _add_video_counts(shapeworld_bench, prompts=8, per="row")
    shapeworld_bench.add_argument("--output", type=Path, default=Path("bench-shapeworld"), help="work folder")
    shapeworld_bench.add_argument("--report", type=Path, default=None, help="markdown file to write the table into")
    shapeworld_bench.add_argument("--quiet", action="store_true", help="no progress lines")
    curves_bench = bench_commands.add_parser(
        "curves",
        help="motion accuracy against training steps and seconds for every motion method",
        description="Train each motion method once on one novel ShapeWorld motion, score a checkpoint every "
        "--every steps and write results.json, curves.png and (with --report) a markdown table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    curves_bench.add_argument(
        "--model",
        type=_model_argument,
        default=None,
        help=f"model folder (default: shipped, else tiny random); {SHIPPED_MODEL_HELP}",
    )
    curves_bench.add_argument(
        "--rows",
        default=None,
        help="semicolon-separated rows (default: every motion method, and 'motionbooth subject': MotionBooth's "
        "subject accuracy on the subject task of bench motionbooth)",
    )
    curves_bench.add_argument(
        "--motion",
        default="zigzag",
        help="motion to learn: a novel one (zigzag, orbit, bounce, diagonal) or a path of your own, "
        "'path:x y;x y;...' (keyframe offsets in fractions of the frame)",
    )
    curves_bench.add_argument(
        "--steps", type=_positive_int, default=None, help="training steps per row (default: the model's recommendation)"
    )
    curves_bench.add_argument("--every", type=_positive_int, default=25, help="score a checkpoint every N steps")
    _add_video_counts(curves_bench, prompts=8, per="checkpoint")
    curves_bench.add_argument("--output", type=Path, default=Path("bench-curves"), help="work folder")
    curves_bench.add_argument("--report", type=Path, default=None, help="markdown file to write the table into")
    curves_bench.add_argument("--quiet", action="store_true", help="no progress lines")
    from .bench_motionbooth import ROWS as MOTIONBOOTH_BENCH_ROWS

    motionbooth_bench = bench_commands.add_parser(
        "motionbooth",
        help="MotionBooth on ShapeWorld: subject fidelity and background leakage (with and without the region "
        "loss), box control and camera control, scored analytically",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    motionbooth_bench.add_argument(
        "--model",
        type=_model_argument,
        default=None,
        help=f"model folder (default: the shipped model, else a tiny random one); {SHIPPED_MODEL_HELP}",
    )
    motionbooth_bench.add_argument(
        "--rows",
        default=None,
        help=f"semicolon-separated rows, of: {'; '.join(MOTIONBOOTH_BENCH_ROWS)} (default: all)",
    )
    motionbooth_bench.add_argument("--row", default=None, help=argparse.SUPPRESS)
    motionbooth_bench.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="MotionBooth training steps (default: the model's recommendation)",
    )
    motionbooth_bench.add_argument(
        "--lr", type=_finite_float, default=None, help="MotionBooth learning rate (default: the model's recommendation)"
    )
    motionbooth_bench.add_argument(
        "--training-seeds", type=_positive_int, default=1, help="training runs per MotionBooth row (seeds 0..N-1)"
    )
    motionbooth_bench.add_argument("--training-seed", type=int, default=0, help=argparse.SUPPRESS)
    _add_video_counts(motionbooth_bench, prompts=12, per="row")
    motionbooth_bench.add_argument(
        "--output", type=Path, default=Path("bench-motionbooth"), help="work folder (results.json goes here)"
    )
    motionbooth_bench.add_argument(
        "--report",
        type=Path,
        default=None,
        help="markdown file whose section between <!-- bench-motionbooth:begin/end --> gets the tables",
    )
    motionbooth_bench.add_argument("--quiet", action="store_true", help="no progress lines")


def _add_tiny_model_command(commands: argparse._SubParsersAction) -> None:
    """`motiontune tiny-model`."""
    tiny = commands.add_parser(
        "tiny-model",
        help="write a tiny random text-to-video model folder (diffusers layout) for tests and trials",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tiny.add_argument("output", type=Path, help="folder to create")
    tiny.add_argument("--seed", type=_seed, default=0, help="initialisation seed")
    tiny.add_argument(
        "--architecture",
        choices=("unet3d", "animatediff", "wan"),
        default="unet3d",
        help="unet3d (a ZeroScope-layout folder), animatediff (a saved AnimateDiffPipeline folder) or wan (a saved "
        "WanPipeline folder: Wan 2.1, or 2.2 A14B with --two-experts)",
    )
    tiny.add_argument(
        "--image-to-video",
        action="store_true",
        help="with --architecture wan: Wan 2.2 TI2V's layout (expand_timesteps: the first latent frame given, clean), "
        "so generate --image works",
    )
    tiny.add_argument(
        "--two-experts",
        action="store_true",
        help="with --architecture wan: Wan 2.2 A14B's layout, a second transformer (transformer_2/) for noise "
        "levels below boundary_ratio 0.875",
    )
    tiny.add_argument(
        "--motion-adapter",
        type=Path,
        default=None,
        help="with --architecture animatediff: write a Stable Diffusion folder at OUTPUT and its MotionAdapter "
        "here instead (the other form AnimateDiff is kept in)",
    )


def _add_export_command(commands: argparse._SubParsersAction) -> None:
    """`motiontune export`: adapters in other tools' formats."""
    export = commands.add_parser(
        "export",
        help="write an adapter in a format other tools load (diffusers or ComfyUI LoRA file, AnimateDiff "
        "MotionAdapter)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    export.add_argument("adapter", type=Path, help="motiontune adapter file (adapter.safetensors)")
    export.add_argument(
        "--format",
        required=True,
        choices=tuple(EXPORT_FORMATS),
        help="; ".join(f"{name}: {text}" for name, text in EXPORT_FORMATS.items()),
    )
    export.add_argument(
        "--output",
        type=Path,
        required=True,
        help="file (the LoRA formats, .safetensors; a two-expert Wan 2.2 LoRA writes NAME-high_noise.safetensors and "
        "NAME-low_noise.safetensors beside it) or folder (motion-adapter)",
    )
    _add_model(export)
    export.add_argument("--overwrite", action="store_true", help="replace an existing export")


def _add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    """`motiontune evaluate`: the papers' metrics on any videos."""
    evaluate = commands.add_parser(
        "evaluate",
        help="score videos with the papers' metrics (CLIP-T, temporal consistency, R-CLIP/R-DINO, motion "
        "fidelity, appearance leakage, camera error, dynamic degree) from local CLIP/DINO folders",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    evaluate.add_argument("videos", type=Path, nargs="+", help="videos, GIFs or folders of frames to score")
    evaluate.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="the reference video the motion was learned from: motion fidelity (DMT's track score) and appearance "
        "leakage (how much each frame looks like the reference's)",
    )
    prompts = evaluate.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", default=None, help="the prompt of every video (CLIP-T)")
    prompts.add_argument("--prompts", type=Path, default=None, help="file with one prompt per line, one per video")
    evaluate.add_argument("--subject-images", type=Path, default=None, help="folder of subject images (R-CLIP, R-DINO)")
    evaluate.add_argument(
        "--boxes",
        type=Path,
        default=None,
        help="control script with the subjects' boxes (as `generate --script` reads): subject regions for R-CLIP "
        "/ R-DINO are cropped at its first subject's boxes, camera motion is read outside every box",
    )
    evaluate.add_argument(
        "--camera-speed",
        default=None,
        help="requested camera travel DX,DY in fractions of the frame over the video (positive x pans right): "
        "camera error is the distance of the measured travel from it",
    )
    evaluate.add_argument(
        "--clip", type=Path, default=None, help="local CLIP model folder (e.g. openai/clip-vit-base-patch32 saved)"
    )
    evaluate.add_argument("--dino", type=Path, default=None, help="local DINO v2 model folder (e.g. dinov2-small)")
    evaluate.add_argument(
        "--tracker",
        default=None,
        help="point tracker as module:factory (factory() returns a callable video -> motiontune.metrics.tracks."
        "Tracks, e.g. around a local CoTracker checkpoint); default OpenCV corners + Lucas-Kanade",
    )
    evaluate.add_argument(
        "--shapeworld",
        action="store_true",
        help="also read each video as the ShapeWorld lab does (its object's colour, shape, background and motion, "
        "checked against what the prompt names): for videos of the ShapeWorld models",
    )
    evaluate.add_argument("--output", type=Path, required=True, help="folder for metrics.json, report.md and plots")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing report")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_app_command(commands: argparse._SubParsersAction) -> None:
    """`motiontune app`: the browser app."""
    app = commands.add_parser(
        "app",
        help="teach, steer and compare motions in a browser (Gradio; pip install 'motiontune[app]')",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    app.add_argument(
        "--model",
        type=_model_argument,
        default=None,
        help=f"model folder (default: the shipped ShapeWorld model); {SHIPPED_MODEL_HELP}",
    )
    app.add_argument(
        "--workspace",
        type=Path,
        default=Path("motiontune-workspace"),
        help="folder for uploads, adapters, videos and jobs; an app started again on it finds it as it was",
    )
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    app.add_argument("--port", type=_positive_int, default=7860, help="port to listen on")
    app.add_argument("--clip", type=Path, default=None, help="local CLIP folder for the Compare tab's scores")
    app.add_argument("--dino", type=Path, default=None, help="local DINO v2 folder for the Compare tab's scores")


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per `_add_*_command`."""
    parser = OneLineParser(
        prog="motiontune",
        description="Teach text-to-video diffusion models new motions and subjects, and steer them at inference.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_command(commands)
    _add_generate_command(commands)
    _add_demo_command(commands)
    _add_world_command(commands)
    _add_bench_command(commands)
    _add_tiny_model_command(commands)
    _add_export_command(commands)
    _add_evaluate_command(commands)
    _add_app_command(commands)
    return parser


def _apply_yaml(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`, with defaults taken from the subcommand's `--config` YAML when given."""
    args = parser.parse_args(argv)
    args.sources = {dest: "command line" for dest, value in vars(args).items() if value is not None}
    config_path = getattr(args, "config", None)
    if config_path is None:
        return args
    check_regular_file(config_path, "config file")
    try:
        values = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_path}: invalid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{config_path}: config must be a mapping of option names to values")
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    dests = {action.dest for action in subparser._actions}
    defaults = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest not in dests and f"method_{dest}" in dests:
            dest = f"method_{dest}"
        if dest not in dests or dest in ("config", "help"):
            raise ConfigError(f"{config_path}: unknown option '{key}' for 'motiontune {args.command}'")
        action = next(a for a in subparser._actions if a.dest == dest)
        defaults[dest] = _coerce(action, value, f"{config_path}: option '{key}'")
    subparser.set_defaults(**defaults)
    sources = args.sources
    args = parser.parse_args(argv)
    args.sources = {**{dest: "config file" for dest in defaults}, **sources}
    return args


def _coerce(action: argparse.Action, value, where: str):
    """Check and convert one YAML value the way argparse would convert the same option."""
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(action, argparse._AppendAction):
        values = value if isinstance(value, list) else [value]
        return [_coerce_one(action, item, where) for item in values]
    return _coerce_one(action, value, where)


def _coerce_one(action: argparse.Action, value, where: str):
    if isinstance(value, (dict, list, bool)) or value is None:
        raise ConfigError(f"{where} must be a single value, got {value!r}")
    if action.type is None:
        return str(value)
    if action.type in (int, _positive_int, _seed) and isinstance(value, float):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    try:
        return action.type(str(value))
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise ConfigError(f"{where}: {error}") from None


def _require(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) is None:
            raise ConfigError(f"missing --{name.replace('_', '-')} (give it on the command line or in --config)")


def _method_options(args: argparse.Namespace, method_name: str) -> dict:
    from ..methods import method_class

    cls = method_class(method_name)
    own = {f.name for f in dataclasses.fields(cls.Config)}
    options = {}
    for name in _method_fields():
        value = getattr(args, f"method_{name}", None)
        if value is None:
            continue
        if name not in own:
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to method '{method_name}'")
        options[name] = value
    return options


def _sources(args: argparse.Namespace) -> dict[str, str]:
    """Where each option value came from ("command line" or "config file"), keyed by `api.train`'s names."""
    renamed = {"lr": "learning_rate"}
    given = vars(args).get("sources", {})
    return {renamed.get(dest, dest.removeprefix("method_")): source for dest, source in given.items()}


def run_train(args: argparse.Namespace) -> int:
    from . import api

    _require(args, "data", "output")
    result = api.train(
        method=args.method,
        data=args.data,
        output=args.output,
        model=args.model,
        motion_adapter=args.motion_adapter,
        weights_dtype=args.weights_dtype,
        token=args.token,
        reg_data=args.reg_data,
        steps=args.steps,
        frames=args.frames,
        height=args.height,
        width=args.width,
        sampling=args.sampling,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        max_grad_norm=args.max_grad_norm,
        ema_decay=args.ema_decay,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        overwrite=args.overwrite,
        validate_every=args.validate_every,
        validation_prompts=args.validation_prompt or [],
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        fsdp=args.fsdp,
        save_precision=args.save_precision,
        cache_dir=args.cache_dir,
        device=args.device,
        progress=not args.quiet,
        method_options=_method_options(args, args.method),
        sources=_sources(args),
        allow_outside_data=args.allow_outside_data,
    )
    if is_main_process():  # one summary from a multi-process run
        print(result.summary())
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from ..control import parse_box_option, parse_camera_speed, parse_shift_window
    from . import api

    if args.script is None:
        _require(args, "prompt")
    boxes = None
    if args.box:
        boxes = [parse_box_option(text) for text in args.box]
        words = [path.words for path in boxes]
        if len(set(words)) != len(words):
            raise ConfigError(f"--box: subject words given twice ({', '.join(words)})")
    outputs = api.generate(
        prompt=args.prompt,
        output=args.output,
        model=args.model,
        motion_adapter=args.motion_adapter,
        weights_dtype=args.weights_dtype,
        adapters=args.adapter or [],
        frames=args.frames,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        negative_prompt=args.negative_prompt,
        sampler=args.sampler,
        seed=args.seed,
        reference=args.reference,
        image=args.image,
        noise_prior=args.noise_prior,
        debias=args.debias,
        fps=args.fps,
        device=args.device,
        progress=not args.quiet,
        script=args.script,
        subject=args.subject,
        boxes=boxes,
        camera_speed=parse_camera_speed(args.camera_speed) if args.camera_speed is not None else None,
        box_strength=args.box_strength,
        amplify_until=args.amplify_until,
        keep_other_words=args.keep_other_words,
        shift_window=parse_shift_window(args.shift_window) if args.shift_window is not None else None,
        attention_maps=args.attention_maps,
        overwrite=args.overwrite,
        allow_other_model=args.allow_other_model,
    )
    for kind, path in outputs.items():
        print(f"{kind}: {path}")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    model = Path(args.model) if args.model is not None else None
    if model is not None and not (model / "model_index.json").is_file():
        raise InputError(f"--model {model}: not a model folder (no model_index.json)")
    demo(
        args.output,
        steps=args.steps,
        device=args.device,
        progress=not args.quiet,
        overwrite=args.overwrite,
        model=model,
    )
    return 0


def run_world(args: argparse.Namespace) -> int:
    from ..lab import shapeworld

    if args.world_command == "render":
        names = {
            "--motion": ([args.motion], shapeworld.KNOWN_MOTIONS + shapeworld.NOVEL_MOTIONS),
            "--shapes": (args.shapes.split(","), shapeworld.SHAPES + shapeworld.NOVEL_SHAPES),
            "--backgrounds": (args.backgrounds.split(","), tuple(shapeworld.BACKGROUNDS)),
        }
        for option, (values, known) in names.items():
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ConfigError(f"{option}: unknown value(s) {', '.join(unknown)} (known: {', '.join(known)})")
        clips = shapeworld.sample_clips(
            args.count,
            args.seed,
            motions=(args.motion,),
            shapes=tuple(args.shapes.split(",")),
            backgrounds=tuple(args.backgrounds.split(",")),
        )
        print(shapeworld.write_dataset(args.output, clips, args.frames, args.size, args.token))
        return 0
    from ..lab.shapeworld import KNOWN_MOTIONS, NOVEL_MOTIONS
    from ..lab.worldmodel import BaseModelConfig, build_base_model, evaluate_autoencoder, evaluate_base_model

    if args.world_command == "evaluate":
        from .api import default_model_dir

        model = Path(args.model) if args.model else default_model_dir()
        if args.novel_motions and not args.autoencoder:
            raise ConfigError("--novel-motions scores the autoencoder: give it with --autoencoder")
        if args.autoencoder:
            motions = NOVEL_MOTIONS if args.novel_motions else KNOWN_MOTIONS
            summary = evaluate_autoencoder(
                model, args.prompts, progress=not args.quiet, sheet=args.sheet, motions=motions
            )
            print(json.dumps(summary, indent=2))
            return 0
        summary = evaluate_base_model(
            model,
            args.prompts,
            args.seeds,
            args.steps,
            args.guidance_scale,
            progress=not args.quiet,
            sheet=args.sheet,
            adapters=args.adapter,
            allow_other_model=args.allow_other_model,
        )
        print(json.dumps(summary, indent=2))
        return 0
    config = BaseModelConfig.from_yaml(args.recipe) if args.recipe else BaseModelConfig()
    summary = build_base_model(config, args.output, progress=not args.quiet, resume=args.resume, init=args.init)
    print(f"model: {args.output / 'model'}")
    if "initialised_from" in summary:
        print(f"initialised from: {summary['initialised_from']['path']}")
    print({k: v for k, v in summary.items() if k not in ("config", "initialised_from")})
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """`bench curves`: learning curves. `bench shapeworld|motionbooth`: one row in this process (`--row`, as
    each row's process is started), or every chosen row in a process of its own."""
    if args.bench_command == "curves":
        from ..lab.tasks import check_task_motion
        from .bench_curves import bench_curves, markdown_table

        check_task_motion(args.motion)
        rows = args.rows.split(";") if args.rows else None
        sizes = {"steps": args.steps, "every": args.every, "prompts": args.prompts, "seeds": args.seeds}
        points = bench_curves(
            args.output,
            args.model,
            rows,
            **sizes,
            sampling=args.sampling_steps,
            motion=args.motion,
            report=args.report,
            progress=not args.quiet,
        )
        print(markdown_table(points))
        return 0
    if args.bench_command == "motionbooth":
        from .bench_motionbooth import bench_motionbooth as bench
        from .bench_motionbooth import markdown_tables as tables
        from .bench_motionbooth import run_row

        extra = {"learning_rate": args.lr}
        if args.row is not None:
            extra["training_seed"] = args.training_seed
        else:
            extra["training_seeds"] = args.training_seeds
    else:
        from .bench import bench_shapeworld as bench
        from .bench import markdown_table as tables
        from .bench import run_row

        if args.row is not None:
            extra = {"motion": args.motion, "training_seed": args.training_seed}
        else:
            extra = {"motions": tuple(args.motions.split(",")), "training_seeds": args.training_seeds}
    sizes = (args.steps, args.prompts, args.seeds, args.sampling_steps)
    if args.row is not None:
        print(json.dumps(run_row(args.row, args.output, args.model, *sizes, **extra)))
        return 0
    rows = args.rows.split(";") if args.rows else None
    results = bench(args.output, args.model, rows, *sizes, **extra, report=args.report, progress=not args.quiet)
    print(tables(results))
    return 0


def run_tiny_model(args: argparse.Namespace) -> int:
    from ..lab.tiny import build_tiny_animatediff, build_tiny_model, build_tiny_wan

    if args.motion_adapter is not None and args.architecture != "animatediff":
        raise ConfigError("--motion-adapter needs --architecture animatediff")
    if (args.two_experts or args.image_to_video) and args.architecture != "wan":
        raise ConfigError("--two-experts and --image-to-video need --architecture wan")
    if args.architecture == "animatediff":
        print(build_tiny_animatediff(args.output, motion_adapter_dir=args.motion_adapter, seed=args.seed))
    elif args.architecture == "wan":
        print(
            build_tiny_wan(
                args.output, two_experts=args.two_experts, image_to_video=args.image_to_video, seed=args.seed
            )
        )
    else:
        print(build_tiny_model(args.output, seed=args.seed))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..io.export import LORA_LAYOUTS, export_lora, export_motion_adapter
    from .api import open_backbone

    check_regular_file(args.adapter, "adapter")
    if args.format in LORA_LAYOUTS:
        for path in export_lora(args.adapter, args.output, args.overwrite, args.format):
            print(path)
    else:
        model = functools.partial(open_backbone, args.model, args.device, args.motion_adapter, args.weights_dtype)
        print(export_motion_adapter(model, args.adapter, args.output, args.overwrite))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from ..control import parse_camera_speed
    from .api import evaluate
    from .evaluate import markdown_report, prompts_from_file

    report = evaluate(
        args.videos,
        args.output,
        reference=args.reference,
        prompt=args.prompt,
        prompts=prompts_from_file(args.prompts, len(args.videos)) if args.prompts is not None else None,
        subject_images=args.subject_images,
        boxes=args.boxes,
        camera_speed=parse_camera_speed(args.camera_speed) if args.camera_speed is not None else None,
        clip=args.clip,
        dino=args.dino,
        tracker=args.tracker,
        shapeworld=args.shapeworld,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(markdown_report(report, list(report["mean"])), end="")
    print(f"report: {args.output / 'report.md'}")
    return 0


def run_app(args: argparse.Namespace) -> int:
    from .api import default_model_dir

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("motiontune app needs Gradio: pip install 'motiontune[app]'") from None
    from .webapp import serve

    model = args.model if args.model is not None else default_model_dir()
    if not (Path(model) / "model_index.json").is_file():
        raise InputError(f"--model {model}: not a model folder (no model_index.json)")
    check_writable_folder(args.workspace, "--workspace")
    serve(model, args.workspace, args.host, args.port, args.clip, args.dino)
    return 0


class WarningLines(logging.Handler):
    """motiontune's warnings as `motiontune: warning: ...` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(f"motiontune: warning: {record.getMessage()}", file=sys.stderr)


def one_line_warnings() -> None:
    """motiontune's warnings as one `motiontune: warning:` line each (also in a worker process of the demo)."""
    if not any(isinstance(handler, WarningLines) for handler in LOGGER.handlers):
        LOGGER.addHandler(WarningLines())
        LOGGER.propagate = False


def quiet_libraries() -> None:
    """Keep diffusers/transformers load chatter out of the terminal; our own progress bars remain."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


COMMANDS = {
    "train": run_train,
    "generate": run_generate,
    "demo": run_demo,
    "world": run_world,
    "bench": run_bench,
    "tiny-model": run_tiny_model,
    "export": run_export,
    "evaluate": run_evaluate,
    "app": run_app,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    quiet_libraries()
    one_line_warnings()
    parser = build_parser()
    try:
        args = _apply_yaml(parser, argv)
        return COMMANDS[args.command](args)
    except MotiontuneError as error:
        print(f"motiontune: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("motiontune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
