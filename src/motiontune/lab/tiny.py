"""Build tiny text-to-video model folders (UNet3D, AnimateDiff and Wan) in the standard diffusers layout, from
config, offline.

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
    AutoencoderKLWan,
    DDIMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNet3DConditionModel,
    UNetMotionModel,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5TokenizerFast, UMT5Config, UMT5EncoderModel

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


#: the transformer of diffusers' own Wan tests (`test_models_transformer_wan.py`), 4 latent channels and heads of 16
#: (width 32, so a rank-32 LoRA fits)
TINY_WAN = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 4,
    "out_channels": 4,
    "freq_dim": 256,
    "ffn_dim": 32,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}
#: diffusers' Wan pipeline test autoencoder (8x8 pixels and 4 frames a latent cell), with 4 latent channels
TINY_WAN_VAE = {
    "base_dim": 3,
    "z_dim": 4,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.1, -0.2, 0.05, 0.0],
    "latents_std": [1.5, 0.8, 1.2, 1.0],
}
#: Wan 2.1's sampler: UniPC on flow sigmas, shift 3 (its 480p setting)
WAN_SCHEDULER = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}
#: Wan 2.2 A14B's text-to-video boundary: the low-noise expert below noise level 0.875
WAN22_BOUNDARY = 0.875
#: native clip of the tiny Wan: 9 frames (3 latent frames) of 64 x 64 pixels (a 4 x 4 token grid)
TINY_WAN_NATIVE = {"frames": 9, "height": 64, "width": 64}


def build_word_unigram_tokenizer(words: list[str] | tuple[str, ...], max_length: int) -> T5TokenizerFast:
    """A T5-style (SentencePiece unigram) tokenizer, as UMT5's, whose vocabulary holds each of `words` as one
    piece `▁word`; other text still tokenizes, into single characters. Lower-cases like the CLIP one; appends
    the end token `</s>`, pads with `<pad>` (id 0), no start token."""
    characters = "abcdefghijklmnopqrstuvwxyz0123456789" + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(f"▁{word}", -1.0) for word in dict.fromkeys(w.lower() for w in words)]
    pieces += [("▁", -5.0)] + [(c, -10.0) for c in characters]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=max_length,
    )


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


def build_tiny_wan(
    output_dir: str | os.PathLike,
    *,
    two_experts: bool = False,
    image_to_video: bool = False,
    words: list[str] | tuple[str, ...] = DEFAULT_WORDS,
    text_length: int = 16,
    text_hidden_size: int = 32,
    transformer_config: dict | None = None,
    vae_config: dict | None = None,
    scheduler_config: dict | None = None,
    native: dict | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny, randomly initialised Wan model folder (as `WanPipeline.save_pretrained` lays it out) and return
        its path: a `WanTransformer3DModel` and an `AutoencoderKLWan` at the sizes of diffusers' own Wan tests, a random
        UMT5 encoder with a unigram tokenizer of the world's words, UniPC on flow sigmas. With `two_experts`, Wan 2.2
        A14B's layout: a second transformer (`transformer_2/`) for noise levels below `boundary_ratio` 0.875. With
        `image_to_video`, Wan 2.2 TI2V's: `expand_timesteps` (per-token timesteps, the first latent frame given), so it
        starts videos from an image. A `motiontune.json` states its native clip (9 frames of 64 x 64). The configs given
    are merged over the tiny ones (`TINY_WAN`, `TINY_WAN_VAE`, `WAN_SCHEDULER`) and `native` replaces the clip."""
    output_dir = Path(output_dir)
    torch.manual_seed(seed)
    tokenizer = build_word_unigram_tokenizer(words, text_length)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_hidden_size,
            d_kv=8,
            d_ff=2 * text_hidden_size,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    transformer_kwargs = {**TINY_WAN, **(transformer_config or {}), "text_dim": text_hidden_size}
    components = {
        "transformer": WanTransformer3DModel(**transformer_kwargs),
        "vae": AutoencoderKLWan(**{**TINY_WAN_VAE, **(vae_config or {})}),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": UniPCMultistepScheduler(**{**WAN_SCHEDULER, **(scheduler_config or {})}),
    }
    if two_experts:
        components["transformer_2"] = WanTransformer3DModel(**transformer_kwargs)
    with atomic_directory(output_dir) as staging:
        _write_folder(staging, "WanPipeline", components)
        index = json.loads((staging / "model_index.json").read_text())
        index.setdefault("transformer_2", [None, None])
        index.update(boundary_ratio=WAN22_BOUNDARY if two_experts else None, expand_timesteps=image_to_video)
        (staging / "model_index.json").write_text(json.dumps(index, indent=2))
        (staging / "motiontune.json").write_text(json.dumps({"native": native or TINY_WAN_NATIVE}, indent=2))
    return output_dir
