"""Exports load where users load them: a LoRA in `AnimateDiffPipeline.load_lora_weights`, NewMove's motion modules as
a `MotionAdapter`, a Wan LoRA in diffusers' and ComfyUI's layouts (one file per Wan 2.2 expert) in
`WanPipeline.load_lora_weights`; each compared with motiontune's own denoiser and generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter

from cli_helpers import error_line
from motiontune.app.api import open_backbone
from motiontune.app.cli import main
from motiontune.generation import GenerationConfig, generate_latents
from motiontune.io.adapters import read_adapter, save_adapter
from motiontune.methods import create_method, load_adapter
from pipeline_helpers import wan_pipeline_latents

pytestmark = pytest.mark.usefixtures("single_thread")
FRAMES, SIZE, STEPS = 4, 16, 3
PROMPT = "a red sks circle"


def _randomised(method, seed: int) -> None:
    """Weights as after training: every trainable tensor moved off its initial value."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in method.trainable_parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)


def _saved(method, path):
    return save_adapter(path, method.adapter_tensors(), method.adapter_metadata())


def _denoiser_inputs(backbone):
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(1, backbone.latent_channels, FRAMES, SIZE // 2, SIZE // 2, generator=generator)
    return latents, torch.tensor(400), backbone.encode_prompt([PROMPT])


def _pipeline_latents(pipe, seed: int) -> torch.Tensor:
    """The diffusers pipeline's DDIM result from motiontune's initial noise for `seed` (`initial_latents`)."""
    noise = torch.randn(1, 4, FRAMES, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(seed))
    return pipe(
        PROMPT,
        num_frames=FRAMES,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        latents=noise,
        output_type="latent",
    ).frames


def _motiontune_latents(backbone, methods, seed: int) -> torch.Tensor:
    settings = GenerationConfig(FRAMES, SIZE, SIZE, STEPS, 7.5, seed=seed, progress=False)
    return generate_latents(backbone, [PROMPT], methods, settings, check_prompts=False)


def test_a_lora_export_loads_in_the_animatediff_pipeline_and_matches(tiny_animatediff_dir, tmp_path):
    backbone = open_backbone(tiny_animatediff_dir, "cpu")
    method = create_method("motiondirector", backbone, {"lora_rank": 4}, token="sks")
    method.prepare_for_training()
    _randomised(method, seed=1)
    adapter = _saved(method, tmp_path / "md.safetensors")
    exported = tmp_path / "md-diffusers.safetensors"
    assert main(["export", str(adapter), "--format", "diffusers-lora", "--output", str(exported)]) == 0
    tensors, _ = read_adapter(adapter)
    from safetensors.torch import load_file

    lora = load_file(exported)
    assert set(lora) == set(tensors)
    assert all(torch.equal(lora[key], tensors[key]) for key in lora)

    pipe = AnimateDiffPipeline.from_pretrained(tiny_animatediff_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(exported))
    latents, timestep, text = _denoiser_inputs(backbone)
    with torch.no_grad():
        ours = backbone.predict_noise(latents, timestep, text)
        theirs = pipe.unet(latents, timestep, encoder_hidden_states=text.repeat_interleave(FRAMES, 0)).sample
        base = open_backbone(tiny_animatediff_dir, "cpu").predict_noise(latents, timestep, text)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    assert (ours - base).abs().max() > 1e-3  # the LoRA changes the output: the comparison can fail

    # the whole generation: same initial noise, DDIM steps and guidance in both
    fresh = open_backbone(tiny_animatediff_dir, "cpu")
    loaded = load_adapter(adapter, fresh)
    torch.testing.assert_close(
        _pipeline_latents(pipe, seed=5), _motiontune_latents(fresh, [loaded], 5), atol=1e-4, rtol=1e-4
    )


def test_a_newmove_motion_module_fine_tune_exports_as_a_motion_adapter(tiny_animatediff_dir, tmp_path):
    backbone = open_backbone(tiny_animatediff_dir, "cpu")
    method = create_method("newmove", backbone, {"spatial": "none", "train_token": False}, token="sks")
    method.prepare_for_training()
    _randomised(method, seed=2)
    adapter = _saved(method, tmp_path / "newmove.safetensors")
    folder = tmp_path / "motion-adapter"
    args = ["export", str(adapter), "--format", "motion-adapter", "--output", str(folder)]
    assert main([*args, "--model", str(tiny_animatediff_dir)]) == 0
    motion_adapter = MotionAdapter.from_pretrained(folder)

    pipe = AnimateDiffPipeline.from_pretrained(tiny_animatediff_dir, motion_adapter=motion_adapter)
    pipe.unet.load_motion_modules(motion_adapter)
    pipe.set_progress_bar_config(disable=True)
    fresh = open_backbone(tiny_animatediff_dir, "cpu")
    loaded = load_adapter(adapter, fresh)
    latents, timestep, text = _denoiser_inputs(fresh)
    with torch.no_grad():
        ours = fresh.predict_noise(latents, timestep, text)
        theirs = pipe.unet(latents, timestep, encoder_hidden_states=text.repeat_interleave(FRAMES, 0)).sample
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        _pipeline_latents(pipe, seed=6), _motiontune_latents(fresh, [loaded], 6), atol=1e-4, rtol=1e-4
    )


def test_exports_that_would_lose_weights_are_refused_in_one_line(tiny_animatediff_dir, tmp_path, capsys):
    backbone = open_backbone(tiny_animatediff_dir, "cpu")
    method = create_method("newmove", backbone, {"spatial": "kv", "train_token": False}, token="sks")
    method.prepare_for_training()
    adapter = _saved(method, tmp_path / "kv.safetensors")
    model = ["--model", str(tiny_animatediff_dir)]
    folder = tmp_path / "out"
    assert main(["export", str(adapter), "--format", "motion-adapter", "--output", str(folder), *model]) == 2
    assert "outside the temporal layers" in error_line(capsys) and not folder.exists()
    assert (
        main(["export", str(adapter), "--format", "diffusers-lora", "--output", str(tmp_path / "x.safetensors")]) == 2
    )
    assert "holds no LoRA factors" in error_line(capsys)
    lora = create_method("motiondirector", open_backbone(tiny_animatediff_dir, "cpu"), {"lora_rank": 4})
    lora.prepare_for_training()
    lora_file = _saved(lora, tmp_path / "md.safetensors")
    assert main(["export", str(lora_file), "--format", "motion-adapter", "--output", str(folder), *model]) == 2
    assert "needs full weights" in error_line(capsys)
    token = create_method("motiondirector", open_backbone(tiny_animatediff_dir, "cpu"), {"train_token": True}, "sks")
    token.prepare_for_training()
    token_file = _saved(token, tmp_path / "token.safetensors")
    done = tmp_path / "done.safetensors"
    assert main(["export", str(token_file), "--format", "diffusers-lora", "--output", str(done)]) == 0
    assert "trained token embedding is not in the export" in capsys.readouterr().err
    before = done.read_bytes()
    assert main(["export", str(token_file), "--format", "diffusers-lora", "--output", str(done)]) == 2
    assert "--overwrite" in error_line(capsys) and done.read_bytes() == before


# --- Wan: diffusers and ComfyUI LoRA layouts, one file per expert ------------------------------


def _wan_generation(model_dir, pipe, methods, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """motiontune's and the pipeline's latents for the same noise, prompt, UniPC steps and guidance."""
    backbone = methods[0].backbone if methods else open_backbone(model_dir, "cpu")
    settings = GenerationConfig(5, 32, 32, 3, 5.0, seed=seed, sampler="unipc", progress=False)
    ours = generate_latents(backbone, [PROMPT], methods, settings, check_prompts=False)
    noise = torch.randn(ours.shape, generator=torch.Generator().manual_seed(seed))
    theirs = wan_pipeline_latents(
        pipe, noise, prompt=PROMPT, negative_prompt="", max_sequence_length=backbone.tokenizer.model_max_length
    )
    return ours, theirs


@pytest.mark.parametrize("layout", ["diffusers-lora", "comfyui-lora"])
@pytest.mark.parametrize("folder", ["tiny_wan_dir", "tiny_wan22_dir"])
def test_a_wan_lora_export_loads_in_the_wan_pipeline_and_matches(folder, layout, request, tmp_path, capsys):
    from diffusers import WanPipeline
    from safetensors.torch import load_file

    model_dir = request.getfixturevalue(folder)
    backbone = open_backbone(model_dir, "cpu")
    method = create_method("motiondirector", backbone, {"lora_rank": 4}, token="sks")
    method.prepare_for_training()
    _randomised(method, seed=1)
    adapter = _saved(method, tmp_path / "md.safetensors")
    exported = tmp_path / "md-export.safetensors"
    assert main(["export", str(adapter), "--format", layout, "--output", str(exported)]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    two_experts = folder == "tiny_wan22_dir"
    expected = [exported.with_name(f"md-export-{part}.safetensors") for part in ("high_noise", "low_noise")]
    assert written == (expected if two_experts else [exported])
    prefix = "diffusion_model.blocks.0.self_attn.q" if layout == "comfyui-lora" else "transformer.blocks.0.attn1.to_q"
    files = [load_file(path) for path in written]
    assert all(f"{prefix}.lora_A.weight" in lora and f"{prefix}.lora_B.weight" in lora for lora in files)
    assert sum(len(lora) for lora in files) == len(method.adapter_tensors())

    pipe = WanPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    base, _ = _wan_generation(model_dir, pipe, [])
    pipe.load_lora_weights(str(written[0]))
    if two_experts:
        pipe.load_lora_weights(str(written[1]), load_into_transformer_2=True)
    ours, theirs = _wan_generation(model_dir, pipe, [method])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (ours - base).abs().max() > 1e-3


def test_wan_exports_that_cannot_be_a_lora_say_so(tiny_wan_dir, tiny_model_dir, tmp_path, capsys):
    wan = open_backbone(tiny_wan_dir, "cpu")
    inversion = create_method("motion-inversion", wan, {}, token="sks")
    inversion.bind_training_shape(torch.Size([4, 2, 4, 4]))
    inversion.prepare_for_training()
    adapter = _saved(inversion, tmp_path / "mi.safetensors")
    assert main(["export", str(adapter), "--format", "comfyui-lora", "--output", str(tmp_path / "x.safetensors")]) == 2
    assert "holds no LoRA factors to export as comfyui-lora; its weights load only in motiontune" in error_line(capsys)
    unet = open_backbone(tiny_model_dir, "cpu")
    director = create_method("motiondirector", unet, {"lora_rank": 4}, token="sks")
    director.prepare_for_training()
    lora = _saved(director, tmp_path / "md.safetensors")
    assert main(["export", str(lora), "--format", "comfyui-lora", "--output", str(tmp_path / "y.safetensors")]) == 2
    assert "a unet3d LoRA has no comfyui layout (this family's: diffusers)" in error_line(capsys)
