"""Defaults that fit the model: every training and sampling setting resolved with where it came from.

A value comes from the first of: the command line (or a Python argument), the `--config` file, the model
folder's `motiontune.json`, the method's own default (the paper's or its official code's setting, which
is what a ZeroScope-class folder without that file gets). A model folder declares its native clip size
and its recommendations like this (every key optional):

    {"native": {"frames": 8, "height": 32, "width": 32},
     "generation": {"steps": 25, "guidance_scale": 7.5, "debias": "none", "shift_window": [400, 100]},
     "training": {"newmove": {"steps": 100, "learning_rate": 1e-3, "batch_size": 8,
                              "options": {"spatial": "kv"}}}}

`training.<method>` takes the keys of `TRAINING_KEYS` plus `options` (the method's own hyper-parameters,
checked by the method's config like command-line options).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backbones import family_defaults
from .errors import ConfigError
from .methods.motion_inversion import DEBIAS_MODES

MODEL_FILE = "motiontune.json"
NATIVE_KEYS = ("frames", "height", "width")
TRAINING_KEYS = (
    "steps",
    "learning_rate",
    "batch_size",
    "gradient_accumulation",
    "ema_decay",
    "frames",
    "height",
    "width",
)
GENERATION_KEYS = ("steps", "guidance_scale", "debias", "shift_window")
INTEGER_KEYS = {"steps", "batch_size", "gradient_accumulation", "frames", "height", "width"}
#: what a model folder without native size and a method without its own setting fall back to (ModelScope's size)
FALLBACK = {"frames": 16, "height": 256, "width": 256, "steps": 400, "batch_size": 1, "gradient_accumulation": 1}
#: MotionBooth's official camera-shift window (800 >= t > 600) among them
GENERATION_FALLBACK = {"steps": 50, "guidance_scale": 9.0, "debias": "object", "shift_window": (800, 600)}


@dataclass(frozen=True)
class Setting:
    """One resolved value and where it came from: "command line", "config file", "argument", "model (FILE)",
    "method default" or "fallback"."""

    value: Any
    source: str


def _check_number(where: str, key: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: '{key}' must be a number, got {value!r}")
    if key in INTEGER_KEYS:
        if value != int(value) or value < 1:
            raise ConfigError(f"{where}: '{key}' must be a positive integer, got {value!r}")
        return int(value)
    if key == "ema_decay":
        if not 0 <= value < 1:
            raise ConfigError(f"{where}: 'ema_decay' must be in [0, 1), got {value!r}")
    elif not value > 0:
        raise ConfigError(f"{where}: '{key}' must be positive, got {value!r}")
    return float(value)


def _check_generation(where: str, key: str, value: Any) -> Any:
    if key == "debias":
        if value not in DEBIAS_MODES:  # Motion Inversion's own list
            raise ConfigError(f"{where}: 'debias' must be one of {', '.join(DEBIAS_MODES)}, got {value!r}")
        return value
    if key == "shift_window":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or not 1000 >= value[0] > value[1] >= 0
        ):
            raise ConfigError(f"{where}: 'shift_window' must be [START, END] timesteps with START > END, got {value!r}")
        return tuple(value)
    return _check_number(where, key, value)


def _mapping(where: str, value: Any, allowed: tuple[str, ...] | None) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(value).__name__}")
    if allowed is not None:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(allowed)})")
    return value


@dataclass(frozen=True)
class ModelDefaults:
    """What a model folder's `motiontune.json` declares (all empty for a folder without one)."""

    path: Path | None
    native: dict[str, int]
    generation: dict[str, float]
    training: dict[str, dict]
    #: what the folder's family gets when the file says nothing (`Backbone.family_defaults`), and its label
    family: dict[str, dict] = field(default_factory=dict)
    family_label: str = ""

    @classmethod
    def read(cls, model_dir: Path) -> ModelDefaults:
        """Read and check `model_dir/motiontune.json`; a malformed file is one ConfigError naming it. The folder's
        family defaults (e.g. WanPipeline's 81 frames of 480 x 832) come along for what the file does not state."""
        label, family = family_defaults(model_dir)
        defaults = cls._read_file(Path(model_dir) / MODEL_FILE)
        return dataclasses.replace(defaults, family=family, family_label=label)

    @classmethod
    def _read_file(cls, path: Path) -> ModelDefaults:
        if not path.is_file():
            return cls(None, {}, {}, {})
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: not a readable JSON file ({error})") from None
        data = _mapping(str(path), data, ("native", "generation", "training"))
        native = _mapping(f"{path}: native", data.get("native", {}), NATIVE_KEYS)
        native = {key: _check_number(f"{path}: native", key, value) for key, value in native.items()}
        generation = _mapping(f"{path}: generation", data.get("generation", {}), GENERATION_KEYS)
        generation = {key: _check_generation(f"{path}: generation", key, v) for key, v in generation.items()}
        training = {}
        for method, values in _mapping(f"{path}: training", data.get("training", {}), None).items():
            where = f"{path}: training.{method}"
            values = dict(_mapping(where, values, (*TRAINING_KEYS, "options")))
            options = _mapping(f"{where}.options", values.pop("options", {}), None)
            checked = {key: _check_number(where, key, value) for key, value in values.items()}
            training[method] = {**checked, "options": dict(options)}
        return cls(path, native, generation, training)

    @property
    def label(self) -> str:
        return f"model ({self.path})" if self.path else "model"


def resolve(
    keys: tuple[str, ...] | list[str],
    given: dict[str, Setting],
    layers: list[tuple[str, dict]],
) -> dict[str, Setting]:
    """For each key: the given Setting when there is one, else the first layer (source, values) that has it."""
    resolved = {}
    for key in keys:
        if key in given and given[key].value is not None:
            resolved[key] = given[key]
            continue
        for source, values in layers:
            if values.get(key) is not None:
                resolved[key] = Setting(values[key], source)
                break
    return resolved


def training_settings(
    method_name: str,
    method_defaults: dict[str, Any],
    model: ModelDefaults,
    given: dict[str, Setting],
) -> dict[str, Setting]:
    """Steps, learning rate, batch size, accumulation, weight average, frames and size for training
    `method_name` on `model`, and `options` (a Setting per method option the user or the model gives)."""
    recommended = model.training.get(method_name, {})
    layers = [
        (model.label, {**model.native, **{k: v for k, v in recommended.items() if k != "options"}}),
        (model.family_label, model.family.get("native", {})),
        ("method default", method_defaults),
        ("fallback", FALLBACK),
    ]
    return resolve(TRAINING_KEYS, given, layers)


def option_settings(method_name: str, model: ModelDefaults, given: dict[str, Setting]) -> dict[str, Setting]:
    """The method options to pass: the given ones, then those the model recommends for `method_name`."""
    recommended = model.training.get(method_name, {}).get("options", {})
    options = {key: Setting(value, model.label) for key, value in recommended.items()}
    options.update({key: setting for key, setting in given.items() if setting.value is not None})
    return options


def generation_settings(model: ModelDefaults, given: dict[str, Setting]) -> dict[str, Setting]:
    """Sampling steps, guidance scale, Motion Inversion's debiasing mode and MotionBooth's camera-shift window
    for `model`."""
    layers = [
        (model.label, model.generation),
        (model.family_label, model.family.get("generation", {})),
        ("fallback", GENERATION_FALLBACK),
    ]
    return resolve(GENERATION_KEYS, given, layers)


def describe(settings: dict[str, Setting]) -> str:
    """One line per setting: `key value (source)`, for the training summary."""
    width = max((len(key) for key in settings), default=0)
    return "\n".join(f"  {key:<{width}} {setting.value!s:<10} ({setting.source})" for key, setting in settings.items())
