"""The small interface every method (and baseline) implements, and the pieces they share.

A method says which parameters train, what the loss of a batch is, how training timesteps are
drawn, which hooks it needs at inference, and what its adapter file holds. The training loop
(`motiontune.training`) and the sampling loop (`motiontune.sampling`) serve every method.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..diffusion import NoiseProcess
from ..errors import ConfigError, InputError
from ..sampling import StepHook
from ..sharding import as_placed


def uniform_timesteps(
    batch: int,
    generator: torch.Generator,
    num_train_timesteps: int = 1000,
    low: int = 0,
    high: int | None = None,
) -> torch.Tensor:
    """t ~ U{low, ..., high - 1} (the DDPM simple loss, Ho et al. 2020 Algorithm 1)."""
    high = num_train_timesteps if high is None else high
    return torch.randint(low, high, (batch,), generator=generator)


def coarse_noise_timesteps(
    batch: int, generator: torch.Generator, num_train_timesteps: int = 1000, alpha: float = 0.5, low: int = 0
) -> torch.Tensor:
    """NewMove's coarse-noise sampling (after ReVersion): p(t) ∝ f(t) = 1 - alpha cos(pi t / T), t >= `low`.

    With alpha = 0.5, noisy timesteps (t near T) are drawn 3x as often as clean ones (t near 0).
    """
    t = torch.arange(low, num_train_timesteps, dtype=torch.float64)
    weights = 1 - alpha * torch.cos(math.pi * t / num_train_timesteps)
    return low + torch.multinomial(weights, batch, replacement=True, generator=generator)


TIMESTEP_SAMPLINGS = ("coarse", "uniform")


def check_timestep_sampling(sampling: str) -> None:
    """A config's `timestep_sampling` is one of `TIMESTEP_SAMPLINGS`, else a ConfigError."""
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ConfigError(f"timestep_sampling must be coarse or uniform, got '{sampling}'")


def drawn_timesteps(
    batch: int,
    generator: torch.Generator,
    sampling: str,
    num_train_timesteps: int = 1000,
    alpha: float = 0.5,
    low: int = 0,
) -> torch.Tensor:
    """Training timesteps in [low, T) drawn `coarse` (NewMove's p(t) ∝ 1 - alpha cos(pi t / T)) or `uniform`
    (DDPM)."""
    if sampling == "coarse":
        return coarse_noise_timesteps(batch, generator, num_train_timesteps, alpha, low)
    return uniform_timesteps(batch, generator, num_train_timesteps, low)


def uniform_picks(examples: Sequence, size: int, generator: torch.Generator) -> list[int]:
    """Indices drawn uniformly from all examples (the literal union D^m ∪ D^r of NewMove Eq. 3)."""
    return torch.randint(len(examples), (size,), generator=generator).tolist()


def denoising_loss(
    backbone: Backbone, diffusion: NoiseProcess, batch: dict, timesteps: torch.Tensor, generator
) -> torch.Tensor:
    """The simple diffusion loss E ||eps - eps_theta(x_t, c, t)||^2 (element mean), Eq. 1 of NewMove, on the
    target of the noise process (eps, v or x0)."""
    noisy, _, target = diffusion.noised(batch["latents"], timesteps, generator)
    prediction = backbone.predict_noise(noisy, timesteps.to(noisy.device), batch["text"])
    return F.mse_loss(prediction.float(), target.float())


TOKEN_KEY = "text_encoder.token_embeddings"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: how a config field's annotation (a string under `from __future__ import annotations`) names each type:
#: the check of a value, and what the value must be
FIELD_TYPES = {
    "int": (_is_int, "an int"),
    "float": (lambda value: _is_int(value) or (isinstance(value, float) and math.isfinite(value)), "a finite number"),
    "bool": (lambda value: isinstance(value, bool), "true or false"),
    "str": (lambda value: isinstance(value, str), "a string"),
}


def check_field_type(field: dataclasses.Field, value: object) -> None:
    """A ConfigError unless `value` is of the type the config field is annotated with (`None` where it allows it)."""
    kinds = [kind.strip() for kind in str(field.type).split("|")]
    if value is None and "None" in kinds:
        return
    known = [FIELD_TYPES[kind] for kind in kinds if kind in FIELD_TYPES]
    if known and not any(accepts(value) for accepts, _ in known):
        expected = " or ".join([description for _, description in known] + (["unset"] if "None" in kinds else []))
        raise ConfigError(f"{field.name} must be {expected}, got {value!r}")


class TrainedToken:
    """The token's rows of the text encoder's input embedding, trained next to a method's own parameters
    (textual inversion, Gal et al. 2022: v* = argmin_v L(x, c(v)); every other row's gradient is zeroed).

    Its file key is `text_encoder.token_embeddings`: one row per token id of the token.
    """

    def __init__(self, backbone: Backbone, token: str):
        self.backbone = backbone
        self.token = token
        self._hooked = False

    @property
    def embedding(self) -> torch.nn.Module:
        return self.backbone.text_encoder.get_input_embeddings()

    def ids(self) -> list[int]:
        return self.backbone.token_ids(self.token)

    def parameter_group(self, learning_rate: float) -> dict:
        """The optimizer group of the embedding (no weight decay); the token's rows are made to train."""
        weight = self.embedding.weight
        weight.requires_grad_(True)
        if not self._hooked:
            rows = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
            rows[self.ids()] = 1
            weight.register_hook(lambda grad: grad * rows)
            self._hooked = True
        return {"params": [weight], "lr": learning_rate, "weight_decay": 0.0}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {TOKEN_KEY: self.embedding.weight[self.ids()].detach().clone()}

    def load(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Copy the file's token rows into the embedding; a file without them leaves it as it is."""
        if TOKEN_KEY not in tensors:
            return
        weight = self.embedding.weight
        ids = self.ids()
        if tensors[TOKEN_KEY].shape != (len(ids), weight.shape[1]):
            raise ConfigError(
                f"{source}: tensor '{TOKEN_KEY}' has shape {tuple(tensors[TOKEN_KEY].shape)}, the token "
                f"'{self.token}' needs {(len(ids), weight.shape[1])} (trained with another token or text encoder?)"
            )
        with torch.no_grad():
            weight[ids] = tensors[TOKEN_KEY].to(weight.dtype)


class Method:
    """Base class: subclasses set `name`, `summary`, `Config` (a dataclass of hyper-parameters) and override hooks."""

    name: ClassVar[str]
    #: one line for `motiontune train --help`: the paper and what the method trains
    summary: ClassVar[str]
    #: True for methods other commands use (`world train-base`), not offered by `motiontune train`
    internal: ClassVar[bool] = False
    Config: ClassVar[type]
    #: training settings of the paper or its official code on ZeroScope-class models (`learning_rate` and any
    #: of `settings.TRAINING_KEYS`): used where neither the user nor the model folder's `motiontune.json` gives one
    paper_settings: ClassVar[dict[str, float | int]] = {"learning_rate": 1e-5}
    #: where `paper_settings` come from, for `--help` and docs/defaults.md
    paper_source: ClassVar[str] = ""
    uses_token: ClassVar[bool] = True
    #: "videos": captioned clips (`data.find_video_items`); "subject images": images with masks
    #: (`subject_data`), all captioned with the method's `subject_caption()`.
    training_data: ClassVar[str] = "videos"

    def __init__(self, backbone: Backbone, config: Any = None, token: str | None = None):
        self.backbone = backbone
        self.config = config if config is not None else self.Config()
        self.token = token
        self.source = f"{self.name} adapter"
        self.diffusion = backbone.noise_process
        missing = sorted(self.requirements() - backbone.capabilities())
        if missing:
            raise ConfigError(
                f"method '{self.name}' needs {', '.join(missing)}, which backbone '{backbone.name}' does not provide"
            )
        if self.needs_token and not token:
            raise ConfigError(f"method '{self.name}' needs a token (e.g. --token sks)")
        self.trained_token = TrainedToken(backbone, token) if self.trains_token else None

    def requirements(self) -> set[str]:
        """What this method with its config asks of a backbone, in `Backbone.capabilities` words; checked when
        the method is built, so a backbone without it fails with one line naming the method and the need."""
        return set()

    def sharding_obstacle(self) -> str | None:
        """Why this method with its config cannot train on a sharded denoiser (`--fsdp`), or None when it can."""
        return None

    @property
    def trains_token(self) -> bool:
        """Whether the token's text embedding trains too: the config's `train_token` option, where it has one."""
        return bool(getattr(self.config, "train_token", False))

    @property
    def needs_token(self) -> bool:
        """Prompts and target captions must hold the token: the method binds to it, or trains its embedding."""
        return self.config_needs_token(self.config)

    @classmethod
    def config_needs_token(cls, config: Any) -> bool:
        """Whether a method of this config needs a token: it binds to one, or trains its embedding."""
        return cls.uses_token or bool(getattr(config, "train_token", False))

    @classmethod
    def config_from_dict(cls, values: dict) -> Any:
        """Build the method's config, rejecting unknown keys by name and values of another type than the field's."""
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown {cls.name} option(s): {', '.join(unknown)} (known: {known})")
        for name, value in values.items():
            check_field_type(fields[name], value)
        return cls.Config(**values)

    # --- training -----------------------------------------------------------------------------
    def bind_training_shape(self, latent_shape: torch.Size) -> None:
        """Called before `prepare_for_training` with one training example's latent shape `(C, F, h, w)`."""

    def prepare_for_training(self) -> None:
        """Mark what trains (and inject adapters or embeddings)."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """Optimizer parameter groups (the trained token's embedding in a group of its own); override for
        per-group settings."""
        groups = [{"params": self.trainable_parameters(), "lr": learning_rate}]
        if self.trained_token is not None:
            groups.append(self.trained_token.parameter_group(learning_rate))
        return groups

    def extra_modules(self) -> torch.nn.Module | None:
        """Trainable modules that live outside the backbone (embeddings), for the training wrapper."""
        return self.trained_token.embedding if self.trained_token is not None else None

    def conditioned(self, batch: dict) -> dict:
        """The batch with its captions encoded anew when the token trains (so the gradient reaches the token's
        embedding); else as it is, with the text encoded once before training."""
        if self.trained_token is None:
            return batch
        return {**batch, "text": self.backbone.encode_prompt(batch["captions"])}

    def pick_examples(self, examples: Sequence, size: int, generator: torch.Generator, micro_step: int) -> list[int]:
        """Indices of the examples in micro-batch `micro_step`: its index over the whole run and all processes
        (`(step * accumulation + micro) * processes + process`, as `training.micro_batch_seed` counts)."""
        return uniform_picks(examples, size, generator)

    def sample_timesteps(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        return uniform_timesteps(batch, generator, self.diffusion.num_timesteps)

    def loss(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        timesteps = self.sample_timesteps(batch["latents"].shape[0], generator)
        return denoising_loss(self.backbone, self.diffusion, self.conditioned(batch), timesteps, generator)

    def check_caption(self, caption: str, source: str, where: str) -> None:
        """Reject training captions that cannot teach the method (a target without the token, or with the token
        past what the text encoder reads)."""
        if self.needs_token and source == "target":
            if self.token not in caption.split():
                raise InputError(f"{where}: caption {_short(caption)} does not contain the token '{self.token}'")
            self._check_token_reached(caption, f"{where}: caption")

    def _check_token_reached(self, text: str, what: str) -> None:
        """The token must fall inside the text encoder's length, or the model never sees it."""
        try:
            self.backbone.phrase_positions(text, self.token)
        except ValueError:
            raise InputError(
                f"{what} {_short(text)} puts the token '{self.token}' past the text encoder's length; "
                "move it to the front or shorten the text"
            ) from None

    # --- inference ----------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> None:
        """Reject prompts that cannot trigger what the adapter learned (no token, or the token cut off)."""
        if self.needs_token:
            if self.token not in prompt.split():
                raise InputError(
                    f"{self.source}: prompt {_short(prompt)} does not contain the adapter's token '{self.token}'"
                )
            self._check_token_reached(prompt, f"{self.source}: prompt")

    def prepare_inference(self, settings: Any) -> None:
        """Apply generation-time options (a `GenerationConfig`) before sampling, e.g. a debiasing mode."""

    def inference_hooks(self) -> list[StepHook]:
        return []

    # --- adapter ------------------------------------------------------------------------------
    def adapter_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_adapter_tensors(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        raise NotImplementedError

    def adapter_tensor_kinds(self) -> dict[str, bool]:
        """Every tensor key an adapter of this method and config may hold, mapped to whether its tensor is floating
        point (else integer); a file with any other key is refused. Default: the keys of `adapter_tensors()`."""
        return {key: tensor.is_floating_point() for key, tensor in self.adapter_tensors().items()}

    def adapter_metadata(self) -> dict:
        return {
            "method": self.name,
            "backbone": self.backbone.name,
            "base_model": {"fingerprint": self.backbone.fingerprint()},
            "token": self.token,
            "hyperparameters": dataclasses.asdict(self.config),
        }


def _short(text: str, limit: int = 80) -> str:
    """`text` quoted for an error line, cut to `limit` characters."""
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def copy_into_parameters(module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, source: str) -> None:
    """Copy `prefix.<name>` tensors into `module`'s parameters, naming the file on any mismatch."""
    parameters = {prefix + name: parameter for name, parameter in module.named_parameters()}
    given = [key for key in tensors if key.startswith(prefix)]
    unknown = [key for key in given if key not in parameters]
    if unknown:
        raise ConfigError(f"{source}: adapter tensor '{unknown[0]}' has no matching parameter in this model")
    copy_tensors({key: parameters[key] for key in given}, tensors, source)


def check_tensor_shapes(shapes: dict[str, Sequence[int]], tensors: dict[str, torch.Tensor], source: str) -> None:
    """Every key of `shapes` is in `tensors` with that shape, else a one-line ConfigError naming the file."""
    for key, shape in shapes.items():
        if key not in tensors:
            raise ConfigError(f"{source}: missing adapter tensor '{key}'")
        if tuple(tensors[key].shape) != tuple(shape):
            raise ConfigError(
                f"{source}: adapter tensor '{key}' has shape {tuple(tensors[key].shape)}, "
                f"model expects {tuple(shape)} (trained for another model size?)"
            )


def copy_tensors(parameters: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy `tensors[key]` into `parameters[key]` for every key of `parameters`; a missing tensor or another
    shape is a one-line ConfigError naming the file (checked for all before any is copied)."""
    check_tensor_shapes({key: parameter.shape for key, parameter in parameters.items()}, tensors, source)
    with torch.no_grad():
        for key, parameter in parameters.items():
            parameter.copy_(as_placed(tensors[key].to(parameter.dtype), parameter))
