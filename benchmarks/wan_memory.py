"""Memory plan for training each method on real Wan models: parameters, gradients, optimizer state and activations.

For Wan 2.1 T2V 1.3B and 14B, Wan 2.2 TI2V 5B and Wan 2.2 T2V A14B (two 14B experts) at 480 x 832 x 81 frames,
batch 1, AdamW, gradient checkpointing on every transformer block. The transformers are built on the meta device
from their published configs (no weights, no download). What each method trains comes from motiontune's own
declarations (`WanBackbone.parameter_group_patterns`, `lora_target_patterns`, each method's default options), so
the plan follows the code. Activations are measured, not guessed: one real block of each model's width runs on
this CPU at two small token counts with an attention that keeps what a flash kernel keeps (q, k, v, output and
the log-sum-exp), the bytes it saves for backward are counted (storages deduplicated, weights excluded), and the
per-token slope is carried to the real token count. Two weight regimes:

- `fp32 weights`: the model in float32 under bf16 autocast (`motiontune train --mixed-precision bf16`);
- `bf16 weights`: frozen weights in bfloat16, trained tensors in float32 (`motiontune train --weights-dtype bf16`).

    python benchmarks/wan_memory.py                       # writes docs/wan_memory.md
    python benchmarks/wan_memory.py --frames 49 --height 480 --width 832 --output /tmp/plan.md
"""

from __future__ import annotations

import argparse
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel

from motiontune.attention import rotate
from motiontune.backbones.wan import WanBackbone

GB = 1024**3
BUDGETS = (24, 48, 80)
TEXT_LENGTH = 512
TEXT_DIM = 4096
#: the published transformer configs (Wan-AI's config.json files; the original code's wan/configs/*.py)
MODELS = {
    "Wan 2.1 T2V 1.3B": {"dim": 1536, "heads": 12, "ffn": 8960, "layers": 30, "channels": 16, "spatial": 8},
    "Wan 2.1 T2V 14B": {"dim": 5120, "heads": 40, "ffn": 13824, "layers": 40, "channels": 16, "spatial": 8},
    "Wan 2.2 TI2V 5B": {"dim": 3072, "heads": 24, "ffn": 14336, "layers": 30, "channels": 48, "spatial": 16},
    "Wan 2.2 T2V A14B": {"dim": 5120, "heads": 40, "ffn": 13824, "layers": 40, "channels": 16, "spatial": 8},
}
EXPERTS = {"Wan 2.2 T2V A14B": 2}
LORA_RANK = 32
COLUMNS = (
    "model",
    "tokens",
    "method",
    "trained (M)",
    "weights GB",
    "grads + AdamW GB",
    "activations GB",
    "peak GB",
    "fits",
)
#: Motion Inversion's defaults: embeddings cover 32 frames, the value embedding is stored in full
MOTION_INVERSION_FRAMES = 32


@dataclass(frozen=True)
class MethodPlan:
    """What a method trains on Wan at its default options, in motiontune's words."""

    full_groups: tuple[str, ...] = ()
    lora_groups: tuple[str, ...] = ()
    embeddings: bool = False
    #: MotionMatcher: a feature pass with gradients through the first half of the blocks (checkpointed too, its
    #: recompute run with the LoRA off as in its forward: `Backbone.checkpointed`), with its temporal maps
    feature_pass: bool = False
    #: MotionBooth: cross-attention maps of the middle blocks recorded with gradients (explicit attention)
    cross_maps: bool = False


METHODS = {
    "newmove (full)": MethodPlan(full_groups=("temporal", "cross_kv")),
    "newmove (lora)": MethodPlan(lora_groups=("temporal", "cross_kv")),
    "dreambooth": MethodPlan(full_groups=("spatial",)),
    "motiondirector": MethodPlan(lora_groups=("temporal",)),
    "motionmatcher": MethodPlan(lora_groups=("spatial_self", "temporal"), feature_pass=True),
    "motion-inversion": MethodPlan(embeddings=True),
    "motionbooth": MethodPlan(full_groups=("all",), cross_maps=True),
}


def meta_transformer(config: dict) -> WanTransformer3DModel:
    with torch.device("meta"):
        return WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=config["heads"],
            attention_head_dim=config["dim"] // config["heads"],
            in_channels=config["channels"],
            out_channels=config["channels"],
            text_dim=TEXT_DIM,
            freq_dim=256,
            ffn_dim=config["ffn"],
            num_layers=config["layers"],
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
        )


def trained_parameters(model: WanTransformer3DModel, plan: MethodPlan, tokens_per_frame: int) -> int:
    """Trained tensor elements of one expert: full groups, LoRA factors (r (in + out) per adapted linear), or Motion
    Inversion's embeddings at the deepest blocks (a query-key row and a value row per frame and position)."""
    count = 0
    for group in plan.full_groups:
        pattern = re.compile(WanBackbone.parameter_group_patterns[group])
        count += sum(p.numel() for name, p in model.named_parameters() if pattern.search(name))
    if plan.lora_groups:
        target = "|".join(f"(?:{WanBackbone.lora_target_patterns[group]})" for group in plan.lora_groups)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and re.fullmatch(target, name):
                count += LORA_RANK * (module.in_features + module.out_features)
    if plan.embeddings:
        dim = model.config.num_attention_heads * model.config.attention_head_dim
        sites = 2 if model.config.num_layers % 2 == 0 else 1
        count += sites * MOTION_INVERSION_FRAMES * dim * (1 + tokens_per_frame)
    return count


class _FlashLike(torch.autograd.Function):
    """Attention that saves what a flash kernel saves for backward: q, k, v, the output and the log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = F.scaled_dot_product_attention(q, k, v)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("measurement only")


class _FlashLikeProcessor:
    """Wan's attention (RMS-normed q/k across heads, rotary on self-attention) through `_FlashLike`."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(context).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            q, k = rotate(q, *rotary_emb), rotate(k, *rotary_emb)
        out = _FlashLike.apply(*(x.transpose(1, 2) for x in (q, k, v)))
        return attn.to_out[0](out.transpose(1, 2).flatten(2).type_as(q))


def saved_bytes(block: torch.nn.Module, tokens: int, dim: int, weights: str) -> int:
    """Bytes one transformer block saves for backward at `tokens` tokens (inputs need grad, weights excluded)."""
    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    hidden = torch.randn(1, tokens, dim, dtype=dtype, requires_grad=True)
    text = torch.randn(1, TEXT_LENGTH, dim, dtype=dtype)
    temb = torch.randn(1, 6, dim, dtype=dtype)
    head = dim // block.attn1.heads
    angles = torch.randn(1, tokens, 1, head)
    rotary = (angles.cos(), angles.sin())
    parameters = {p.untyped_storage().data_ptr() for p in block.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if weights == "fp32" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        block(hidden, text, temb, rotary)
    return sum(storages.values())


def block_slope(config: dict, weights: str) -> tuple[float, float]:
    """Bytes a block saves, as `fixed + per_token * tokens`, fitted at 64 and 128 tokens on a real block of the
    model's width (uninitialised weights: only sizes matter)."""
    model = meta_transformer({**config, "layers": 1})
    block = model.blocks[0]
    for attention in (block.attn1, block.attn2):
        attention.set_processor(_FlashLikeProcessor())
    block = block.to_empty(device="cpu").to(torch.bfloat16 if weights == "bf16" else torch.float32)
    for parameter in block.parameters():
        parameter.data.normal_(0, 0.02)
    small, large = (saved_bytes(block, n, config["dim"], weights) for n in (64, 128))
    per_token = (large - small) / 64
    return small - 64 * per_token, per_token


def plan(frames: int, height: int, width: int) -> list[dict]:
    rows = []
    for name, config in MODELS.items():
        model = meta_transformer(config)
        total = sum(p.numel() for p in model.parameters())
        experts = EXPERTS.get(name, 1)
        latent_frames = (frames - 1) // 4 + 1
        grid = (height // config["spatial"] // 2) * (width // config["spatial"] // 2)
        tokens = latent_frames * grid
        for weights in ("fp32", "bf16"):
            element = 4 if weights == "fp32" else 2
            fixed, per_token = block_slope(config, weights)
            one_block = fixed + per_token * tokens
            checkpoints = config["layers"] * tokens * config["dim"] * element
            for method, method_plan in METHODS.items():
                trained = trained_parameters(model, method_plan, grid) * experts
                in_model = method_plan.full_groups != ()
                frozen = total * experts - (trained if in_model else 0)
                parameters = frozen * element + trained * 4
                gradients, optimizer = trained * 4, trained * 8
                activations = checkpoints + one_block
                if method_plan.feature_pass:
                    half = (config["layers"] + 1) // 2
                    activations += half * tokens * config["dim"] * element
                    activations += 3 * grid * config["heads"] * latent_frames**2 * 4 * half
                if method_plan.cross_maps:
                    activations += 2 * 2 * config["heads"] * tokens * TEXT_LENGTH * element
                peak = parameters + gradients + optimizer + activations
                rows.append(
                    {
                        "model": name,
                        "weights": weights,
                        "tokens": tokens,
                        "method": method,
                        "parameters (B)": total * experts / 1e9,
                        "trained (M)": trained / 1e6,
                        "weights GB": parameters / GB,
                        "grads + AdamW GB": (gradients + optimizer) / GB,
                        "activations GB": activations / GB,
                        "peak GB": peak / GB,
                        "fits": [budget for budget in BUDGETS if peak / GB <= budget * 0.9],
                    }
                )
    return rows


def report(rows: list[dict], frames: int, height: int, width: int) -> str:
    lines = [
        f"# Memory plan: each method on real Wan models ({frames} frames, {height} x {width}, batch 1)",
        "",
        "Reproduce: `python benchmarks/wan_memory.py` (meta-device models, activations measured on one real block",
        "per width on CPU and carried to the real token count; see the script's docstring). A configuration fits a",
        "GPU when its peak is under 90% of the memory (CUDA context and allocator slack take the rest). AdamW keeps",
        "two float32 moments; trained tensors and their gradients are float32; gradient checkpointing on every block.",
        "Wan 2.2 A14B trains both experts (each on its own noise levels), so its weights and trained tensors count",
        "twice and its activations once (one expert runs per row).",
        "",
    ]
    for weights in ("fp32", "bf16"):
        title = "float32 weights under bf16 autocast (`--weights-dtype fp32`, the default)"
        if weights == "bf16":
            title = "bf16 frozen weights (`--weights-dtype bf16`)"
        lines += [f"## {title}", ""]
        lines.append(f"| {' | '.join(COLUMNS)} |")
        lines.append("| --- " * len(COLUMNS) + "|")
        for row in rows:
            if row["weights"] != weights:
                continue
            fits = ", ".join(f"{budget} GB" for budget in row["fits"]) or "none of 24/48/80 GB"
            lines.append(
                f"| {row['model']} ({row['parameters (B)']:.1f}B) | {row['tokens']} | {row['method']} | "
                f"{row['trained (M)']:.1f} | {row['weights GB']:.1f} | {row['grads + AdamW GB']:.1f} | "
                f"{row['activations GB']:.1f} | {row['peak GB']:.1f} | {fits} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=81, help="pixel frames (4k+1)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "wan_memory.md")
    args = parser.parse_args()
    text = report(plan(args.frames, args.height, args.width), args.frames, args.height, args.width)
    args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
