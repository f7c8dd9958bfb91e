"""MotionBooth subject learning: losses, image/video alternation, trained groups, adapters, subject data, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from backbone_facts import clip_frames, is_temporal
from motiontune.app.api import open_backbone
from motiontune.app.cli import main
from motiontune.errors import ConfigError, InputError
from motiontune.io.data import VideoDataset, find_video_items
from motiontune.io.subject_data import find_subject_images, prepare_subject_examples, read_subject_image
from motiontune.lab.shapeworld import NOVEL_SHAPES, sample_clips, write_subject_images
from motiontune.lab.tiny import build_tiny_model
from motiontune.methods import create_method, load_adapter
from motiontune.methods.motionbooth import (
    TRAINED_GROUPS,
    attention_target,
    subject_attention_loss,
    subject_region_loss,
)
from motiontune.training import TrainConfig, _draw_batch, prepare_examples, train

OPTIONS = {"class_word": "star"}


@pytest.fixture(scope="module")
def subject_images(tmp_path_factory):
    """Four ShapeWorld stills of novel shapes with exact masks in masks/."""
    clips = sample_clips(4, 3, motions=("static",), shapes=NOVEL_SHAPES)
    return write_subject_images(tmp_path_factory.mktemp("subject") / "star", clips, size=32)


def _subject_examples(backbone, folder, caption="a sks star"):
    return prepare_subject_examples(backbone, find_subject_images(folder), caption, 32, 32, progress=False)


def _video_examples(backbone, folder):
    return prepare_examples(
        backbone,
        VideoDataset(find_video_items(folder), clip_frames(backbone), 32, 32),
        "regularization",
        progress=False,
    )


def _save(path, array, mode=None):
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


# --- losses -----------------------------------------------------------------------------------


def test_subject_region_loss_matches_a_hand_computed_case():
    target = torch.zeros(1, 4, 1, 2, 2)
    prediction = torch.zeros(1, 4, 1, 2, 2)
    prediction[0, :, 0, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # inside the latent mask
    prediction[0, :, 0, 1, 0] = 5.0  # outside: must not count
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1, 2] = 1  # one pixel; bilinear to 2x2 gives 0.25 at (0, 1), which `> 0` keeps
    # (1 + 4 + 9 + 16) / 1 masked latent pixel: the official sum over channels / count of pixels
    assert subject_region_loss(prediction, target, mask).item() == pytest.approx(30.0)
    mask[0, 0, 0, 0] = 1  # now two masked latent pixels, the second with zero error
    assert subject_region_loss(prediction, target, mask).item() == pytest.approx(15.0)
    assert subject_region_loss(prediction, target, torch.zeros(1, 1, 4, 4)).item() == 0.0


def test_attention_target_is_the_bilinearly_resized_soft_mask_and_bce_matches_by_hand():
    left_half = torch.zeros(1, 1, 8, 8)
    left_half[..., :4] = 1
    assert attention_target(left_half, (2, 2)).flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    corner = torch.zeros(1, 1, 8, 8)
    corner[..., :2, :2] = 1  # samples at 1.5: halfway between an inside and an outside pixel, on both axes
    assert attention_target(corner, (2, 2)).flatten().tolist() == [0.25, 0.0, 0.0, 0.0]
    attention = torch.tensor([[0.5, 0.25], [0.8, 0.1]])[None, None]
    expected = -(math.log(0.5) + math.log(0.75) + math.log(0.8) + math.log(0.9)) / 4
    assert subject_attention_loss(attention, left_half).item() == pytest.approx(expected, rel=1e-6)


def test_image_masks_are_binarised_at_one_half(tmp_path):
    _save(tmp_path / "a.png", np.full((8, 8, 3), 90))
    mask = np.zeros((8, 8))
    mask[:, :4] = 200
    mask[:, 4:6] = 100
    (tmp_path / "masks").mkdir()
    _save(tmp_path / "masks" / "a.png", mask)
    _, binary = read_subject_image(find_subject_images(tmp_path)[0], 8, 8)
    assert binary[0, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_subject_attention_averages_heads_tokens_and_layers(backbone):
    method = create_method("motionbooth", backbone, OPTIONS, token="sks")
    caption = "a sks star"
    positions = backbone.phrase_positions(caption, "sks star")
    assert len(method.attention_sites) >= 1
    grid = backbone.grid_at_level((8, 8), 2)
    tokens = backbone.tokenizer.model_max_length
    heads = 2
    maps = {}
    for layer, site in enumerate(method.attention_sites):
        probs = torch.zeros(1, 1, heads, *grid, tokens)  # the canonical view: batch 1, one frame
        probs[..., 0, :, :, positions[0]] = 0.2 + layer
        probs[..., 1, :, :, positions[-1]] = 0.6 + layer
        probs[..., 0] = 9.0  # start token: never part of the map
        maps[site.name] = probs
    attention = method.subject_attention(maps, [caption])
    mean_layer = (len(method.attention_sites) - 1) / 2
    # per layer: mean over tokens of each head, (0.2 + L) / n and (0.6 + L) / n, then over heads and layers
    expected = (0.2 + 0.6 + 2 * mean_layer) / (2 * len(positions))
    assert attention.shape == (1, 1, *grid)
    assert torch.allclose(attention, torch.full_like(attention, expected))


def test_attention_level_falls_back_to_the_nearest_level_with_cross_attention(backbone):
    # the tiny model has cross-attention at levels 0, 1 and 2 (its mid block): level 2 is kept, 7 gets 2
    if {site.level for site in backbone.sites if site.kind == "cross"} != {0, 1, 2}:
        pytest.skip("a UNet's resolution levels; test_wan.py checks a transformer's attention level")
    assert create_method("motionbooth", backbone, OPTIONS, token="sks").attention_level == 2
    assert create_method("motionbooth", backbone, {**OPTIONS, "attention_level": 7}, token="sks").attention_level == 2
    sites = backbone.sites
    backbone.sites = [site for site in sites if site.level != 1]  # levels 0 and 2: a tie at 1 goes deeper
    assert backbone.cross_attention_level(1) == 2
    backbone.sites = [site for site in sites if site.level != 2]  # levels 0 and 1, as in a 2-level UNet
    method = create_method("motionbooth", backbone, OPTIONS, token="sks")
    assert method.attention_level == 1 and method.adapter_metadata()["targets"]["attention_level"] == 1
    assert method.attention_sites == [site for site in sites if site.kind == "cross" and site.level == 1]


def test_default_attention_loss_trains_on_a_two_level_unet(tmp_path, subject_images):
    # the ShapeWorld base model's layout: cross-attention at levels 0 and 1 only (down, mid and up blocks)
    two_levels = {
        "down_block_types": ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
        "up_block_types": ("CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
        "block_out_channels": (32, 32),
    }
    backbone = open_backbone(build_tiny_model(tmp_path / "two-levels", unet_config=two_levels), "cpu")
    assert {site.level for site in backbone.sites if site.kind == "cross"} == {0, 1}
    method = create_method("motionbooth", backbone, {**OPTIONS, "attention_loss_weight": 1.0}, token="sks")
    method.prepare_for_training()
    batch = _draw_batch(_subject_examples(backbone, subject_images), 1, torch.Generator().manual_seed(0), "cpu")
    loss = method.loss(batch, torch.Generator().manual_seed(1))
    loss.backward()
    key = backbone.denoiser.get_submodule(method.attention_sites[0].name).to_k.weight
    assert method.attention_level == 1 and torch.isfinite(loss) and key.grad.abs().sum() > 0


def test_attention_loss_is_recorded_with_gradients(backbone, subject_images):
    examples = _subject_examples(backbone, subject_images)
    batch = _draw_batch(examples, 1, torch.Generator().manual_seed(0), "cpu")
    with_attention = create_method("motionbooth", backbone, {**OPTIONS, "attention_loss_weight": 1.0}, token="sks")
    without = create_method("motionbooth", backbone, {**OPTIONS, "attention_loss_weight": 0.0}, token="sks")
    with_attention.prepare_for_training()
    difference = with_attention.loss(batch, torch.Generator().manual_seed(1)) - without.loss(
        batch, torch.Generator().manual_seed(1)
    )
    assert 0 < difference.item() < 10  # a BCE of probabilities against a mask
    difference.backward()
    site = with_attention.attention_sites[0].name
    key = backbone.denoiser.get_submodule(site).to_k.weight
    assert key.grad is not None and key.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients_with_the_attention_loss(backbone, subject_images):
    batch = _draw_batch(_subject_examples(backbone, subject_images), 2, torch.Generator().manual_seed(0), "cpu")
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            backbone.enable_gradient_checkpointing()
        method = create_method("motionbooth", backbone, {**OPTIONS, "trained_parameters": "cross"}, token="sks")
        method.prepare_for_training()
        backbone.denoiser.zero_grad(set_to_none=True)
        method.loss(batch, torch.Generator().manual_seed(1)).backward()
        grads.append({n: p.grad.clone() for n, p in backbone.denoiser.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


# --- alternation ------------------------------------------------------------------------------


def test_image_and_video_batches_alternate(backbone, subject_images, regularization_data):
    images = _subject_examples(backbone, subject_images)
    videos = _video_examples(backbone, regularization_data)
    examples = images + videos
    method = create_method("motionbooth", backbone, {**OPTIONS, "image_batch_size": 3}, token="sks")
    generator = torch.Generator().manual_seed(0)
    for micro_step in range(6):
        batch = _draw_batch(examples, 1, generator, "cpu", method, micro_step)
        if micro_step % 2 == 0:
            assert batch["sources"] == ["target"] * 3 and batch["masks"].shape == (3, 1, 32, 32)
            assert len(set(batch["captions"])) == 1 and batch["latents"].shape[2] == 1
        else:
            assert batch["sources"] == ["regularization"] and "masks" not in batch
            assert batch["latents"].shape[2] == backbone.latent_frames(clip_frames(backbone))
    only_images = [_draw_batch(images, 1, generator, "cpu", method, step)["sources"] for step in range(4)]
    assert all(sources == ["target"] * 3 for sources in only_images)


def test_training_loop_alternates_with_two_micro_steps_per_update(
    backbone, subject_images, regularization_data, tmp_path
):
    examples = _subject_examples(backbone, subject_images) + _video_examples(backbone, regularization_data)
    method = create_method("motionbooth", backbone, {**OPTIONS, "trained_parameters": "cross_kv"}, token="sks")
    kinds = []
    original = method.loss

    def spy(batch, generator):
        kinds.append("image" if "masks" in batch else "video")
        return original(batch, generator)

    method.loss = spy
    config = TrainConfig(tmp_path / "out", steps=2, checkpoint_every=0, progress=False, frames=clip_frames(backbone))
    adapter = train(method, examples, config)
    assert kinds == ["image", "video", "image", "video"]
    with safe_open(str(adapter), "pt") as handle:
        training = json.loads(handle.metadata()["motiontune"])["training"]
    assert training["gradient_accumulation"] == 2 and training["latent_shape"][1] == backbone.latent_frames(
        clip_frames(backbone)
    )


# --- trained parameters and adapters ----------------------------------------------------------


@pytest.mark.parametrize("option", list(TRAINED_GROUPS))
def test_gradients_reach_only_the_chosen_group(backbone, subject_images, regularization_data, option):
    method = create_method("motionbooth", backbone, {**OPTIONS, "trained_parameters": option}, token="sks")
    method.prepare_for_training()
    group = set(backbone.parameter_names(TRAINED_GROUPS[option]))
    trainable = {n for n, p in backbone.denoiser.named_parameters() if p.requires_grad}
    assert trainable == group
    examples = _subject_examples(backbone, subject_images) + _video_examples(backbone, regularization_data)
    generator = torch.Generator().manual_seed(0)
    for micro_step in range(2):
        method.loss(_draw_batch(examples, 1, generator, "cpu", method, micro_step), generator).backward()
    with_grad = {n for n, p in backbone.denoiser.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= group
    assert all(p.grad is None for p in backbone.text_encoder.parameters())
    assert all(p.grad is None for p in backbone.vae.parameters())
    if option == "wo_temp":
        assert not any(is_temporal(backbone, n) and not n.startswith("transformer_in.") for n in group)
        assert any(n.startswith("transformer_in.") for n in group) == (backbone.name == "unet3d")
    if option == "cross":
        assert all(".attn2." in n and not is_temporal(backbone, n) for n in group)


def test_adapter_round_trip_stores_only_the_trained_group(any_model_dir, backbone, subject_images, tmp_path):
    examples = _subject_examples(backbone, subject_images)
    method = create_method("motionbooth", backbone, {**OPTIONS, "trained_parameters": "cross"}, token="sks")
    config = TrainConfig(tmp_path / "out", steps=2, learning_rate=1e-3, checkpoint_every=0, progress=False)
    adapter = train(method, examples, config)
    with safe_open(str(adapter), "pt") as handle:
        keys = set(handle.keys())
        metadata = json.loads(handle.metadata()["motiontune"])
    assert keys == {f"unet.{n}" for n in backbone.parameter_names("cross")}
    assert metadata["hyperparameters"]["class_word"] == "star"
    assert metadata["subject"] == {"phrase": "sks star", "caption": "a sks star"}

    fresh = open_backbone(any_model_dir, "cpu")
    trained, restored = dict(backbone.denoiser.named_parameters()), dict(fresh.denoiser.named_parameters())
    assert not all(torch.equal(trained[name], restored[name]) for name in trained)
    loaded = load_adapter(adapter, fresh)
    assert loaded.name == "motionbooth" and loaded.subject_phrase == "sks star"
    assert all(torch.equal(trained[name], restored[name]) for name in trained)


def test_token_training_trains_and_stores_only_the_tokens_rows(any_model_dir, backbone, subject_images, tmp_path):
    examples = _subject_examples(backbone, subject_images)
    weight = backbone.text_encoder.get_input_embeddings().weight
    before = weight.detach().clone()
    options = {**OPTIONS, "trained_parameters": "cross_kv", "train_token": True}
    method = create_method("motionbooth", backbone, options, token="sks")
    config = TrainConfig(tmp_path / "out", steps=2, learning_rate=1e-1, checkpoint_every=0, progress=False)
    adapter = train(method, examples, config)
    changed = (weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == backbone.token_ids("sks")
    fresh = open_backbone(any_model_dir, "cpu")
    load_adapter(adapter, fresh)
    assert torch.equal(fresh.text_encoder.get_input_embeddings().weight, weight.detach())


def test_bad_options_are_rejected(backbone):
    with pytest.raises(ConfigError, match="class word"):
        create_method("motionbooth", backbone, {}, token="sks")
    with pytest.raises(ConfigError, match="trained_parameters must be one of"):
        create_method("motionbooth", backbone, {**OPTIONS, "trained_parameters": "temporal"}, token="sks")
    with pytest.raises(ConfigError, match="attention_level >= 0"):
        create_method("motionbooth", backbone, {**OPTIONS, "attention_level": -1}, token="sks")
    with pytest.raises(ConfigError, match="needs a token"):
        create_method("motionbooth", backbone, OPTIONS, token=None)


# --- subject data -----------------------------------------------------------------------------


def test_masks_from_a_folder_a_suffix_or_the_alpha_channel(tmp_path):
    image = np.zeros((10, 10, 3))
    image[2:6, 3:7] = 200
    mask = np.zeros((10, 10))
    mask[2:6, 3:7] = 255
    _save(tmp_path / "a.png", image)
    (tmp_path / "masks").mkdir()
    _save(tmp_path / "masks" / "a.png", mask)
    _save(tmp_path / "b.jpg", image)
    _save(tmp_path / "b_mask.png", mask)
    _save(tmp_path / "c.png", np.dstack([image, mask]), "RGBA")
    items = find_subject_images(tmp_path)
    found = [(item.path.name, item.mask and item.mask.name) for item in items]
    assert found == [("a.png", "a.png"), ("b.jpg", "b_mask.png"), ("c.png", None)]
    for item in items:
        pixels, binary = read_subject_image(item, 10, 10)
        assert pixels.shape == (3, 10, 10) and binary.shape == (1, 10, 10)
        assert binary[0].nonzero().tolist() == torch.from_numpy(mask > 0).nonzero().tolist()


def test_images_are_squared_and_zero_padded_to_the_training_size(tmp_path):
    _save(tmp_path / "a.png", np.full((20, 30, 3), 255))
    _save(tmp_path / "a_mask.png", np.full((20, 30), 255))
    pixels, binary = read_subject_image(find_subject_images(tmp_path)[0], 16, 32)
    assert pixels.shape == (3, 16, 32) and binary.shape == (1, 16, 32)
    assert (pixels[:, :, :8] == -1).all() and (pixels[:, :, 24:] == -1).all() and (pixels[:, :, 8:24] == 1).all()
    assert binary[0, :, :8].sum() == 0 and binary[0, :, 24:].sum() == 0 and binary[0, :, 8:24].all()


def _mask_problem(case, folder):
    image = np.full((8, 8, 3), 100)
    mask = np.full((8, 8), 255)
    _save(folder / "dog.png", image)
    if case == "no mask":
        return "dog.png: no mask (expected masks/dog.png, dog_mask.png or an alpha channel)"
    if case == "size mismatch":
        _save(folder / "dog_mask.png", np.full((6, 8), 255))
        return "dog_mask.png: mask is 8x6, image dog.png is 8x8"
    if case == "two masks":
        _save(folder / "dog_mask.png", mask)
        (folder / "masks").mkdir()
        _save(folder / "masks" / "dog.png", mask)
        return "dog.png: two masks"
    if case == "orphan mask":
        _save(folder / "dog_mask.png", mask)
        _save(folder / "cat_mask.png", mask)
        return "cat_mask.png: mask without an image named cat.*"
    if case == "opaque alpha":
        (folder / "dog.png").unlink()
        _save(folder / "dog.png", np.dstack([image, mask]), "RGBA")
        return "dog.png: alpha channel is fully opaque"
    if case == "empty mask":
        _save(folder / "dog_mask.png", np.zeros((8, 8)))
        return "dog_mask.png: mask has no foreground pixels"
    if case == "unreadable":
        (folder / "dog_mask.png").write_bytes(b"not a png")
        return "dog_mask.png: cannot read image"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["no mask", "size mismatch", "two masks", "orphan mask", "opaque alpha", "empty mask", "unreadable"]
)
def test_bad_subject_data_is_one_line_naming_the_file(case, tmp_path):
    expected = _mask_problem(case, tmp_path)
    with pytest.raises(InputError) as error:
        for item in find_subject_images(tmp_path):
            read_subject_image(item, 8, 8)
    message = str(error.value)
    assert "\n" not in message and expected in message and str(tmp_path) in message


def test_empty_or_missing_folder_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no subject images found"):
        find_subject_images(tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        find_subject_images(tmp_path / "nowhere")


# --- command line -----------------------------------------------------------------------------


def test_cli_trains_motionbooth_on_rendered_novel_subject(
    tiny_model_dir, subject_images, regularization_data, tmp_path, capsys
):
    output = tmp_path / "run"
    args = ["train", "--method", "motionbooth", "--model", str(tiny_model_dir), "--data", str(subject_images)]
    args += ["--class-word", "star", "--token", "sks", "--reg-data", str(regularization_data), "--output", str(output)]
    args += ["--steps", "2", "--frames", "4", "--height", "32", "--width", "32", "--quiet"]
    assert main(args) == 0
    assert "adapter:" in capsys.readouterr().out
    with safe_open(str(output / "adapter.safetensors"), "pt") as handle:
        metadata = json.loads(handle.metadata()["motiontune"])
    assert metadata["method"] == "motionbooth" and metadata["token"] == "sks"
    assert metadata["training"]["examples"] == 4 + 2 and metadata["training"]["latent_shape"] == [4, 4, 16, 16]
    assert len((output / "training_log.jsonl").read_text().splitlines()) == 2


def test_cli_bad_subject_input_is_one_line(tiny_model_dir, tmp_path, capsys):
    _save(tmp_path / "dog.png", np.full((8, 8, 3), 100))
    args = ["train", "--method", "motionbooth", "--model", str(tiny_model_dir), "--data", str(tmp_path)]
    args += ["--class-word", "dog", "--output", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "dog.png: no mask" in error
    assert not (tmp_path / "out").exists()
