"""The ShapeWorld base-model recipe (smoke size) and the pre-training method it uses."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import DDPMScheduler

from motiontune.app.api import generate, open_backbone
from motiontune.app.cli import main
from motiontune.diffusion import DiscreteDiffusion
from motiontune.errors import ConfigError
from motiontune.lab.shapeworld import KNOWN_MOTIONS, PATH_PREFIX, path_keyframes
from motiontune.lab.worldmodel import (
    BaseModelConfig,
    build_base_model,
    decoder_clips,
    evaluate_base_model,
    set_noise_schedule,
    training_clips,
    unknown_word_texts,
)
from motiontune.methods import create_method
from motiontune.sampling import make_scheduler


@pytest.fixture
def backbone(unet3d_backbone):
    """The tiny UNet3D only: the ShapeWorld base model is a UNet3D."""
    return unet3d_backbone


SMOKE = {
    "clips": 12,
    "vae_steps": 3,
    "vae_batch": 8,
    "denoiser_steps": 2,
    "batch_size": 4,
    "checkpoint_every": 1,
    "vae": {"block_out_channels": [8, 16, 16], "latent_channels": 8, "norm_num_groups": 8},
    "denoiser": {
        "block_out_channels": [16, 32],
        "down_block_types": ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D"],
        "up_block_types": ["CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    "text_hidden_size": 32,
}


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    output = tmp_path_factory.mktemp("base")
    summary = build_base_model(BaseModelConfig(**SMOKE), output, progress=False)
    return output, summary


def test_recipe_writes_a_loadable_model_with_its_native_size(smoke_model, tmp_path):
    output, summary = smoke_model
    model = output / "model"
    assert json.loads((model / "motiontune.json").read_text())["native"] == {"frames": 8, "height": 32, "width": 32}
    assert json.loads((model / "recipe.json").read_text())["config"]["clips"] == 12
    backbone = open_backbone(model, "cpu")
    assert backbone.vae_scale_factor == 4 and backbone.latent_channels == 8
    assert summary["latent_normalisation"] == pytest.approx(backbone.vae.config.scaling_factor)
    paths = generate("a red circle moving left on a white background", tmp_path / "v.mp4", model=model, steps=2)
    from PIL import Image

    with Image.open(paths["gif"]) as gif:
        assert gif.size == (32, 32) and gif.n_frames >= 2
    assert (output / "unet-training" / "checkpoints" / "step-000002").is_dir()


def test_recipe_resumes_without_retraining_the_autoencoder(smoke_model):
    output, _ = smoke_model
    vae_before = (output / "stages" / "autoencoded" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    summary = build_base_model(BaseModelConfig(**SMOKE), output, progress=False, resume=True)
    assert "autoencoder_loss" not in summary
    vae_after = (output / "stages" / "autoencoded" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert vae_before == vae_after


def test_evaluation_reports_accuracies(smoke_model):
    output, _ = smoke_model
    summary = evaluate_base_model(output / "model", prompts=2, seeds=1, steps=2, progress=False)
    assert summary["samples"] == 2
    for key in ("colour_accuracy", "shape_accuracy", "background_accuracy", "motion_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    assert 0.0 <= summary["novel_motion_produced"] <= 1.0


def test_autoencoder_evaluation_scores_reconstructions_from_the_command_line(smoke_model, capsys, tmp_path):
    """`world evaluate --autoencoder` on the recipe's autoencoder stage (no recipe.json there: the native clip
    comes from its motiontune.json), on the model, and on the last autoencoder checkpoint of the training (the
    same weights as the stage: the same scores); an untrained 3-step autoencoder is far from its input."""
    output, _ = smoke_model
    checkpoint = output / "stages" / "autoencoder-training" / "latest"
    summaries = []
    for model in (output / "stages" / "autoencoded", output / "model", checkpoint):
        assert main(["world", "evaluate", "--autoencoder", "--model", str(model), "--prompts", "2", "--quiet"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["clips"] == 2 and set(summary) >= {"colour_accuracy", "shape_accuracy", "motion_accuracy"}
        assert summary["mse"] > 0.01 and summary["object_mse"] > 0 and summary["background_mse"] > 0
        assert 0 <= summary["outside_share"] <= 1
        summaries.append(summary)
    assert summaries[2]["mse"] == pytest.approx(summaries[0]["mse"], rel=1e-4)
    sheet = tmp_path / "reconstructions.png"
    arguments = ["world", "evaluate", "--autoencoder", "--model", str(output / "model"), "--prompts", "3"]
    assert main([*arguments, "--sheet", str(sheet), "--quiet"]) == 0
    capsys.readouterr()
    one_clip = tmp_path / "one.png"
    assert main([*arguments[:-1], "1", "--sheet", str(one_clip), "--quiet"]) == 0
    capsys.readouterr()
    from PIL import Image

    with Image.open(sheet) as three, Image.open(one_clip) as one:
        assert three.width == one.width and three.height == pytest.approx(3 * one.height, rel=0.05)
    alone = tmp_path / "moved" / "latest"
    shutil.copytree(checkpoint, alone)
    assert main(["world", "evaluate", "--autoencoder", "--model", str(alone), "--quiet"]) == 2
    assert "an autoencoder checkpoint without its recipe's" in capsys.readouterr().err


def test_zero_terminal_snr_recipe_trains_and_samples_from_pure_noise(smoke_model):
    """Lin et al. 2024: the last training timestep keeps none of the clean latent, and sampling starts there."""
    output, _ = smoke_model
    backbone = open_backbone(output / "model", "cpu")
    method = create_method("pretrain", backbone)
    assert method.diffusion.alphas_cumprod[999] == 0
    clean, noise = torch.randn(1, 8, 2, 4, 4), torch.randn(1, 8, 2, 4, 4)
    at_the_end = torch.tensor([999])
    assert torch.equal(method.diffusion.add_noise(clean, noise, at_the_end), noise)
    torch.testing.assert_close(method.diffusion.target(clean, noise, at_the_end), -clean)
    scheduler = make_scheduler(backbone)
    scheduler.set_timesteps(25)
    assert scheduler.timesteps[0] == 999


def test_a_resumed_recipe_switches_the_noise_schedule(smoke_model, tmp_path):
    output, _ = smoke_model
    folder = tmp_path / "model"
    shutil.copytree(output / "model" / "scheduler", folder / "scheduler")
    config_file = folder / "scheduler" / "scheduler_config.json"
    set_noise_schedule(folder, BaseModelConfig(zero_terminal_snr=False))
    old = json.loads(config_file.read_text())
    assert (old["rescale_betas_zero_snr"], old["timestep_spacing"]) == (False, "leading")
    set_noise_schedule(folder, BaseModelConfig(zero_terminal_snr=True))
    new = json.loads(config_file.read_text())
    assert (new["rescale_betas_zero_snr"], new["timestep_spacing"]) == (True, "trailing")
    assert {k: v for k, v in new.items() if k not in ("rescale_betas_zero_snr", "timestep_spacing")} == {
        k: v for k, v in old.items() if k not in ("rescale_betas_zero_snr", "timestep_spacing")
    }
    written = config_file.stat().st_mtime_ns
    set_noise_schedule(folder, BaseModelConfig(zero_terminal_snr=True))
    assert config_file.stat().st_mtime_ns == written


def test_unknown_recipe_keys_are_rejected(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("clips: 3\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: unknown base-model option\(s\) batchsize"):
        BaseModelConfig.from_yaml(recipe)
    recipe.write_text("clips: 3\nbox_edit_rate: 2\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: box_edit_rate must be in \[0, 1\], got 2"):
        BaseModelConfig.from_yaml(recipe)
    with pytest.raises(ConfigError, match="caption_dropout must be in"):
        build_base_model(BaseModelConfig(**SMOKE, caption_dropout=1.0), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_min_snr_weights_match_the_formula(backbone):
    method = create_method("pretrain", backbone, {"snr_gamma": 5.0})
    t = torch.tensor([10, 500, 990])
    alpha = method.diffusion.alphas_cumprod[t]
    snr = alpha / (1 - alpha)
    assert torch.allclose(method.loss_weights(t), torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert torch.equal(create_method("pretrain", backbone, {"snr_gamma": 0.0}).loss_weights(t), torch.ones(3))
    method.diffusion = DiscreteDiffusion(
        DDPMScheduler.from_config(backbone.scheduler.config, rescale_betas_zero_snr=True)
    )
    assert method.loss_weights(torch.tensor([999])).item() == 0.0


def test_caption_dropout_trains_the_unconditional_branch(backbone):
    method = create_method("pretrain", backbone, {"caption_dropout": 0.5})
    latents = torch.randn(64, 4, 2, 8, 8)
    text = backbone.encode_prompt(["a red circle"] * 64)
    seen = []
    original = backbone.predict_noise

    def spy(noisy, timesteps, conditioning, conditional=None):
        seen.append(conditioning)
        return original(noisy, timesteps, conditioning, conditional)

    backbone.predict_noise = spy
    with torch.no_grad():
        method.loss({"latents": latents, "text": text}, torch.Generator().manual_seed(0))
    empty = backbone.encode_prompt([""])[0]
    dropped = sum(torch.equal(row, empty) for row in seen[0])
    assert 16 < dropped < 48


def test_pretraining_trains_and_saves_frame_positions(backbone, tmp_path):
    backbone.add_frame_positions(4)
    method = create_method("pretrain", backbone)
    method.prepare_for_training()
    assert all(p.requires_grad for p in backbone.frame_positions.values())
    assert {id(p) for p in backbone.frame_positions.values()} <= {id(p) for p in method.trainable_parameters()}
    batch = {"latents": torch.randn(2, 4, 4, 8, 8), "text": backbone.encode_prompt(["a red square"] * 2)}
    method.loss(batch, torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.frame_positions.values())
    tensors = method.adapter_tensors()
    positions = {k: v for k, v in tensors.items() if k.startswith("frame_positions.")}
    assert len(positions) == len(backbone.frame_positions)
    with torch.no_grad():
        for p in backbone.frame_positions.values():
            p.fill_(3.0)
    method.load_adapter_tensors(tensors, "ckpt.safetensors")
    assert all(torch.equal(p, torch.zeros_like(p)) for p in backbone.frame_positions.values())
    missing = {k: v for k, v in tensors.items() if not k.startswith("frame_positions.")}
    with pytest.raises(ConfigError, match=r"ckpt\.safetensors: missing adapter tensor 'frame_positions"):
        method.load_adapter_tensors(missing, "ckpt.safetensors")


def test_the_recipe_ships_frame_positions_and_init_goes_on_from_a_model(smoke_model, tmp_path):
    output, _ = smoke_model
    model = output / "model"
    assert (model / "frame_positions.safetensors").exists()
    first = open_backbone(model, "cpu")
    assert first.frame_positions and all(p.shape[1] == 8 for p in first.frame_positions.values())
    summary = build_base_model(
        BaseModelConfig(**SMOKE, box_edit_rate=0.5), tmp_path / "again", progress=False, init=model
    )
    assert "autoencoder_loss" not in summary
    assert summary["initialised_from"]["path"] == str(model)
    assert summary["initialised_from"]["recipe"]["config"]["clips"] == 12
    again = tmp_path / "again" / "model"
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert (again / vae).read_bytes() == (model / vae).read_bytes()
    with pytest.raises(ConfigError, match="--init must be a model folder"):
        build_base_model(BaseModelConfig(**SMOKE), tmp_path / "bad", progress=False, init=tmp_path)


def test_box_edit_rate_denoises_clips_under_the_box_edit_at_their_own_boxes(backbone):
    """Rate 1, no caption dropout: every row's subject words are attended inside its own box only, amplified
    where its timestep is above tau; rate 0 leaves the loss as it was."""
    caption = "a red square moving right"
    frames = 2
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5]] * frames, [[0.5, 0.5, 1.0, 1.0]] * frames])
    batch = {
        "latents": torch.randn(2, 4, frames, 8, 8, generator=torch.Generator().manual_seed(0)),
        "text": backbone.encode_prompt([caption] * 2),
        "captions": [caption] * 2,
        "boxes": boxes,
        "subjects": ["red square"] * 2,
    }
    method = create_method("pretrain", backbone, {"caption_dropout": 0.0, "box_edit_rate": 1.0})
    method.prepare_for_training()
    positions = backbone.phrase_positions(caption, "red square")
    edits = method.box_edits(batch, torch.tensor([True, False]), torch.tensor([900, 100]))
    assert edits.edits[1] is None
    first = edits.edits[0]
    assert first.amplify and first.suppress_other_words and first.subjects[0].token_positions == positions
    assert torch.equal(first.subjects[0].boxes, boxes[0])
    assert not method.box_edits(batch, torch.tensor([True, True]), torch.tensor([900, 600])).edits[1].amplify

    site = next(s.name for s in backbone.sites if s.kind == "cross" and s.level == 0)
    with torch.no_grad(), backbone.controller.record(lambda s: s.name == site) as maps:
        method.loss(batch, torch.Generator().manual_seed(0))
    heads = backbone.denoiser.get_submodule(site).heads
    share = maps[site].view(2, frames, heads, 8, 8, -1)[..., positions].sum(-1)
    outside = torch.ones(2, 8, 8, dtype=torch.bool)
    outside[0, :4, :4] = outside[1, 4:, 4:] = False
    assert torch.all(share.masked_select(outside[:, None, None]) == 0)
    assert torch.all(share[0, :, :, :4, :4] > 0) and torch.all(share[1, :, :, 4:, 4:] > 0)

    plain = create_method("pretrain", backbone, {"caption_dropout": 0.0})
    unedited = create_method("pretrain", backbone, {"caption_dropout": 0.0, "box_edit_rate": 0.0})
    with torch.no_grad():
        assert torch.equal(
            plain.loss(batch, torch.Generator().manual_seed(1)), unedited.loss(batch, torch.Generator().manual_seed(1))
        )
    del batch["boxes"]
    with pytest.raises(ConfigError, match="needs training clips with per-frame boxes and subject words"):
        method.loss(batch, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"box_edit_rate must be in \[0, 1\]"):
        create_method("pretrain", backbone, {"box_edit_rate": 1.5})


def test_box_edit_pre_training_under_gradient_checkpointing_gives_the_same_gradients(backbone):
    """The recompute in backward runs with the rows' box edits as the forward had them (`Backbone.checkpointed`)."""
    caption = "a red square moving right"
    batch = {
        "latents": torch.randn(2, 4, 2, 8, 8, generator=torch.Generator().manual_seed(0)),
        "text": backbone.encode_prompt([caption] * 2),
        "captions": [caption] * 2,
        "boxes": torch.tensor([[[0.0, 0.0, 0.5, 0.5]] * 2, [[0.5, 0.5, 1.0, 1.0]] * 2]),
        "subjects": ["red square"] * 2,
    }
    method = create_method("pretrain", backbone, {"caption_dropout": 0.0, "box_edit_rate": 1.0})
    method.prepare_for_training()
    trained = [p for p in backbone.denoiser.parameters() if p.requires_grad]

    def gradients():
        method.loss(batch, torch.Generator().manual_seed(0)).backward()
        grads = [p.grad.clone() for p in trained]
        backbone.denoiser.zero_grad(set_to_none=True)
        return grads

    plain = gradients()
    backbone.enable_gradient_checkpointing()
    for a, b in zip(plain, gradients(), strict=True):
        torch.testing.assert_close(a, b)


WAN_SMOKE = {
    "architecture": "wan",
    "clips": 8,
    "vae_steps": 2,
    "vae_batch": 2,
    "denoiser_steps": 2,
    "batch_size": 4,
    "checkpoint_every": 1,
    "vae": {"base_dim": 8},
    "denoiser": {"num_layers": 2, "ffn_dim": 64},
    "text_hidden_size": 32,
    "box_edit_rate": 0.5,
}


def test_wan_recipe_writes_a_wan_pipeline_folder_that_diffusers_samples(tmp_path):
    """The DiT recipe: a causal autoencoder 4x in space and time, per-channel latent statistics, a patch-1
    transformer on 5 latent frames of 8 x 8, flow matching, then the decoder alone on random paths (the encoder,
    so the transformer's latents, unchanged); the folder loads in `WanPipeline` itself."""
    from diffusers import AutoencoderKLWan, WanPipeline

    summary = build_base_model(BaseModelConfig(**WAN_SMOKE, decoder_steps=2), tmp_path, progress=False)
    model = tmp_path / "model"
    staged, exported = (AutoencoderKLWan.from_pretrained(f / "vae") for f in (tmp_path / "stages/autoencoded", model))
    for part, same in (("encoder", True), ("quant_conv", True), ("decoder", False)):
        pairs = zip(getattr(staged, part).parameters(), getattr(exported, part).parameters(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs) is same, part
    assert len(summary["decoder_loss"]) == 2 and (tmp_path / "stages/decoder-training/latest/state.json").is_file()
    assert json.loads((model / "motiontune.json").read_text())["native"] == {"frames": 17, "height": 32, "width": 32}
    assert (tmp_path / "transformer-training" / "checkpoints" / "step-000002").is_dir()
    backbone = open_backbone(model, "cpu")
    assert (backbone.vae_scale_factor, backbone.temporal_factor, backbone.latent_channels) == (4, 4, 16)
    assert backbone.vae.config.latents_std == pytest.approx(summary["latent_normalisation"]["latents_std"])
    latents = backbone.encode_video(torch.rand(1, 17, 3, 32, 32) * 2 - 1)
    assert latents.shape == (1, 16, 5, 8, 8)
    assert not backbone.frame_positions
    pipe = WanPipeline.from_pretrained(model)
    video = pipe(
        "a red circle moving left on a white background",
        num_frames=17,
        height=32,
        width=32,
        num_inference_steps=2,
        max_sequence_length=16,
        output_type="np",
    ).frames
    assert video.shape == (1, 17, 32, 32, 3)
    paths = generate("a red circle moving left on a white background", tmp_path / "v.mp4", model=model, steps=2)
    from PIL import Image

    with Image.open(paths["gif"]) as gif:
        assert gif.size == (32, 32) and gif.n_frames == 17


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"architecture": "dit"}, "architecture must be one of unet3d, wan, got 'dit'"),
        ({"architecture": "wan", "frames": 16}, "frames must be 4k\\+1 for Wan's causal autoencoder, got 16"),
        ({"architecture": "wan", "vae_frames": 4}, "vae_frames must be 4k\\+1"),
        ({"architecture": "wan", "frame_positions": True}, "frame_positions is for UNet3D"),
        ({"architecture": "wan", "zero_terminal_snr": True}, "zero_terminal_snr is for DDPM schedules"),
        ({"decoder_steps": -1}, "decoder_steps must be >= 0"),
        ({"unknown_word_rate": 1.5}, "unknown_word_rate must be in \\[0, 1\\], got 1.5"),
    ],
)
def test_recipe_options_that_do_not_fit_the_architecture_are_refused(tmp_path, options, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in options.items()))
    with pytest.raises(ConfigError, match=f"r\\.yaml: {message}"):
        BaseModelConfig.from_yaml(recipe)


def test_architecture_defaults_fill_what_the_recipe_leaves_out():
    unet3d, wan = BaseModelConfig(), BaseModelConfig(architecture="wan", denoiser={"num_layers": 3})
    assert (unet3d.frames, unet3d.frame_positions, unet3d.zero_terminal_snr) == (8, True, True)
    assert (wan.frames, wan.vae_frames, wan.frame_positions, wan.zero_terminal_snr) == (17, 9, False, False)
    assert wan.denoiser["num_layers"] == 3 and wan.denoiser["patch_size"] == [1, 1, 1]


def test_autoencoder_training_resumes_exactly_where_it_stopped(tmp_path):
    """3 steps straight equal 2 steps, a checkpoint, and 1 resumed step from it (weights, optimizer and generator
    restored); a checkpoint made from a saved autoencoder alone goes on with a fresh optimizer."""
    import numpy as np
    from diffusers import AutoencoderKL

    from motiontune.lab.tiny import TINY_VAE
    from motiontune.lab.worldmodel import train_autoencoder

    clips = np.random.default_rng(0).integers(0, 255, (4, 2, 16, 16, 3), dtype=np.uint8)

    def fresh():
        torch.manual_seed(0)
        return AutoencoderKL(**TINY_VAE)

    def config(steps):
        return BaseModelConfig(vae_steps=steps, vae_batch=2, checkpoint_every=1)

    straight = fresh()
    assert len(train_autoencoder(straight, clips, config(3), False)) == 3
    stopped = fresh()
    train_autoencoder(stopped, clips, config(2), False, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "latest" / "state.json").read_text())["step"] == 2
    resumed = fresh()
    assert len(train_autoencoder(resumed, clips, config(3), False, tmp_path / "ckpt", resume=True)) == 1
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=0)

    (tmp_path / "ckpt" / "latest" / "optimizer.safetensors").unlink()
    again = fresh()
    assert len(train_autoencoder(again, clips, config(4), False, tmp_path / "ckpt", resume=True)) == 1


def test_the_autoencoders_learning_rate_holds_then_falls_along_a_cosine():
    from motiontune.lab.worldmodel import autoencoder_learning_rate

    config = BaseModelConfig(vae_steps=100, vae_learning_rate=0.002, vae_decay_from=60)
    rates = [autoencoder_learning_rate(config, step) for step in (0, 59, 60, 80, 99)]
    assert rates[:3] == [0.002, 0.002, 0.002]
    assert rates[3] == pytest.approx(0.001)  # half-way down the cosine: (1 + cos(pi / 2)) / 2
    assert 0 < rates[4] < 1e-5
    assert autoencoder_learning_rate(BaseModelConfig(vae_steps=100), 99) == BaseModelConfig().vae_learning_rate
    with pytest.raises(ConfigError, match="vae_decay_from must be in"):
        BaseModelConfig(vae_steps=100, vae_decay_from=100)
    with pytest.raises(ConfigError, match="decay_from must be in \\[0, denoiser_steps\\)"):
        BaseModelConfig(denoiser_steps=100, decay_from=100)
    with pytest.raises(ConfigError, match="vae_object_weight must be >= 0"):
        BaseModelConfig(vae_object_weight=-1.0)


def test_object_weights_cover_the_object_and_its_edge():
    """1 + w on a mask grown by one pixel, 1 elsewhere (a hand-drawn one-pixel object)."""
    import numpy as np

    from motiontune.lab.worldmodel import object_weights

    masks = np.zeros((1, 2, 6, 6), bool)
    masks[0, 1, 2, 3] = True
    weights = object_weights(masks, 20.0)
    assert weights.shape == (1, 2, 1, 6, 6)
    assert torch.all(weights[0, 0] == 1)
    expected = torch.ones(6, 6)
    expected[1:4, 2:5] = 21
    torch.testing.assert_close(weights[0, 1, 0], expected)


@pytest.mark.parametrize("kind", ["per-frame", "wan"])
def test_the_autoencoder_learns_from_its_decoders_output_before_the_clamp(kind):
    """What the autoencoder is trained on is the decoder's output before Wan's clamp to [-1, 1]: clamped it is
    what `decode` returns, and latents far out give values past the clamp (which would have no gradient)."""
    from diffusers import AutoencoderKL, AutoencoderKLWan

    from motiontune.lab.tiny import TINY_VAE, TINY_WAN_VAE
    from motiontune.lab.worldmodel import _unclamped_decode

    torch.manual_seed(0)
    if kind == "wan":
        vae, latents = AutoencoderKLWan(**TINY_WAN_VAE), torch.randn(2, 4, 3, 2, 2) * 50
    else:
        vae, latents = AutoencoderKL(**TINY_VAE), torch.randn(2, 4, 4, 4) * 50
    with torch.no_grad():
        raw = _unclamped_decode(vae, latents)
        decoded = vae.decode(latents).sample
    assert raw.shape == decoded.shape
    if kind == "wan":
        assert (raw.abs() > 1).any()
        torch.testing.assert_close(raw.clamp(-1, 1), decoded)
    else:
        torch.testing.assert_close(raw, decoded)


def test_object_weight_zero_is_plain_mse_and_a_weight_changes_the_training():
    """Masks with weight 0 train exactly as no masks; weight 20 trains differently (the loss sees the masks)."""
    import numpy as np
    from diffusers import AutoencoderKL

    from motiontune.lab.tiny import TINY_VAE
    from motiontune.lab.worldmodel import train_autoencoder

    clips = np.random.default_rng(0).integers(0, 255, (4, 2, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((4, 2, 16, 16), bool)
    masks[:, :, 4:8, 4:8] = True

    def trained(weight, with_masks):
        torch.manual_seed(0)
        vae = AutoencoderKL(**TINY_VAE)
        config = BaseModelConfig(vae_steps=2, vae_batch=2, vae_object_weight=weight)
        train_autoencoder(vae, clips, config, False, masks=masks if with_masks else None)
        return vae.state_dict()

    plain, zero, weighted = trained(0.0, False), trained(0.0, True), trained(20.0, True)
    for name, tensor in plain.items():
        torch.testing.assert_close(zero[name], tensor, rtol=0, atol=0)
    assert any(not torch.equal(weighted[name], tensor) for name, tensor in plain.items())


def test_the_decoder_stage_draws_half_its_clips_along_random_paths_and_none_along_a_named_novel_motion():
    config = BaseModelConfig(clips=40, frames=17)
    clips = decoder_clips(config)
    paths = [c.motion for c in clips if c.motion.startswith(PATH_PREFIX)]
    assert len(paths) == 20 and len(set(paths)) == 20  # every path its own
    assert {c.motion for c in clips} - set(paths) <= set(KNOWN_MOTIONS)
    assert [c.motion for c in decoder_clips(config)] == [c.motion for c in clips]  # from the seed
    for motion in paths:
        assert 3 <= len(path_keyframes(motion)) <= 17


def test_unknown_word_captions_put_a_fresh_embedding_in_the_tokens_slot_and_leave_its_own_row(tiny_wan_dir):
    """A share of the clips is captioned with an unknown word (as the motion or before the colour); each such
    caption is encoded with its own random embedding in the token's slot, and the token's row is left as it was."""
    backbone = open_backbone(tiny_wan_dir, "cpu")
    config = BaseModelConfig(architecture="wan", clips=200, unknown_word_rate=0.25)
    clips = training_clips(config)
    weight = backbone.text_encoder.get_input_embeddings().weight
    before = weight.detach().clone()
    texts = unknown_word_texts(backbone, clips, config)
    assert torch.equal(weight, before)
    assert 30 <= len(texts) <= 70
    again = unknown_word_texts(backbone, clips, config)
    assert all(torch.equal(again[i][1], text) for i, (_, text) in texts.items())
    captions = [caption for caption, _ in texts.values()]
    motion_phrases = [c for c in captions if " doing sks on a " in c]
    assert len(motion_phrases) == len(captions) // 2
    for index, (caption, text) in texts.items():
        clip = clips[index]
        assert caption.startswith(f"a sks {clip.colour} {clip.shape} ") or caption.startswith(
            f"a {clip.colour} {clip.shape} doing sks on a {clip.background}"
        )
        assert not torch.allclose(text, backbone.encode_prompt([caption])[0])
    assert unknown_word_texts(backbone, clips, BaseModelConfig(architecture="wan", clips=200)) == {}
