"""Wan: the contract on a diffusion transformer with full 3D attention, flow matching and a causal video autoencoder,
checked against diffusers' own `WanPipeline` and `WanImageToVideoPipeline`; the 3D-attention mappings computed by
hand; two experts; bf16 weights. Every method, the controls and composition on Wan: test_end_to_end.py."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanPipeline

from cli_helpers import error_line
from motiontune.app import api
from motiontune.app.cli import main
from motiontune.attention import TemporalEmbedding, rotate
from motiontune.control import MotionScript, SubjectPath, control_hooks, sampling_timesteps
from motiontune.errors import ConfigError
from motiontune.generation import GenerationConfig, generate_latents
from motiontune.io.adapters import read_adapter
from motiontune.io.video import read_image
from motiontune.methods import METHODS, create_method
from motiontune.sampling import invert, make_scheduler, sample
from pipeline_helpers import wan_pipeline_latents

pytestmark = pytest.mark.usefixtures("single_thread")
SHAPE = ["--frames", "5", "--height", "32", "--width", "32"]
TRAINED = [name for name, cls in METHODS.items() if not cls.internal]


@pytest.fixture
def wan(tiny_wan_dir):
    torch.manual_seed(0)
    return api.open_backbone(tiny_wan_dir, "cpu")


@pytest.fixture
def wan22(tiny_wan22_dir):
    torch.manual_seed(0)
    return api.open_backbone(tiny_wan22_dir, "cpu")


# --- the folder and the contract ------------------------------------------------------------


def test_the_folder_is_a_wan_pipeline_and_the_geometry_follows_its_autoencoder(wan, tiny_wan_dir):
    pipe = WanPipeline.from_pretrained(tiny_wan_dir)
    assert pipe.transformer_2 is None and pipe.config.boundary_ratio is None
    assert wan.name == "wan" and wan.noise_process.shift == 3.0
    assert [wan.latent_frames(n) for n in (1, 5, 9, 81)] == [1, 2, 3, 21]
    assert [wan.pixel_frames(n) for n in (1, 2, 21)] == [1, 5, 81]
    assert wan.pixel_multiple == 16 and wan.grid_at_level((8, 12), 0) == (4, 6)
    with pytest.raises(ConfigError, match=r"takes 4k\+1 frames \(1, 5, 9, \.\.\.\); got 8: use 5 or 9"):
        wan.latent_frames(8)


def test_a_wan_folder_without_motiontune_json_gets_wan_pipeline_defaults(tiny_wan_dir, tmp_path):
    import shutil

    from motiontune.settings import ModelDefaults, generation_settings, training_settings

    folder = tmp_path / "wan"
    shutil.copytree(tiny_wan_dir, folder)
    (folder / "motiontune.json").unlink()
    defaults = ModelDefaults.read(folder)
    trained = training_settings("newmove", {}, defaults, {})
    assert [trained[key].value for key in ("frames", "height", "width")] == [81, 480, 832]
    assert trained["frames"].source == "WanPipeline defaults"
    sampling = generation_settings(defaults, {})
    assert (sampling["steps"].value, sampling["guidance_scale"].value) == (50, 5.0)
    stated = training_settings("newmove", {}, ModelDefaults.read(tiny_wan_dir), {})
    assert stated["frames"].value == 9 and stated["frames"].source.startswith("model (")


def test_text_has_no_start_token_and_is_zero_past_the_prompt(wan):
    prompt = "a red sks square"
    ids = wan.tokenize([prompt])[0].tolist()
    words = wan.word_positions(prompt)
    assert words == [0, 1, 2, 3] and ids[4] == wan.tokenizer.eos_token_id
    assert wan.phrase_positions(prompt, "sks square") == [2, 3]
    text = wan.encode_prompt([prompt])
    assert text.shape == (1, wan.tokenizer.model_max_length, 32)
    assert text[0, 5:].abs().max() == 0 and text[0, :5].abs().min() > 0


def test_generation_matches_diffusers_wan_pipeline(wan, tiny_wan_dir):
    """The same noise, prompt, sampler (the folder's UniPC on flow sigmas), steps and guidance give what
    `WanPipeline` gives: motiontune's sampling loop, text encoding and guidance are Wan's."""
    settings = GenerationConfig(
        frames=5, height=32, width=32, steps=3, guidance_scale=5.0, sampler="unipc", seed=3, progress=False
    )
    ours = generate_latents(wan, ["a red circle moving right"], settings=settings)
    noise = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3))
    pipe = WanPipeline.from_pretrained(tiny_wan_dir)
    theirs = wan_pipeline_latents(
        pipe,
        noise,
        prompt="a red circle moving right",
        negative_prompt="",
        max_sequence_length=wan.tokenizer.model_max_length,
    )
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_the_autoencoder_round_trip_normalises_as_the_pipeline_does(wan):
    pixels = torch.rand(1, 9, 3, 32, 32) * 2 - 1
    latents = wan.encode_video(pixels)
    assert latents.shape == (1, 4, 3, 4, 4)
    decoded = wan.decode_latents(latents)
    assert decoded.shape == pixels.shape and decoded.abs().max() <= 1
    with pytest.raises(ConfigError, match="got 8"):
        wan.encode_video(pixels[:, :8])


def test_flow_inversion_comes_back_closer_with_more_steps(wan):
    """The flow ODE run forward in s (Euler) and back (the Euler sampler): the error falls with the step count."""
    with torch.no_grad():
        wan.denoiser.proj_out.weight.mul_(0.1)
        wan.denoiser.proj_out.bias.mul_(0.1)
    x0 = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5
    uncond = wan.encode_prompt([""])
    errors = []
    for steps in (4, 32):
        inverted = invert(wan, x0, uncond, steps, progress=False)
        back = sample(wan, inverted, uncond, None, make_scheduler(wan, "flow-euler"), steps, 1.0, progress=False)
        errors.append((back - x0).abs().mean().item())
    assert errors[1] < 0.5 * errors[0]


def test_samplers_are_the_flow_matching_ones(wan):
    assert wan.noise_process.default_sampler == "unipc"  # the folder's own, as WanPipeline samples
    assert make_scheduler(wan).config.use_flow_sigmas and make_scheduler(wan).config.flow_shift == 3.0
    assert type(make_scheduler(wan, "flow-euler")).__name__ == "FlowMatchEulerDiscreteScheduler"
    with pytest.raises(ConfigError, match=r"unknown sampler 'ddim' for this model .*flow-euler, unipc"):
        make_scheduler(wan, "ddim")


# --- 3D attention, by hand ------------------------------------------------------------------


def _attention_inputs(wan, frames=3, hw=(8, 8)):
    latents = torch.randn(1, 4, frames, *hw, generator=torch.Generator().manual_seed(0))
    return latents, wan.encode_prompt(["a red sks square"])


def test_temporal_maps_are_the_3d_attention_restricted_to_each_position_and_renormalised(wan):
    latents, text = _attention_inputs(wan)
    site = "blocks.0.attn1"
    attn = wan.denoiser.get_submodule(site)
    inputs = {}
    attn.register_forward_pre_hook(lambda module, args: inputs.update(hidden=args[0], rotary=args[3]))
    with wan.controller.record(lambda s: s.name == site) as maps:
        wan.predict_noise(latents, torch.tensor(400), text)
    recorded = maps[site]  # (B, h, w, heads, F, F)
    hidden, (cos, sin) = inputs["hidden"], inputs["rotary"]
    q = rotate(attn.norm_q(attn.to_q(hidden)).unflatten(2, (attn.heads, -1)), cos, sin)
    k = rotate(attn.norm_k(attn.to_k(hidden)).unflatten(2, (attn.heads, -1)), cos, sin)
    full = torch.einsum("bnhd,bmhd->bhnm", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)  # (B, heads, N, N)
    frames, cells = 3, 16
    same_position = full.view(1, attn.heads, frames, cells, frames, cells).diagonal(dim1=3, dim2=5)
    expected = same_position / same_position.sum(-2, keepdim=True)  # (B, heads, F, G, P), over G
    expected = expected.permute(0, 4, 1, 2, 3).reshape(1, 4, 4, attn.heads, frames, frames)
    torch.testing.assert_close(recorded, expected, atol=1e-5, rtol=1e-4)


def test_motion_inversion_embeddings_enter_before_the_projections_with_rotary_kept(wan):
    """Q = R(norm(Wq(x + m_qk[f]))), K likewise, V = Wv(x + m_v[f, p]): computed by hand for one block."""
    latents, text = _attention_inputs(wan)
    site = "blocks.1.attn1"
    attn = wan.denoiser.get_submodule(site)
    channels = attn.to_q.in_features
    embedding = TemporalEmbedding(channels, 4, value_grid=(4, 4))
    with torch.no_grad():
        embedding.query_key.normal_()
        embedding.value.normal_()
    captured = {}
    attn.register_forward_hook(lambda module, args, output: captured.update(args=args, output=output))
    wan.controller.embeddings[site] = embedding
    wan.predict_noise(latents, torch.tensor(400), text)
    hidden, rotary = captured["args"][0], captured["args"][3]
    per_token = embedding.query_key[:, :3].repeat_interleave(16, 1)
    value_rows = embedding.value[:, :3].transpose(0, 1).reshape(1, 48, channels)
    q = rotate(attn.norm_q(attn.to_q(hidden + per_token)).unflatten(2, (attn.heads, -1)), *rotary)
    k = rotate(attn.norm_k(attn.to_k(hidden + per_token)).unflatten(2, (attn.heads, -1)), *rotary)
    v = attn.to_v(hidden + value_rows).unflatten(2, (attn.heads, -1))
    probs = torch.einsum("bnhd,bmhd->bhnm", q, k).mul(q.shape[-1] ** -0.5).softmax(-1)
    expected = attn.to_out[0](torch.einsum("bhnm,bmhd->bnhd", probs, v).flatten(2))
    torch.testing.assert_close(captured["output"], expected, atol=1e-5, rtol=1e-4)


def test_the_controlled_path_equals_the_pipeline_processor(wan):
    latents, text = _attention_inputs(wan)
    fast = wan.predict_noise(latents, torch.tensor(400), text)
    with wan.controller.explicit_attention():
        explicit = wan.predict_noise(latents, torch.tensor(400), text)
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-4)


def test_boxes_given_per_pixel_frame_land_on_latent_frames(wan):
    """9 pixel frames are 3 latent frames: a box path spread over the video gives latent frame k the box at its
    time, k / 2 of the way."""
    script = MotionScript(
        prompt="a red circle moving right",
        subjects=(SubjectPath("circle", ((0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5))),),
    )
    hooks = control_hooks(wan, script, 9, sampling_timesteps(wan, None, 4))
    boxes = hooks[0].edit.subjects[0].boxes
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5], [0.5, 0, 1.0, 0.5]]))
    assert hooks[0].edit.word_positions == [0, 1, 2, 3, 4]


def test_deep_features_come_from_the_middle_blocks(wan):
    """MotionMatcher and MotionBooth read the middle of the network; MotionMatcher's feature pass stops after the
    middle block (block 1 of 2 never runs)."""
    matcher = create_method("motionmatcher", wan, {})
    booth = create_method("motionbooth", wan, {"class_word": "star"}, token="sks")
    assert matcher.feature_level == booth.attention_level == 0
    matcher.prepare_for_training()
    ran = []
    wan.denoiser.blocks[1].register_forward_hook(lambda *_: ran.append("blocks.1"))
    latents, text = _attention_inputs(wan)
    cross, temporal = matcher.motion_features(latents, torch.tensor([400]), text)
    assert ran == [] and cross.shape == (1, 3, 16, text.shape[1]) and temporal.shape == (1, 16, 3, 3)


# --- two experts -----------------------------------------------------------------------------


def test_two_experts_split_a_batch_by_noise_level_and_put_maps_back_together(wan22):
    """Rows above noise level 0.875 go to `transformer`, the rest to `transformer_2`; a mixed batch gives each row
    what a call of that row alone gives, outputs and recorded maps alike."""
    assert wan22.denoiser.boundary == 0.875 and len(wan22.site_modules("blocks.0.attn1")) == 2
    latents = torch.randn(2, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    text = wan22.encode_prompt(["a red circle", "a blue square"])
    timesteps = torch.tensor([950, 300])
    sites = lambda s: s.kind in ("cross", "temporal")  # noqa: E731
    with wan22.controller.record(sites) as maps:
        both = wan22.predict_noise(latents, timesteps, text)
    for row in range(2):
        with wan22.controller.record(sites) as alone:
            single = wan22.predict_noise(latents[row : row + 1], timesteps[row : row + 1], text[row : row + 1])
        torch.testing.assert_close(both[row : row + 1], single, atol=1e-5, rtol=1e-4)
        for name in alone:
            torch.testing.assert_close(maps[name][row : row + 1], alone[name], atol=1e-5, rtol=1e-4)
    high = wan22.denoiser.experts["high"](latents[:1], timesteps[:1].float(), text[:1], return_dict=False)[0]
    torch.testing.assert_close(both[:1], high, atol=1e-5, rtol=1e-4)


def test_a_method_trains_each_expert_on_its_own_noise_levels(wan22, tiny_wan22_dir, motion_data, tmp_path):
    result = api.train(
        "motiondirector",
        motion_data,
        tmp_path / "md",
        model=tiny_wan22_dir,
        token="sks",
        steps=12,
        batch_size=2,
        frames=5,
        height=32,
        width=32,
        learning_rate=1e-2,
        progress=False,
    )
    tensors, metadata = read_adapter(result.adapter)
    experts = {key.split(".")[2] for key in tensors}
    assert experts == {"high", "low"} and metadata["backbone"] == "wan"
    moved = {
        e for e in experts if any(t.abs().sum() > 0 for k, t in tensors.items() if f".{e}." in k and "lora_B" in k)
    }
    assert moved == {"high", "low"}


# --- every method, through the CLI -----------------------------------------------------------


def test_a_frame_count_the_autoencoder_cannot_take_is_one_line(tiny_wan_dir, motion_data, tmp_path, capsys):
    args = ["train", "--method", "newmove", "--model", str(tiny_wan_dir), "--data", str(motion_data)]
    args += ["--output", str(tmp_path / "run"), "--token", "sks", "--steps", "1", "--quiet"]
    assert main([*args, "--frames", "8", "--height", "32", "--width", "32"]) == 2
    assert "takes 4k+1 frames (1, 5, 9, ...); got 8: use 5 or 9" in error_line(capsys)
    assert not (tmp_path / "run").exists()
    assert main([*args, "--frames", "5", "--height", "40", "--width", "32"]) == 2
    assert "--height/--width must be multiples of 16, got 40x32" in error_line(capsys)


def test_tiny_model_writes_a_two_expert_wan_folder(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "wan22"), "--architecture", "wan", "--two-experts"]) == 0
    pipe = WanPipeline.from_pretrained(tmp_path / "wan22")
    assert pipe.config.boundary_ratio == 0.875 and pipe.transformer_2 is not None
    assert api.open_backbone(tmp_path / "wan22", "cpu").name == "wan"
    capsys.readouterr()
    assert main(["tiny-model", str(tmp_path / "unet"), "--two-experts"]) == 2
    assert "--two-experts and --image-to-video need --architecture wan" in error_line(capsys)


def test_weights_loaded_in_bf16_train_float32_adapters(tiny_wan_dir, motion_data, tmp_path, capsys):
    """`--weights-dtype bf16`: frozen weights in bf16, trained tensors in float32 under bf16 autocast; the adapter
    loads on the float32 model (same fingerprint) and its bf16 generation is close to the float32 one."""
    from motiontune.io.adapters import read_adapter

    result = api.train(
        "newmove",
        motion_data,
        tmp_path / "nm",
        model=tiny_wan_dir,
        token="sks",
        steps=2,
        frames=5,
        height=32,
        width=32,
        learning_rate=1e-3,
        weights_dtype="bf16",
        progress=False,
    )
    tensors, _ = read_adapter(result.adapter)
    assert {tensor.dtype for tensor in tensors.values()} == {torch.float32}
    videos = {
        dtype: api.generate_video(
            "a red circle doing sks",
            tmp_path / f"{dtype}.mp4",
            model=tiny_wan_dir,
            adapters=[result.adapter],
            steps=2,
            weights_dtype=dtype,
            progress=False,
        ).frames.astype(float)
        for dtype in ("bf16", "fp32")
    }
    assert abs(videos["bf16"] - videos["fp32"]).mean() < 2.0
    capsys.readouterr()
    args = ["train", "--method", "newmove", "--model", str(tiny_wan_dir), "--data", str(motion_data), "--quiet"]
    args += ["--output", str(tmp_path / "no"), "--weights-dtype", "bf16", "--mixed-precision", "no", *SHAPE]
    assert main(args) == 2
    assert "weights loaded in bf16 train under bf16 autocast: --mixed-precision must be auto or bf16" in error_line(
        capsys
    )


# --- image to video --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ti2v_dir(tmp_path_factory):
    from motiontune.lab.tiny import build_tiny_wan

    return build_tiny_wan(tmp_path_factory.mktemp("models") / "tiny-ti2v", image_to_video=True, seed=0)


@pytest.fixture(scope="module")
def start_image(tmp_path_factory):
    from PIL import Image

    from motiontune.lab.shapeworld import Clip, render

    frame = render(Clip("circle", "red", "white", "right"), 1, 32).frames[0]
    path = tmp_path_factory.mktemp("image") / "start.png"
    Image.fromarray(frame).save(path)
    return path


def test_image_to_video_matches_diffusers_wan_image_to_video_pipeline(tiny_ti2v_dir, start_image):
    """A start image on a TI2V-layout folder: the same noise, prompt, UniPC steps and guidance give what
    `WanImageToVideoPipeline` (with `expand_timesteps`) gives, and the first latent frame is the image's."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    backbone = api.open_backbone(tiny_ti2v_dir, "cpu")
    assert backbone.starts_from_image
    settings = GenerationConfig(
        frames=5, height=32, width=32, steps=3, guidance_scale=5.0, seed=3, image=start_image, progress=False
    )
    ours = generate_latents(backbone, ["a red circle moving right"], settings=settings)
    noise = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3))
    pipe = WanImageToVideoPipeline.from_pretrained(tiny_ti2v_dir)
    pipe.set_progress_bar_config(disable=True)
    theirs = wan_pipeline_latents(  # the text as motiontune encodes it (checked against WanPipeline's above): the
        pipe,  # image-to-video pipeline cleans prompts with ftfy, which is not installed here
        noise,
        image=Image.open(start_image),
        prompt_embeds=backbone.encode_prompt(["a red circle moving right"]),
        negative_prompt_embeds=backbone.encode_prompt([""]),
    )
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    image_latent = backbone.encode_video(read_image(start_image, 32, 32)[None, None])
    torch.testing.assert_close(ours[:, :, :1], image_latent)


def test_a_learned_motion_animates_a_start_image_through_the_cli(
    tiny_ti2v_dir, start_image, motion_data, tmp_path, capsys
):
    output = tmp_path / "md"
    args = ["train", "--method", "motiondirector", "--model", str(tiny_ti2v_dir), "--data", str(motion_data)]
    assert main([*args, "--output", str(output), "--token", "sks", "--steps", "2", *SHAPE, "--quiet"]) == 0
    video = tmp_path / "animated.mp4"
    generate = ["generate", "--model", str(tiny_ti2v_dir), "--adapter", str(output / "adapter.safetensors")]
    generate += ["--prompt", "a red circle doing sks", "--image", str(start_image), "--steps", "2", "--quiet"]
    assert main([*generate, "--output", str(video)]) == 0
    assert video.stat().st_size > 0
    capsys.readouterr()


def test_a_start_image_on_a_text_to_video_model_is_one_line(tiny_wan_dir, start_image, tmp_path, capsys):
    generate = ["generate", "--model", str(tiny_wan_dir), "--prompt", "a red circle", "--steps", "1", "--quiet"]
    assert main([*generate, "--image", str(start_image), "--output", str(tmp_path / "a.mp4")]) == 2
    assert "this model was not trained to start from an image" in error_line(capsys)
    assert main([*generate, "--image", str(tmp_path / "missing.png"), "--output", str(tmp_path / "b.mp4")]) == 2
    assert "--image" in error_line(capsys) and not (tmp_path / "b.mp4").exists()
