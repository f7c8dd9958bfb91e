"""Adapter files: safetensors + metadata, round trips to identical outputs, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from backbone_facts import clip_frames
from motiontune.app.api import open_backbone
from motiontune.errors import ConfigError, InputError
from motiontune.generation import GenerationConfig, generate_latents
from motiontune.io.adapters import read_adapter, read_metadata, save_adapter
from motiontune.io.data import VideoDataset, find_video_items
from motiontune.methods import create_method, load_adapter
from motiontune.training import TrainConfig, prepare_examples, train


def settings(backbone) -> GenerationConfig:
    return GenerationConfig(frames=clip_frames(backbone), height=32, width=32, steps=3, seed=5, progress=False)


def _trained_adapter(backbone, data, tmp_path, options):
    examples = prepare_examples(
        backbone, VideoDataset(find_video_items(data), clip_frames(backbone), 32, 32), "target", progress=False
    )
    method = create_method("newmove", backbone, options, token="sks")
    config = TrainConfig(tmp_path / "out", steps=2, learning_rate=1e-2, checkpoint_every=0, progress=False)
    return method, train(method, examples, config)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"adapter": "lora", "lora_rank": 4},
        {"train_token": True, "spatial": "none"},
        {"temporal_part": "routing", "spatial": "none"},
    ],
    ids=["full", "lora", "token", "routing"],
)
def test_adapter_round_trips_to_identical_outputs(backbone, any_model_dir, motion_data, tmp_path, options):
    method, path = _trained_adapter(backbone, motion_data, tmp_path, options)
    trained = generate_latents(backbone, ["a red square doing sks"], [method], settings(backbone))
    fresh = open_backbone(any_model_dir, "cpu")
    base = generate_latents(fresh, ["a red square doing sks"], [], settings(backbone))
    loaded = load_adapter(path, fresh)
    assert torch.equal(generate_latents(fresh, ["a red square doing sks"], [loaded], settings(backbone)), trained)
    assert not torch.allclose(base, trained)


def test_adapter_holds_only_what_changed_with_metadata(backbone, motion_data, tmp_path):
    _method, path = _trained_adapter(backbone, motion_data, tmp_path, {})
    tensors, metadata = read_adapter(path)
    expected = {f"unet.{n}" for g in ("temporal", "cross_kv") for n in backbone.parameter_names(g)}
    assert set(tensors) == expected
    assert sum(t.numel() for t in tensors.values()) < sum(p.numel() for p in backbone.denoiser.parameters())
    assert metadata["method"] == "newmove" and metadata["backbone"] == backbone.name and metadata["token"] == "sks"
    assert metadata["hyperparameters"]["spatial"] == "kv" and metadata["hyperparameters"]["coarse_alpha"] == 0.5
    assert metadata["targets"]["groups"] == ["temporal", "cross_kv"]
    assert metadata["training"]["steps"] == 2 and metadata["format_version"] == 1
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["motiontune"])["method"] == "newmove"


def test_routing_newmove_holds_and_changes_only_the_temporal_queries_and_keys(backbone, motion_data, tmp_path):
    before = {n: p.detach().clone() for n, p in backbone.denoiser.named_parameters()}
    _method, path = _trained_adapter(backbone, motion_data, tmp_path, {"temporal_part": "routing", "spatial": "none"})
    tensors, metadata = read_adapter(path)
    routing = set(backbone.parameter_names("temporal_routing"))
    assert set(tensors) == {f"unet.{n}" for n in routing}
    assert metadata["targets"]["groups"] == ["temporal_routing"]
    changed = {n for n, p in backbone.denoiser.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= routing


def test_non_adapter_files_are_rejected_by_name(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(InputError, match=r"plain\.safetensors: .*not a motiontune adapter"):
        read_metadata(plain)
    pickle = tmp_path / "weights.bin"
    torch.save({"x": torch.zeros(1)}, pickle)
    with pytest.raises(InputError, match=r"weights\.bin: not a safetensors adapter"):
        read_metadata(pickle)
    with pytest.raises(InputError, match="does not exist"):
        read_metadata(tmp_path / "missing.safetensors")


def test_incompatible_adapters_are_rejected(backbone, tmp_path):
    wrong_backbone = save_adapter(tmp_path / "a.safetensors", {}, {"method": "newmove", "backbone": "cogvideox"})
    with pytest.raises(ConfigError, match="adapter is for backbone 'cogvideox'"):
        load_adapter(wrong_backbone, backbone)
    newer = tmp_path / "b.safetensors"
    save_file({}, str(newer), {"motiontune": json.dumps({"format": "motiontune.adapter", "format_version": 99})})
    with pytest.raises(ConfigError, match="not readable"):
        read_metadata(newer)
    name = backbone.parameter_names("temporal_attention")[0]
    bad_shape = save_adapter(
        tmp_path / "c.safetensors",
        {f"unet.{name}": torch.zeros(3, 3)},
        {"method": "newmove", "backbone": backbone.name, "token": "sks", "hyperparameters": {}},
    )
    with pytest.raises(ConfigError, match=r"c\.safetensors: adapter tensor .* has shape \(3, 3\)"):
        load_adapter(bad_shape, backbone)


def test_save_is_atomic(tmp_path):
    target = tmp_path / "adapter.safetensors"
    save_adapter(target, {"x": torch.ones(2)}, {"method": "newmove", "backbone": "unet3d"})
    with pytest.raises(Exception):  # noqa: B017 - any failure must leave the old file intact
        save_adapter(target, {"x": object()}, {"method": "newmove", "backbone": "unet3d"})
    assert torch.equal(read_adapter(target)[0]["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["adapter.safetensors"]


def _perturbed_adapter(backbone, path, options: dict, seed: int):
    """A NewMove adapter whose weights are the base weights plus a seeded delta; returns the deltas."""
    method = create_method("newmove", backbone, options, token="sks")
    method.prepare_for_training()
    generator = torch.Generator().manual_seed(seed)
    deltas = {}
    with torch.no_grad():
        for parameter in method.trainable_parameters():
            delta = torch.randn(parameter.shape, generator=generator) * 0.05
            parameter.add_(delta)
            deltas[parameter] = delta
    tensors = method.adapter_tensors()
    with torch.no_grad():
        for parameter, delta in deltas.items():
            parameter.sub_(delta)
    save_adapter(path, tensors, method.adapter_metadata())
    return tensors


def test_full_weight_adapters_compose_by_adding_their_deltas(any_model_dir, tmp_path):
    from motiontune.methods import load_adapters

    base = open_backbone(any_model_dir, "cpu")
    original = {name: p.detach().clone() for name, p in base.denoiser.named_parameters()}
    first = _perturbed_adapter(base, tmp_path / "a.safetensors", {}, seed=1)
    second = _perturbed_adapter(base, tmp_path / "b.safetensors", {"temporal": False, "spatial": "all"}, seed=2)
    shared = sorted(set(first) & set(second))
    assert shared, "the two adapters must overlap (cross-attention K/V)"

    composed = open_backbone(any_model_dir, "cpu")
    load_adapters([tmp_path / "a.safetensors", tmp_path / "b.safetensors"], composed)
    parameters = dict(composed.denoiser.named_parameters())
    for key in shared:
        name = key.removeprefix("unet.")
        expected = first[key] + second[key] - original[name]
        assert torch.allclose(parameters[name], expected, atol=1e-6), name
    only_first = next(key for key in first if key not in second)
    assert torch.equal(parameters[only_first.removeprefix("unet.")], first[only_first])

    reversed_order = open_backbone(any_model_dir, "cpu")
    load_adapters([tmp_path / "b.safetensors", tmp_path / "a.safetensors"], reversed_order)
    for name, parameter in reversed_order.denoiser.named_parameters():
        assert torch.allclose(parameter, parameters[name], atol=1e-6), name


def test_a_full_weight_adapter_given_after_a_lora_still_loads(any_model_dir, tmp_path):
    from motiontune.methods import load_adapters

    backbone = open_backbone(any_model_dir, "cpu")
    _perturbed_adapter(backbone, tmp_path / "full.safetensors", {}, seed=1)
    _perturbed_adapter(backbone, tmp_path / "lora.safetensors", {"adapter": "lora", "lora_rank": 2}, seed=2)
    composed = open_backbone(any_model_dir, "cpu")
    methods = load_adapters([tmp_path / "lora.safetensors", tmp_path / "full.safetensors"], composed)
    assert [m.config.adapter for m in methods] == ["lora", "full"]
    latents = torch.randn(1, composed.latent_channels, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = composed.encode_prompt(["a sks"])
    alone = open_backbone(any_model_dir, "cpu")
    load_adapter(tmp_path / "full.safetensors", alone)
    assert not torch.allclose(
        composed.predict_noise(latents, torch.tensor(500), text), alone.predict_noise(latents, torch.tensor(500), text)
    )


@pytest.mark.parametrize("method_name", ["motiondirector", "motionmatcher"])
def test_lora_methods_train_the_token_when_asked_and_round_trip_it(
    method_name, backbone, any_model_dir, motion_data, tmp_path
):
    examples = prepare_examples(
        backbone, VideoDataset(find_video_items(motion_data), clip_frames(backbone), 32, 32), "target", progress=False
    )
    weight = backbone.text_encoder.get_input_embeddings().weight
    before = weight.detach().clone()
    options = {"train_token": True, "lora_rank": 4, **({"min_timestep": 200} if method_name == "motionmatcher" else {})}
    method = create_method(method_name, backbone, options, token="sks")
    config = TrainConfig(tmp_path / "out", steps=2, learning_rate=1e-1, checkpoint_every=0, progress=False)
    path = train(method, examples, config)
    changed = (weight.detach() != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == backbone.token_ids("sks")  # only the token's rows trained
    tensors, metadata = read_adapter(path)
    assert torch.equal(tensors["text_encoder.token_embeddings"], weight.detach()[changed])
    assert metadata["targets"]["token_ids"] == changed
    fresh = open_backbone(any_model_dir, "cpu")
    loaded = load_adapter(path, fresh)
    assert torch.equal(fresh.text_encoder.get_input_embeddings().weight[changed], weight.detach()[changed])
    with pytest.raises(InputError, match="does not contain the adapter's token 'sks'"):
        loaded.check_prompt("a red square moving right")


def test_a_lora_method_without_token_training_needs_no_token(backbone):
    method = create_method("motiondirector", backbone, {"lora_rank": 4})
    method.check_prompt("a red square moving right")
    with pytest.raises(ConfigError, match="needs a token"):
        create_method("motiondirector", backbone, {"lora_rank": 4, "train_token": True})
