"""Every backbone (tiny UNet3D, AnimateDiff and Wan): loading any diffusers folder, attention sites and layouts,
groups, checkpointing."""

from __future__ import annotations

import json
import re
import shutil
from typing import ClassVar

import pytest
import torch

from backbone_facts import PER_FRAME_AUTOENCODER, TEMPORAL_LAYERS
from motiontune.app.api import open_backbone
from motiontune.errors import InputError

#: sites of each tiny model with their kind and level (three levels; the mid block works at level 2)
EXPECTED_SITES = {
    "unet3d": {
        "transformer_in.transformer_blocks.0.attn1": ("temporal", 0),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1": ("spatial_self", 0),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2": ("cross", 1),
        "down_blocks.1.temp_attentions.0.transformer_blocks.0.attn2": ("temporal", 1),
        "mid_block.attentions.0.transformer_blocks.0.attn2": ("cross", 2),
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2": ("cross", 1),
        "up_blocks.2.attentions.0.transformer_blocks.0.attn2": ("cross", 0),
    },
    "animatediff": {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1": ("spatial_self", 0),
        "down_blocks.0.motion_modules.0.transformer_blocks.0.attn1": ("temporal", 0),
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2": ("cross", 1),
        "down_blocks.1.motion_modules.0.transformer_blocks.0.attn2": ("temporal", 1),
        "down_blocks.2.motion_modules.0.transformer_blocks.0.attn1": ("temporal", 2),
        "mid_block.attentions.0.transformer_blocks.0.attn2": ("cross", 2),
        "mid_block.motion_modules.0.transformer_blocks.0.attn1": ("temporal", 2),
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2": ("cross", 1),
        "up_blocks.2.motion_modules.1.transformer_blocks.0.attn2": ("temporal", 0),
    },
    "wan": {
        "blocks.0.attn1": ("temporal", 0),
        "blocks.0.attn2": ("cross", 0),
        "blocks.1.attn1": ("temporal", 0),
        "blocks.1.attn2": ("cross", 0),
    },
}


def test_sites_are_classified_with_their_levels(backbone):
    sites = {site.name: site for site in backbone.sites}
    for name, (kind, level) in EXPECTED_SITES[backbone.name].items():
        assert (sites[name].kind, sites[name].level) == (kind, level), name
    assert len(sites) == len(backbone.denoiser.attn_processors)
    assert {site.kind for site in backbone.sites} == {kind for kind, _ in EXPECTED_SITES[backbone.name].values()}


@pytest.mark.parametrize("latent_hw", [(16, 16), (10, 18), (7, 9)])
def test_recorded_layouts_match_each_site(backbone, latent_hw):
    patch = backbone.pixel_multiple // backbone.vae_scale_factor
    latent_hw = tuple(patch * n for n in latent_hw)
    batch, frames = 2, 3
    latents = torch.randn(batch, 4, frames, *latent_hw)
    text = backbone.encode_prompt(["a red circle", "sks"])
    with backbone.controller.record(lambda site: True) as maps:
        backbone.predict_noise(latents, torch.tensor(10), text)
    for site in backbone.sites:
        attn = backbone.denoiser.get_submodule(site.name)
        h, w = backbone.grid_at_level(latent_hw, site.level)
        probs = maps[site.name]
        if site.kind == "temporal":
            assert probs.shape == (batch, h, w, attn.heads, frames, frames), site.name
        elif site.kind == "cross":
            assert probs.shape == (batch, frames, attn.heads, h, w, text.shape[1]), site.name
        else:
            assert probs.shape == (batch, frames, attn.heads, h, w, h * w), site.name


def test_temporal_rows_follow_pixel_layout(backbone):
    """Row y*w + x of a temporal map attends over the frames of pixel (y, x): a change at one pixel of the
    temporal transformer's input `(B*F, C, h, w)` moves that row's map (its group norm spreads a little to all)."""
    torch.manual_seed(1)
    latents = torch.randn(1, 4, 3, 16, 16)
    text = backbone.encode_prompt([""])
    site = next(s for s in backbone.sites if s.kind == "temporal" and s.level == 0)
    if site.layout == "video":
        # tokens (B, F*h*w, C) of the 3D self-attention: the token of cell (5, 9) in every frame
        transformer = backbone.denoiser.get_submodule(site.name)
        latents = torch.randn(1, 4, 3, 16, 20)
        cells = [f * 8 * 10 + 5 * 10 + 9 for f in range(3)]
    else:
        transformer = backbone.denoiser.get_submodule(site.name.split(".transformer_blocks.")[0])
    site = site.name

    def maps_with(change: float) -> torch.Tensor:
        def perturb(module, args):
            hidden = args[0].clone()
            if hidden.ndim == 3:
                hidden[:, cells] += change
            else:
                hidden[:, :, 5, 9] += change
            return (hidden, *args[1:])

        handle = transformer.register_forward_pre_hook(perturb)
        try:
            with backbone.controller.record(lambda s: s.name == site) as maps:
                backbone.predict_noise(latents, torch.tensor(10), text)
        finally:
            handle.remove()
        return maps[site][0]  # (h, w, heads, F, F)

    moved = (maps_with(3.0) - maps_with(0.0)).abs().amax(dim=(2, 3, 4))
    assert moved[5, 9] == moved.max()
    far = moved.clone()
    far[5, 9] = 0
    assert far.max() < 0.1 * moved[5, 9]


def test_parameter_groups_select_the_right_layers(backbone):
    temporal_layer = TEMPORAL_LAYERS[backbone.name]
    temporal = backbone.parameter_names("temporal")
    assert temporal and all(temporal_layer.search(n) for n in temporal)
    cross_kv = backbone.parameter_names("cross_kv")
    assert cross_kv and all(re.search(r"\.attn2\.to_[kv]\.", n) for n in cross_kv)
    assert not any(temporal_layer.search(n) for n in cross_kv)
    spatial = set(backbone.parameter_names("spatial"))
    assert spatial.isdisjoint(temporal) and set(cross_kv) <= spatial
    assert len(spatial) + len(temporal) == len(list(backbone.denoiser.parameters()))
    with pytest.raises(KeyError, match="no parameter group 'nope'"):
        backbone.parameter_names("nope")


def test_temporal_routing_is_the_temporal_attentions_queries_and_keys(backbone):
    routing = backbone.parameter_names("temporal_routing")
    assert set(routing) < set(backbone.parameter_names("temporal_attention"))
    assert all(re.search(r"\.(?:to_q|to_k|norm_q|norm_k)\.", n) for n in routing)
    assert any(".to_q." in n for n in routing) and any(".to_k." in n for n in routing)
    names = [name for name, _ in backbone.denoiser.named_modules()]
    targets = [n for n in names if re.fullmatch(backbone.lora_target(["temporal_routing"]), n)]
    temporal = {n for n in names if re.fullmatch(backbone.lora_target(["temporal"]), n)}
    assert targets and set(targets) <= temporal and all(n.endswith((".to_q", ".to_k")) for n in targets)


def test_lora_targets_hit_only_their_group(backbone):
    names = [name for name, _ in backbone.denoiser.named_modules()]
    temporal = [n for n in names if re.fullmatch(backbone.lora_target(["temporal"]), n)]
    cross_kv = [n for n in names if re.fullmatch(backbone.lora_target(["cross_kv"]), n)]
    temporal_layer = TEMPORAL_LAYERS[backbone.name]
    assert temporal and all(temporal_layer.search(n) for n in temporal)
    assert all(isinstance(backbone.denoiser.get_submodule(n), torch.nn.Linear) for n in temporal + cross_kv)
    assert cross_kv and all(n.endswith(("attn2.to_k", "attn2.to_v")) and not temporal_layer.search(n) for n in cross_kv)


def test_gradient_checkpointing_keeps_names_loss_and_gradients(backbone):
    names_before = [n for n, _ in backbone.denoiser.named_parameters()]
    latents = torch.randn(1, 4, 3, 8, 8)
    text = backbone.encode_prompt(["a red circle"])
    weight = backbone.denoiser.get_parameter(backbone.parameter_names("temporal_attention")[0])
    weight.requires_grad_(True)

    def loss_and_grad():
        weight.grad = None
        loss = backbone.predict_noise(latents, torch.tensor(500), text).square().mean()
        loss.backward()
        return loss.detach(), weight.grad.clone()

    plain_loss, plain_grad = loss_and_grad()
    backbone.enable_gradient_checkpointing()
    ckpt_loss, ckpt_grad = loss_and_grad()
    assert [n for n, _ in backbone.denoiser.named_parameters()] == names_before
    assert torch.allclose(plain_loss, ckpt_loss)
    assert torch.allclose(plain_grad, ckpt_grad, atol=1e-6)
    backbone.disable_gradient_checkpointing()


def test_vae_round_trip_shapes_and_scaling(backbone):
    pixels = torch.rand(2, backbone.pixel_frames(3), 3, 32, 48) * 2 - 1
    latents = backbone.encode_video(pixels)
    scale = backbone.vae_scale_factor
    assert latents.shape == (2, 4, 3, 32 // scale, 48 // scale)
    if backbone.name in PER_FRAME_AUTOENCODER:
        raw = backbone.vae.encode(pixels[0, :1]).latent_dist.mode()
        assert torch.allclose(latents[0, :, 0], raw[0] * backbone.vae.config.scaling_factor, atol=1e-5)
    else:
        raw = backbone.vae.encode(pixels[:1].transpose(1, 2)).latent_dist.mode()
        mean = torch.tensor(backbone.vae.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(backbone.vae.config.latents_std).view(1, -1, 1, 1, 1)
        assert torch.allclose(latents[:1], (raw - mean) / std, atol=1e-5)
    decoded = backbone.decode_latents(latents)
    assert decoded.shape == pixels.shape and decoded.abs().max() <= 1


def test_phrase_positions_and_token_ids(backbone):
    assert backbone.phrase_positions("a sks dog", "sks dog") == backbone.word_positions("a sks dog")[1:]
    assert len(backbone.token_ids("sks")) == 1
    with pytest.raises(ValueError, match="not found"):
        backbone.phrase_positions("a red circle", "sks")


def test_unseen_folder_with_other_scheduler_and_tokenizer_loads(tiny_model_dir, tmp_path):
    """A folder naming another scheduler class and shipping only tokenizer files still loads."""
    folder = tmp_path / "other"
    shutil.copytree(tiny_model_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    index["tokenizer"] = ["transformers", "NoSuchTokenizerClass"]
    (folder / "model_index.json").write_text(json.dumps(index))
    backbone = open_backbone(folder, "cpu")
    assert type(backbone.scheduler).__name__ == "EulerDiscreteScheduler"
    assert backbone.encode_prompt(["a red circle"]).shape[0] == 1


def test_missing_model_and_missing_component_are_reported(tiny_model_dir, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_backbone(tmp_path / "missing", "cpu")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(InputError, match=r"broken.*no 'vae/' subfolder"):
        open_backbone(broken, "cpu")


def test_word_tokenizer_spells_every_vocabulary_word_as_one_token():
    """BPE applies the lowest-ranked merge first: merges of "right" must not split "triangle"."""
    from motiontune.lab.shapeworld import VOCABULARY
    from motiontune.lab.tiny import build_word_tokenizer

    tokenizer = build_word_tokenizer([*VOCABULARY, "sks", "pll"], 24)
    for word in [*VOCABULARY, "sks", "pll"]:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert len(tokenizer("zq", add_special_tokens=False).input_ids) == 2


def test_phrase_cut_off_by_the_text_length_says_so(backbone):
    limit = backbone.tokenizer.model_max_length
    prompt = " ".join(["a"] * limit) + " sks"
    with pytest.raises(ValueError, match=f"beyond the text encoder's {limit} tokens"):
        backbone.phrase_positions(prompt, "sks")
    with pytest.raises(ValueError, match="not found"):
        backbone.phrase_positions("a red circle", "sks")


def test_frame_positions_round_trip_through_the_model_folder(backbone, any_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(any_model_dir, folder)
    backbone.add_frame_positions(6)
    torch.manual_seed(1)
    with torch.no_grad():
        for positions in backbone.frame_positions.values():
            positions.normal_()
    backbone.save_frame_positions(folder)
    loaded = open_backbone(folder, "cpu")
    assert set(loaded.frame_positions) == set(backbone.frame_positions)
    for name, positions in backbone.frame_positions.items():
        assert torch.equal(loaded.frame_positions[name], positions)
    latents, text = torch.randn(1, 4, 6, 8, 8), loaded.encode_prompt(["a red square"])
    assert torch.equal(
        loaded.predict_noise(latents, torch.tensor(10), text), backbone.predict_noise(latents, torch.tensor(10), text)
    )


def test_frame_positions_need_the_controller_and_matching_sites(backbone, any_model_dir, tmp_path):
    from safetensors.torch import save_file

    from motiontune.backbones import load_backbone
    from motiontune.errors import ConfigError

    folder = tmp_path / "model"
    shutil.copytree(any_model_dir, folder)
    backbone.add_frame_positions(4)
    backbone.save_frame_positions(folder)
    bare = load_backbone(folder)
    with pytest.raises(ConfigError, match=r"frame positions.*open_backbone"):
        bare.predict_noise(torch.randn(1, 4, 4, 8, 8), torch.tensor(10), bare.encode_prompt(["a"]))
    save_file(
        {"down_blocks.9.temp_attentions.0.transformer_blocks.0.attn1": torch.zeros(1, 4, 8)},
        folder / "frame_positions.safetensors",
    )
    with pytest.raises(InputError, match=r"frame_positions\.safetensors: frame positions are not for this model"):
        load_backbone(folder)


def test_every_backbone_member_the_rest_of_the_code_uses_is_declared_by_the_contract():
    """Methods, controls, training and sampling ask a backbone only what `Backbone` declares (abstract or
    concrete), so a second architecture knows from the base class alone what it must provide."""
    import re
    from pathlib import Path

    import motiontune
    from motiontune.backbones.base import Backbone

    declared = set(dir(Backbone)) | set(vars(Backbone).get("__annotations__", {}))
    declared |= {"denoiser", "vae", "text_encoder", "tokenizer", "scheduler", "path", "controller", "frame_positions"}
    root = Path(motiontune.__file__).parent
    used = {
        (match.group(1), path.name)
        for path in root.rglob("*.py")
        if "backbones" not in path.parts
        for match in re.finditer(r"backbone\.([A-Za-z_]\w*)", path.read_text())
    }
    assert sorted(pair for pair in used if pair[0] not in declared) == []
    assert {"predict_noise", "encode_video", "word_positions", "down_blocks_only"} <= Backbone.__abstractmethods__


def test_a_backbone_that_leaves_out_part_of_the_contract_cannot_be_built(tiny_model_dir):
    from motiontune.backbones.base import Backbone, load_components

    class Partial(Backbone):
        name = "partial"

    with pytest.raises(TypeError, match="abstract method"):
        Partial(load_components(tiny_model_dir))


@pytest.mark.parametrize(
    ("method", "options", "missing"),
    [
        ("motiondirector", {}, "LoRA target temporal"),
        ("newmove", {"spatial": "kv"}, "parameter group cross_kv"),
        ("motion-inversion", {}, "temporal attention"),
        ("motionbooth", {"class_word": "dog"}, "cross attention"),
    ],
)
def test_a_method_names_what_a_backbone_lacks(method, options, missing, tiny_model_dir):
    """Each method states its needs (`Method.requirements`); a backbone without one fails in one line naming
    the method and the need, before anything is injected."""
    from motiontune.backbones.base import load_components
    from motiontune.backbones.unet3d import UNet3DBackbone
    from motiontune.errors import ConfigError
    from motiontune.methods import create_method

    groups = {k: v for k, v in UNet3DBackbone.parameter_group_patterns.items() if f"parameter group {k}" != missing}
    targets = {k: v for k, v in UNet3DBackbone.lora_target_patterns.items() if f"LoRA target {k}" != missing}

    class Lacking(UNet3DBackbone):
        parameter_group_patterns: ClassVar[dict[str, str]] = groups
        lora_target_patterns: ClassVar[dict[str, str]] = targets

    backbone = Lacking(load_components(tiny_model_dir))
    backbone.sites = [site for site in backbone.sites if f"{site.kind} attention" != missing]
    expected = f"method '{method}' needs {missing}, which backbone 'unet3d' does not provide"
    with pytest.raises(ConfigError, match=expected):
        create_method(method, backbone, options, token="sks")
    assert missing in UNet3DBackbone(load_components(tiny_model_dir)).capabilities()
