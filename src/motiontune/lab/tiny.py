"""Build tiny text-to-video model folders (UNet3D and AnimateDiff) in the standard diffusers layout, from config,
offline.

The folder has exactly the layout of a ZeroScope / ModelScope checkout (`model_index.json`, `unet/`,
`vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), so the loading code that serves real models
serves it too. Weights are random: it exists for tests, benchmarks and the demo.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNet3DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..utils import atomic_directory

DEFAULT_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "and",
    "with",
    "is",
    "doing",
    "moving",
    "static",
    "left",
    "right",
    "up",
    "down",
    "zigzag",
    "orbit",
    "bounce",
    "diagonal",
    "circle",
    "square",
    "triangle",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "gray",
    "textured",
    "background",
    "person",
    "dog",
    "cat",
    "car",
    "sks",
    "pll",
]

ZEROSCOPE_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

TINY_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    "block_out_channels": (32, 32, 64),
    "layers_per_block": 1,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}

TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "scaling_factor": 0.18215,
}


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE (GPT-2 / CLIP convention)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def build_word_tokenizer(words: list[str] | tuple[str, ...], max_length: int) -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer whose merges spell each word of `words` as one token.

    Any other text still tokenizes, into single characters, exactly like a real CLIP vocabulary.
    BPE applies the lowest-ranked merge first, so a word's merges are added by tokenizing it with the
    merges so far and joining its first two pieces until it is one token: merges added for an earlier
    word (e.g. "r"+"i" of "right") can never split a later one ("triangle").
    """
    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for symbol in [*alphabet, *(c + "</w>" for c in alphabet)]:
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in dict.fromkeys(w.lower() for w in words):
        pieces = _bpe_pieces([*word[:-1], word[-1] + "</w>"], merges)
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def _bpe_pieces(symbols: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly join the adjacent pair with the lowest merge rank."""
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(itertools.pairwise(symbols))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def _tiny_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int, text_length: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=text_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _write_folder(staging: Path, pipeline: str, components: dict[str, object]) -> None:
    """Save each component in its subfolder and a `model_index.json` naming their classes."""
    index = {"_class_name": pipeline}
    for name, component in components.items():
        component.save_pretrained(staging / name)
        library = "transformers" if type(component).__module__.startswith("transformers") else "diffusers"
        index[name] = [library, type(component).__name__]
    (staging / "model_index.json").write_text(json.dumps(index, indent=2))


def build_tiny_model(
    output_dir: str | os.PathLike,
    *,
    words: list[str] | tuple[str, ...] = DEFAULT_WORDS,
    text_length: int = 16,
    unet_config: dict | None = None,
    vae_config: dict | None = None,
    text_hidden_size: int = 32,
    scheduler_config: dict | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny, randomly initialised UNet3D text-to-video model folder and return its path.

    The write is atomic: the folder appears complete or not at all.
    """
    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    unet_kwargs = {**TINY_UNET, **(unet_config or {})}
    tokenizer = build_word_tokenizer(words, text_length)
    text_encoder = _tiny_text_encoder(tokenizer, text_hidden_size, text_length)
    unet = UNet3DConditionModel(**{**unet_kwargs, "cross_attention_dim": text_hidden_size})
    vae = AutoencoderKL(**{**TINY_VAE, **(vae_config or {})})
    scheduler = DDIMScheduler(**{**ZEROSCOPE_SCHEDULER, **(scheduler_config or {})})
    components = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer}
    with atomic_directory(output_dir) as staging:
        _write_folder(staging, "TextToVideoSDPipeline", {**components, "scheduler": scheduler})
    return output_dir


def build_tiny_animatediff(
    output_dir: str | os.PathLike,
    *,
    motion_adapter_dir: str | os.PathLike | None = None,
    words: list[str] | tuple[str, ...] = DEFAULT_WORDS,
    text_length: int = 16,
    text_hidden_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a tiny, randomly initialised AnimateDiff model and return its path: a saved `AnimateDiffPipeline`
    folder, or with `motion_adapter_dir` a Stable Diffusion folder plus a `MotionAdapter` folder there (the two
    forms people keep AnimateDiff in). Same words, text encoder and autoencoder as `build_tiny_model`; the UNet
    has the tiny UNet3D's blocks and widths, with motion modules in place of its temporal layers."""
    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(words, text_length)
    text_encoder = _tiny_text_encoder(tokenizer, text_hidden_size, text_length)
    image_unet = UNet2DConditionModel(
        sample_size=8,
        down_block_types=tuple(kind.replace("3D", "2D") for kind in TINY_UNET["down_block_types"]),
        up_block_types=tuple(kind.replace("3D", "2D") for kind in TINY_UNET["up_block_types"]),
        **{key: TINY_UNET[key] for key in ("in_channels", "out_channels", "block_out_channels", "layers_per_block")},
        cross_attention_dim=text_hidden_size,
        attention_head_dim=TINY_UNET["attention_head_dim"],
        norm_num_groups=TINY_UNET["norm_num_groups"],
    )
    adapter = MotionAdapter(
        block_out_channels=TINY_UNET["block_out_channels"],
        motion_layers_per_block=TINY_UNET["layers_per_block"],
        motion_norm_num_groups=TINY_UNET["norm_num_groups"],
        motion_num_attention_heads=4,
        motion_max_seq_length=32,
    )
    vae = AutoencoderKL(**TINY_VAE)
    scheduler = DDIMScheduler(**{**ZEROSCOPE_SCHEDULER, "beta_schedule": "linear"})
    components = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}
    if motion_adapter_dir is not None:
        with atomic_directory(Path(motion_adapter_dir)) as staging:
            adapter.save_pretrained(staging)
        with atomic_directory(output_dir) as staging:
            _write_folder(staging, "StableDiffusionPipeline", {**components, "unet": image_unet})
        return output_dir
    unet = UNetMotionModel.from_unet2d(image_unet, adapter)
    with atomic_directory(output_dir) as staging:
        _write_folder(staging, "AnimateDiffPipeline", {**components, "unet": unet, "motion_adapter": adapter})
    return output_dir
