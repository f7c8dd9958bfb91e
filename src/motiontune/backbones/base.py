"""What every backbone declares, and the loading of a diffusers model folder into components."""

from __future__ import annotations

import abc
import contextlib
import hashlib
import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import huggingface_hub
import torch
from diffusers import DDPMScheduler
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

from ..diffusion import DiscreteDiffusion, NoiseProcess
from ..errors import ConfigError, InputError

SiteKind = Literal["spatial_self", "cross", "temporal"]
FRAME_POSITIONS_FILE = "frame_positions.safetensors"
#: values of each parameter that go into a model's fingerprint: this many from the start and from the end
FINGERPRINT_VALUES = 8
#: config entries that describe where or how a model was loaded, not the model
UNFINGERPRINTED_CONFIG = {"dtype", "torch_dtype", "transformers_version"}


def _config_json(config: dict) -> str:
    """A model config as JSON with sorted keys, without private entries and load details."""
    kept = {key: value for key, value in config.items() if not key.startswith("_")}
    kept = {key: value for key, value in kept.items() if key not in UNFINGERPRINTED_CONFIG}
    return json.dumps(kept, sort_keys=True, default=str)


@dataclass(frozen=True)
class AttentionSite:
    """One attention module of a backbone and what its processor sees.

    `layout` names the token layout of `hidden_states` at this site:
    `"frames"` = `(B*F, h*w, C)` (spatial; batch row `b*F + f`, token `y*w + x`),
    `"pixels"` = `(B*h*w, F, C)` (temporal; batch row `b*h*w + y*w + x`, token = frame),
    `"video"` = `(B, F*h*w, C)` (a diffusion transformer's tokens; token `f*h*w + y*w + x`).
    `level` is how deep the site sits: on a UNet the resolution level (its grid is the latent grid halved `level`
    times), on a transformer the block's distance from the nearer end (`Backbone.grid_at_level` gives the grid).
    Methods never read this layout themselves: the attention controller records maps in one canonical view per
    layout (`AttentionController.canonical`).
    """

    name: str
    kind: SiteKind
    layout: Literal["frames", "pixels", "video"]
    level: int
    block: str


@dataclass
class ModelComponents:
    """The five parts of a text-to-video model folder. `denoiser` is the folder's `unet/` or `transformer/`."""

    denoiser: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    path: Path
    #: the motion adapter folder merged into `denoiser`, when the folder is an image model plus one
    motion_adapter: Path | None = None
    #: a second expert for low noise levels (Wan 2.2 A14B's `transformer_2`) and the noise level (t / T) below
    #: which it takes over from `denoiser` (the folder's `boundary_ratio`)
    denoiser_2: torch.nn.Module | None = None
    boundary_ratio: float | None = None
    #: the folder's denoiser was trained to start from an image: per-token timesteps with the first latent frame
    #: clean (Wan 2.2 TI2V, the folder's `expand_timesteps`)
    expand_timesteps: bool = False


COMPONENTS = ("denoiser", "vae", "text_encoder", "tokenizer", "scheduler")
#: the subfolders a denoiser may live in (UNets in `unet/`, diffusion transformers in `transformer/`)
DENOISER_FOLDERS = ("unet", "transformer")
SECOND_EXPERT = "transformer_2"
AUTO_CLASSES = {
    "denoiser": ("diffusers", "AutoModel"),
    "vae": ("diffusers", "AutoModel"),
    "text_encoder": ("transformers", "AutoModel"),
    "tokenizer": ("transformers", "AutoTokenizer"),
    "scheduler": ("diffusers", "DDIMScheduler"),
}


HUB_PREFIX = "hf:"


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """A local folder as is. A name that is not a local folder is never looked up online unless asked:
    `hf:org/name` downloads from the hub (unless HF_HUB_OFFLINE); a bare `org/name` is taken from the local
    hub cache only, so a mistyped local path is reported as missing."""
    text = str(model)
    hub_id = text.removeprefix(HUB_PREFIX) if text.startswith(HUB_PREFIX) else None
    path = Path(text).expanduser()
    if hub_id is None and path.exists():
        if not path.is_dir():
            raise InputError(f"{path}: model must be a diffusers model folder, got a file")
        return path
    name = hub_id if hub_id is not None else text
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        if hub_id is not None:
            raise InputError(f"{model}: not a hub model id (expected hf:org/name)")
        raise InputError(f"{path}: model folder does not exist")

    offline = hub_id is None or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return Path(huggingface_hub.snapshot_download(name, local_files_only=offline))
    except Exception as error:
        if hub_id is None:
            raise InputError(
                f"{path}: model folder does not exist (nor is '{name}' in the local hub cache; to download it "
                f"from the hub pass {HUB_PREFIX}{name})"
            ) from None
        raise InputError(f"{model}: not available from the hub ({' '.join(str(error).split())[:200]})") from None


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (its type name when the message is empty)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_part(path: Path, index: dict, folder_name: str, kind: str, dtype: torch.dtype):
    """One component from its subfolder, with the class `model_index.json` names (the auto class as fallback)."""
    folder = path / folder_name
    library, class_name = index.get(folder_name) or AUTO_CLASSES[kind]
    cls = getattr(importlib.import_module(library), class_name, None) if library else None
    if cls is None:
        library, class_name = AUTO_CLASSES[kind]
        cls = getattr(importlib.import_module(library), class_name)
    try:
        if kind in ("tokenizer", "scheduler"):
            return cls.from_pretrained(folder)
        return cls.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as error:
        raise InputError(f"{folder}: cannot load {folder_name} ({first_line(error)})") from None


def load_components(model: str | os.PathLike, dtype: torch.dtype = torch.float32) -> ModelComponents:
    """Load the denoiser (`unet/` or `transformer/`), vae, text encoder, tokenizer and scheduler from a standard
    diffusers folder, and a second denoiser (`transformer_2/`, Wan 2.2's low-noise expert) where the folder has one.

    Classes come from the folder's `model_index.json` (any tokenizer or scheduler it names), with
    auto classes as the fallback, so a folder the project has never seen loads without special cases.
    """
    path = resolve_model_dir(model)
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    loaded = {}
    for kind in COMPONENTS:
        names = DENOISER_FOLDERS if kind == "denoiser" else (kind,)
        folder_name = next((name for name in names if (path / name).is_dir()), None)
        if folder_name is None:
            wanted = " or ".join(f"'{name}/'" for name in names)
            raise InputError(f"{path}: model folder has no {wanted} subfolder (expected a diffusers layout)")
        loaded[kind] = _load_part(path, index, folder_name, kind, dtype)
    second = None
    if (path / SECOND_EXPERT).is_dir() and (index.get(SECOND_EXPERT) or [None])[0] is not None:
        second = _load_part(path, index, SECOND_EXPERT, "denoiser", dtype)
    return ModelComponents(
        path=path,
        **loaded,
        denoiser_2=second,
        boundary_ratio=index.get("boundary_ratio"),
        expand_timesteps=bool(index.get("expand_timesteps")),
    )


def set_active_adapters(layer: BaseTunerLayer, names: list[str]) -> None:
    """Activate exactly `names` on one LoRA layer without changing any parameter's `requires_grad` (peft's
    `set_adapter` makes the active adapters trainable)."""
    flags = [(parameter, parameter.requires_grad) for parameter in layer.parameters()]
    layer.set_adapter(names)
    for parameter, flag in flags:
        parameter.requires_grad_(flag)


def _apply(modes: list[tuple[torch.nn.Module, bool]], adapters: list[tuple[BaseTunerLayer, list[str]]]) -> None:
    """Set each layer's train / eval flag and each LoRA layer's active adapters (keeping `requires_grad`)."""
    for layer, training in modes:
        layer.training = training
    for layer, names in adapters:
        set_active_adapters(layer, names)


class Backbone(abc.ABC):
    """Every architecture-specific fact of one text-to-video architecture, behind one interface: the contract.

    Methods, controls, training and sampling ask a backbone only what this class declares. A subclass
    declares which model class it serves (`denoiser_class_names`), its attention sites (`sites`), its parameter
    groups and LoRA targets (regexes over the denoiser's names, `parameter_group_patterns`,
    `lora_target_patterns`), and implements every abstract member below: latent geometry, the video
    autoencoder, text encoding with its tokenizer's layout, the denoiser call, and gradient checkpointing.
    What stays concrete here (components, device, frame positions, fingerprint, parameter groups) holds for
    any diffusers model folder.
    """

    name: ClassVar[str]
    denoiser_class_names: ClassVar[tuple[str, ...]]
    #: the diffusers pipelines whose folders this backbone serves, and what a folder of the family gets when its
    #: `motiontune.json` says nothing: `{"native": {frames, height, width}, "generation": {steps, guidance_scale}}`
    pipeline_class_names: ClassVar[tuple[str, ...]] = ()
    family_defaults: ClassVar[dict[str, dict]] = {}
    parameter_group_patterns: ClassVar[dict[str, str]]
    lora_target_patterns: ClassVar[dict[str, str]]
    sites: list[AttentionSite]

    def __init__(self, components: ModelComponents):
        self.denoiser = components.denoiser
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.tokenizer = components.tokenizer
        self.scheduler = components.scheduler
        self.path = components.path
        self.controller = None
        self.frame_positions: dict[str, torch.nn.Parameter] = {}
        self._fingerprint: str | None = None
        self._noise_process: NoiseProcess | None = None
        for module in (self.denoiser, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()

    def fingerprint(self) -> str:
        """A sha256 that tells base models apart: over the denoiser's and the text encoder's configs and, for every
        denoiser parameter and the text encoder's input embedding, its name, shape and first and last few values
        (rounded to bf16, so the model loaded in bf16 keeps it). Computed once, when first asked
        (`load_backbone` asks at load, before training changes any weight), then cached."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            digest.update(_config_json(dict(self.denoiser.config)).encode())
            digest.update(_config_json(self.text_encoder.config.to_dict()).encode())
            embedding = self.text_encoder.get_input_embeddings().weight
            named = [*self.denoiser.named_parameters(), ("text_encoder.input_embeddings", embedding)]
            for name, parameter in named:
                flat = parameter.detach().reshape(-1)
                ends = torch.cat([flat[:FINGERPRINT_VALUES], flat[-FINGERPRINT_VALUES:]])
                values = ends.to("cpu", torch.bfloat16).to(torch.float64).numpy().tobytes()
                digest.update(f"{name}{tuple(parameter.shape)}".encode() + values)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The precision the denoiser computes in (diffusers' rule: its first floating weight outside the modules it
        keeps in float32, e.g. Wan's norms and modulation tables)."""
        dtype = getattr(self.denoiser, "dtype", None)
        return dtype if isinstance(dtype, torch.dtype) else next(self.denoiser.parameters()).dtype

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Backbone:
        for module in (self.denoiser, self.vae, self.text_encoder):
            module.to(device) if dtype is None else module.to(device, dtype)
        for positions in self.frame_positions.values():
            positions.data = positions.data.to(device) if dtype is None else positions.data.to(device, dtype)
        return self

    def add_frame_positions(self, frames: int) -> None:
        """Give every temporal attention learned per-frame positions `(1, frames, C)`, added to the input of its
        query and key (as Motion Inversion's query-key embedding, Sec. 3.1) and zero at first, so an identity.

        A model folder keeps them in `frame_positions.safetensors`; the attention controller applies them.
        ZeroScope has none: its temporal attention is blind to frame order, which it learns only through
        zero-padded temporal convolutions. A small model trained briefly does not learn that (docs/shapeworld.md).
        """
        for site in self.sites:
            if site.kind == "temporal":
                channels = self.site_modules(site.name)[0].to_q.in_features
                zeros = torch.zeros(1, frames, channels, device=self.device, dtype=self.dtype)
                self.frame_positions[site.name] = torch.nn.Parameter(zeros, requires_grad=False)

    def load_frame_positions(self, path: Path) -> None:
        """Read frame positions saved by `save_frame_positions`, checking sites and channels."""
        tensors = load_file(path)
        temporal = {site.name for site in self.sites if site.kind == "temporal"}
        if set(tensors) != temporal:
            raise InputError(f"{path}: frame positions are not for this model's temporal attention sites")
        self.add_frame_positions(next(iter(tensors.values())).shape[1])
        for name, tensor in tensors.items():
            if tensor.shape != self.frame_positions[name].shape:
                raise InputError(f"{path}: {name} has shape {tuple(tensor.shape)}, expected (1, frames, channels)")
            self.frame_positions[name].data.copy_(tensor)

    def save_frame_positions(self, folder: Path) -> None:
        tensors = {name: positions.detach().cpu().contiguous() for name, positions in self.frame_positions.items()}
        save_file(tensors, Path(folder) / FRAME_POSITIONS_FILE)

    # --- latent geometry ---------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along height and width."""

    @property
    def pixel_multiple(self) -> int:
        """What frame heights and widths must be multiples of (the autoencoder's factor, times the denoiser's
        patch size on a transformer)."""
        return self.vae_scale_factor

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int:
        """Channels of the denoiser's latents."""

    @property
    @abc.abstractmethod
    def num_levels(self) -> int:
        """Resolution levels of the denoiser (level k sees the latent grid halved k times)."""

    @abc.abstractmethod
    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """The latent grid (h, w) of frames of `height` x `width` pixels."""

    @abc.abstractmethod
    def latent_frames(self, frames: int) -> int:
        """Latent frames of a video of `frames` pixel frames (the autoencoder's temporal compression)."""

    @abc.abstractmethod
    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames a video of `latent_frames` latent frames decodes to."""

    @abc.abstractmethod
    def grid_at_level(self, latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
        """The token grid (h, w) an attention site at `level` sees for a latent grid `latent_hw`."""

    @abc.abstractmethod
    def down_attention_level(self, preferred: int) -> int:
        """The down-path level nearest to `preferred` with both cross and temporal attention."""

    @abc.abstractmethod
    def cross_attention_level(self, preferred: int) -> int:
        """The level nearest to `preferred` with cross-attention anywhere in the denoiser."""

    # --- video autoencoder --------------------------------------------------------------------
    @abc.abstractmethod
    def encode_video(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Pixels `(B, F, 3, H, W)` in [-1, 1] to scaled latents `(B, C, F, h, w)`; posterior mean by default."""

    @abc.abstractmethod
    def decode_latents(self, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Scaled latents `(B, C, F, h, w)` to pixels `(B, F, 3, H, W)` in [-1, 1]."""

    # --- text ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids `(B, L)` as the text encoder reads them (special tokens, padding and truncation included)."""

    @abc.abstractmethod
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings `(B, L, D)` the denoiser's cross-attention reads."""

    @abc.abstractmethod
    def token_ids(self, text: str) -> list[int]:
        """Ids of `text`'s own tokens, without special tokens."""

    @abc.abstractmethod
    def prompt_length(self, prompt: str) -> int:
        """Text positions `prompt` fills (special tokens included, padding excluded), at most the text length."""

    @abc.abstractmethod
    def word_positions(self, prompt: str) -> list[int]:
        """Text positions of `prompt`'s own tokens (no start, end or padding token), those inside the text length."""

    @abc.abstractmethod
    def prompt_overflow(self, prompt: str) -> int:
        """How many of `prompt`'s tokens fall past the text encoder's length (dropped when it is encoded)."""

    def phrase_positions(self, prompt: str, phrase: str) -> list[int]:
        """Text positions of `phrase`'s tokens among the encoded `prompt`'s words (`word_positions`); ValueError when
        absent or cut off by the text length."""
        ids = self.tokenize([prompt])[0].tolist()
        words, target = self.word_positions(prompt), self.token_ids(phrase)
        for start in range(len(words) - len(target) + 1):
            span = words[start : start + len(target)]
            if [ids[position] for position in span] == target:
                return span
        if phrase in prompt:
            raise ValueError(
                f"phrase {phrase!r} falls beyond the text encoder's {len(ids)} tokens in prompt {prompt!r}"
            )
        raise ValueError(f"phrase {phrase!r} not found in prompt {prompt!r}")

    # --- denoiser --------------------------------------------------------------------------------
    #: whether the denoiser starts a video from a given first frame (`predict_noise` then takes per-frame timesteps)
    starts_from_image: bool = False

    @abc.abstractmethod
    def predict_noise(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        conditional: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The denoiser's output (of the scheduler's prediction type) for latents `(B, C, F, h, w)` and text
        `(B, L, D)`; `conditional` marks the batch rows that carry the prompt (attention edits apply there).
        `timesteps` is one per row `(B,)` (or one for all); a backbone that `starts_from_image` also takes one per
        row and latent frame `(B, F)`."""

    @abc.abstractmethod
    def down_blocks_only(self, last_level: int | None = None) -> contextlib.AbstractContextManager[list[torch.Tensor]]:
        """Inside the block a denoiser call stops after the down path's `last_level` (MotionMatcher's early
        exit); its output hidden states are appended to the yielded list."""

    # --- memory ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def enable_gradient_checkpointing(self) -> None:
        """Recompute the denoiser's activations in backward, without renaming any module."""

    def checkpointed(self, module: torch.nn.Module, function, *args, **kwargs):
        """`function(*args, **kwargs)` (the forward of `module`) under non-reentrant gradient checkpointing, its
        recompute in backward run in the state the forward ran in: the attention controller's recordings, edits and
        call shape, the LoRA adapters active on the module's layers, and each layer's train / eval mode. So a pass
        that switches a LoRA off or records attention maps with gradients (MotionMatcher's frozen feature passes,
        MotionBooth's subject attention, box-edit pre-training) keeps its memory savings."""
        controller = self.controller.state() if self.controller is not None else None
        modes = [(layer, layer.training) for layer in module.modules()]
        layers = [layer for layer in module.modules() if isinstance(layer, BaseTunerLayer)]
        adapters = [(layer, list(layer.active_adapters)) for layer in layers]

        @contextlib.contextmanager
        def as_in_forward():
            now_modes = [(layer, layer.training) for layer, _ in modes]
            now_adapters = [(layer, list(layer.active_adapters)) for layer, _ in adapters]
            _apply(modes, adapters)
            try:
                with self.controller.restored(controller) if controller is not None else contextlib.nullcontext():
                    yield
            finally:
                _apply(now_modes, now_adapters)

        def contexts():
            return contextlib.nullcontext(), as_in_forward()

        return checkpoint(function, *args, use_reentrant=False, context_fn=contexts, **kwargs)

    @abc.abstractmethod
    def disable_gradient_checkpointing(self) -> None:
        """Undo `enable_gradient_checkpointing`."""

    # --- noise process -------------------------------------------------------------------------------
    @property
    def noise_process(self) -> NoiseProcess:
        """The forward process the denoiser was trained on (`diffusion.py`): adding noise, the training target,
        output conversions, noise levels. Here the folder scheduler's DDPM process; a flow-matching family
        overrides it."""
        if self._noise_process is None:
            self._noise_process = DiscreteDiffusion(DDPMScheduler.from_config(self.scheduler.config))
        return self._noise_process

    # --- parameters --------------------------------------------------------------------------------
    def site_modules(self, name: str) -> list[torch.nn.Module]:
        """The attention modules a site stands for (one; a model with several experts has one per expert)."""
        return [self.denoiser.get_submodule(name)]

    def shard_units(self) -> list[torch.nn.Module]:
        """The denoiser's modules that sharded training (`sharding.shard_denoiser`, FSDP) shards one by one: each
        gathers its weights for its own forward and backward, so a process holds one unit's at a time. Empty when
        the backbone names none (sharding is then refused)."""
        return []

    def capabilities(self) -> set[str]:
        """What this backbone provides, in the words methods name their needs with (`Method.requirements`):
        `parameter group G`, `LoRA target G` and `K attention` for each attention kind among its sites."""
        return {
            *(f"parameter group {group}" for group in self.parameter_group_patterns),
            *(f"LoRA target {group}" for group in self.lora_target_patterns),
            *(f"{site.kind} attention" for site in self.sites),
        }

    def parameter_names(self, group: str) -> list[str]:
        """Names of the denoiser parameters in a declared group (e.g. `temporal`, `cross_kv`)."""
        if group not in self.parameter_group_patterns:
            known = ", ".join(sorted(self.parameter_group_patterns))
            raise KeyError(f"backbone '{self.name}' has no parameter group '{group}' (known: {known})")
        pattern = re.compile(self.parameter_group_patterns[group])
        return [name for name, _ in self.denoiser.named_parameters() if pattern.search(name)]

    def save_temporal_layers(self, folder: Path) -> None:
        """Write the denoiser's temporal layers in the format the model family shares them in (AnimateDiff: a
        `MotionAdapter` folder). A family without such a format has none to write: one clear error."""
        raise ConfigError(f"backbone '{self.name}' has no format of its own for its temporal layers")

    #: the LoRA file layouts other tools read for this family (`lora_files`)
    lora_layouts: ClassVar[tuple[str, ...]] = ("diffusers",)

    @classmethod
    def lora_files(cls, factors: dict[str, torch.Tensor], layout: str) -> dict[str, dict[str, torch.Tensor]]:
        """LoRA factors of an adapter file (`unet.<module>.lora_A.weight` / `.lora_B.weight`) in a layout other tools
        read, as `{part: tensors}` with one part per file (`""` for one file). Here: diffusers' own keys, which a
        diffusers UNet pipeline's `load_lora_weights` reads (the adapter's keys as they are)."""
        if layout not in cls.lora_layouts:
            known = ", ".join(cls.lora_layouts)
            raise ConfigError(f"a {cls.name} LoRA has no {layout} layout (this family's: {known})")
        return {"": dict(factors)}

    def lora_target(self, groups: list[str]) -> str:
        """A peft `target_modules` regex covering the linear layers of the named groups."""
        return "|".join(f"(?:{self.lora_target_patterns[group]})" for group in groups)
