"""What the tests that compare motiontune with diffusers' own pipelines share."""

from __future__ import annotations

import torch


def wan_pipeline_latents(pipe, noise: torch.Tensor, steps: int = 3, guidance: float = 5.0, **inputs) -> torch.Tensor:
    """The latents a diffusers Wan pipeline (`WanPipeline`, `WanImageToVideoPipeline`) samples from motiontune's
    initial noise `(1, C, F, h, w)` on a tiny Wan folder (8x8 pixels and 4 frames a latent cell); `inputs` are the
    prompt (or prompt embeddings) and the rest of the call."""
    return pipe(
        num_frames=(noise.shape[2] - 1) * 4 + 1,
        height=noise.shape[-2] * 8,
        width=noise.shape[-1] * 8,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=noise,
        output_type="latent",
        **inputs,
    ).frames
