"""The shared LoRA helpers (`methods.lora`): unique names, peft file keys, and adapters that compose."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model_state_dict

from motiontune.app import api
from motiontune.errors import ConfigError
from motiontune.io.adapters import save_adapter
from motiontune.methods import create_method, load_adapter
from motiontune.methods.lora import (
    inject_lora,
    load_lora_tensors,
    lora_layers,
    lora_parameters,
    lora_tensors,
    set_lora_enabled,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _trained_looking(unet: torch.nn.Module, name: str, seed: int) -> None:
    """Give adapter `name` non-zero B factors, as after training (B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(unet, name):
            weight = layer.lora_B[name].weight
            weight.copy_(torch.randn(weight.shape, generator=generator) * 0.2)


def _output(backbone) -> torch.Tensor:
    latents = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text = backbone.encode_prompt(["a red circle doing sks"])
        return backbone.predict_noise(latents, torch.tensor([700]), text)


def test_names_are_unique_and_files_use_peft_keys(backbone):
    unet = backbone.denoiser
    target = backbone.lora_target(["temporal"])
    first, second = inject_lora(unet, target, 4, "demo"), inject_lora(unet, target, 4, "demo")
    assert (first, second) == ("demo", "demo_2")
    _trained_looking(unet, first, seed=1)
    _trained_looking(unet, second, seed=2)
    for name in (first, second):
        tensors = lora_tensors(unet, name)
        peft_state = get_peft_model_state_dict(unet, adapter_name=name)
        assert tensors.keys() == {f"unet.{key}" for key in peft_state}
        assert all(torch.equal(tensors[f"unet.{key}"], value) for key, value in peft_state.items())
        assert all(key.endswith((".lora_A.weight", ".lora_B.weight")) for key in tensors)

    load_lora_tensors(unet, first, {**lora_tensors(unet, second), "text_encoder.other": torch.zeros(1)}, "b.st")
    copied, source = lora_tensors(unet, first), lora_tensors(unet, second)
    assert copied.keys() == source.keys() and all(torch.equal(copied[key], source[key]) for key in source)
    missing = dict(list(lora_tensors(unet, second).items())[1:])
    with pytest.raises(ConfigError, match=r"^b\.st: LoRA tensors do not match this model \(.*lora_A\.weight\)$"):
        load_lora_tensors(unet, first, missing, "b.st")
    other_rank = inject_lora(unet, target, 2, "demo")
    with pytest.raises(ConfigError, match=r"^b\.st: LoRA tensor .* has shape \(2, \d+\), model expects \(4, \d+\)"):
        load_lora_tensors(unet, first, lora_tensors(unet, other_rank), "b.st")


def test_switching_one_adapter_leaves_the_others_active(backbone):
    unet = backbone.denoiser
    target = backbone.lora_target(["temporal"])
    first, second = inject_lora(unet, target, 4, "demo"), inject_lora(unet, target, 4, "demo")
    layers = lora_layers(unet, first)
    assert all(layer.active_adapters == [first, second] for layer in layers)
    set_lora_enabled(layers, first, False)
    assert all(layer.active_adapters == [second] for layer in layers)
    set_lora_enabled(layers, first, True)
    assert all(sorted(layer.active_adapters) == [first, second] for layer in layers)
    assert all(p.requires_grad for p in lora_parameters(layers, second))


def test_newmove_lora_composes_with_a_motionmatcher_lora(backbone, any_model_dir, tmp_path):
    """`generate --adapter motionmatcher.safetensors --adapter newmove_lora.safetensors` keeps both LoRAs on."""
    base = _output(backbone)
    matcher = create_method("motionmatcher", backbone, {"lora_rank": 4})
    matcher.prepare_for_training()
    newmove = create_method("newmove", backbone, {"adapter": "lora", "lora_rank": 4}, token="sks")
    newmove.prepare_for_training()
    assert newmove.adapter_name == "newmove"
    assert not {id(p) for p in newmove.trainable_parameters()} & {id(p) for p in matcher.trainable_parameters()}
    _trained_looking(backbone.denoiser, matcher.adapter_name, seed=1)
    _trained_looking(backbone.denoiser, newmove.adapter_name, seed=2)
    files = {}
    for method in (matcher, newmove):
        tensors, metadata = method.adapter_tensors(), method.adapter_metadata()
        files[method.name] = save_adapter(tmp_path / f"{method.name}.safetensors", tensors, metadata)

    composed = api.open_backbone(any_model_dir, "cpu")
    loaded_matcher = load_adapter(files["motionmatcher"], composed)
    loaded_newmove = load_adapter(files["newmove"], composed)
    unet = composed.denoiser
    matcher_layers = lora_layers(unet, loaded_matcher.adapter_name)
    newmove_layers = lora_layers(unet, loaded_newmove.adapter_name)
    assert all(loaded_matcher.adapter_name in layer.active_adapters for layer in matcher_layers)
    assert all(loaded_newmove.adapter_name in layer.active_adapters for layer in newmove_layers)
    shared = [layer for layer in newmove_layers if layer in matcher_layers]
    assert shared  # the temporal attention linears carry both adapters

    both = _output(composed)
    with loaded_matcher.lora_disabled():
        only_newmove = _output(composed)
    set_lora_enabled(newmove_layers, loaded_newmove.adapter_name, False)
    only_matcher = _output(composed)
    set_lora_enabled(newmove_layers, loaded_newmove.adapter_name, True)
    for alone in (base, only_newmove, only_matcher):
        assert (both - alone).abs().max() > 1e-3
    newmove_alone = api.open_backbone(any_model_dir, "cpu")
    load_adapter(files["newmove"], newmove_alone)
    torch.testing.assert_close(only_newmove, _output(newmove_alone))

    # on a layer with both adapters, W x + dW_1 x + dW_2 x: the updates add up
    layer = shared[0]
    x = torch.randn(5, layer.in_features, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with_both = layer(x)
        plain = layer.base_layer(x)
        deltas = [
            layer.lora_B[name].weight @ layer.lora_A[name].weight
            for name in (loaded_matcher.adapter_name, loaded_newmove.adapter_name)
        ]
    torch.testing.assert_close(with_both, plain + x @ (deltas[0] + deltas[1]).T)

    # the order the adapters are given in does not matter
    reversed_order = api.open_backbone(any_model_dir, "cpu")
    load_adapter(files["newmove"], reversed_order)
    load_adapter(files["motionmatcher"], reversed_order)
    torch.testing.assert_close(_output(reversed_order), both)
