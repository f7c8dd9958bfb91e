"""Attention maps of prompt words during sampling (`generate --attention-maps`), on every backbone."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from backbone_facts import clip_frames
from cli_helpers import error_line
from motiontune.app.cli import main
from motiontune.attention_maps import WordAttention, heat_overlay
from motiontune.control import ControlOptions, control_hooks, motion_script, sampling_timesteps
from motiontune.generation import GenerationConfig, generate_latents

PROMPT = "a photo of sks dog on the grass"


def _settings(backbone, steps: int) -> GenerationConfig:
    return GenerationConfig(
        frames=clip_frames(backbone, 2), height=32, width=32, steps=steps, guidance_scale=3.0, progress=False
    )


def test_a_words_map_is_its_tokens_attention_on_the_conditional_rows_averaged_by_hand(backbone):
    """One step under guidance: the map equals the full recording of the same call, read by hand (second half of
    the batch, mean over heads, the word's tokens and the level's sites)."""
    settings = _settings(backbone, 1)
    attention = WordAttention(backbone, PROMPT, ["sks dog"])
    positions = backbone.phrase_positions(PROMPT, "sks dog")
    with attention.recording(), backbone.controller.record(lambda site: site.name in attention.sites) as full:
        generate_latents(backbone, [PROMPT], (), settings, [attention])
    assert attention.sites and set(full) == attention.sites
    by_hand = torch.stack([full[name][1].float().mean(1)[..., positions].mean(-1) for name in full]).mean(0)
    (word_map,) = attention.maps().values()
    assert word_map.shape == by_hand.shape and word_map.shape[0] == backbone.latent_frames(settings.frames)
    torch.testing.assert_close(word_map, by_hand)
    assert (word_map >= 0).all() and (word_map <= 1).all()


def test_box_control_moves_a_words_attention_into_its_box(backbone):
    """With a box on the left half, the word's attention on the left half rises well above its share without."""
    settings = _settings(backbone, 3)
    script = motion_script(PROMPT, boxes={"sks dog": [[0.0, 0.0, 0.5, 1.0]]})
    timesteps = sampling_timesteps(backbone, None, settings.steps)
    options = ControlOptions(box_strength=5.0, amplify_until=0)

    def left_share(hooks) -> float:
        attention = WordAttention(backbone, PROMPT, ["sks dog"])
        with attention.recording():
            generate_latents(backbone, [PROMPT], (), settings, [*hooks, attention])
        word_map = attention.maps()["sks dog"]
        return float(word_map[..., : word_map.shape[-1] // 2].sum() / word_map.sum())

    plain = left_share([])
    steered = left_share(control_hooks(backbone, script, settings.frames, timesteps, options))
    assert steered > 0.95 and steered > plain + 0.2


def test_heat_overlay_marks_where_the_map_is_high():
    frames = np.full((3, 16, 16, 3), 128, dtype=np.uint8)
    attention = torch.zeros(2, 4, 4)
    attention[:, 0, 0] = 1.0
    overlay = heat_overlay(frames, attention)
    assert overlay.shape == frames.shape and overlay.dtype == np.uint8
    hot, cold = overlay[:, 0, 0].astype(int), overlay[:, -1, -1].astype(int)
    assert (hot[:, 0] > cold[:, 0]).all() and (cold[:, 2] > cold[:, 0]).all()  # red where high, blue where low


def test_cli_writes_the_attention_sheet_and_refuses_words_not_in_the_prompt(any_model_dir, tmp_path, capsys):
    output = tmp_path / "v.mp4"
    common = ["generate", "--model", str(any_model_dir), "--prompt", PROMPT, "--steps", "2", "--quiet"]
    common += ["--height", "32", "--width", "32", "--output", str(output)]
    assert main([*common, "--attention-maps", "sks dog", "--attention-maps", "photo"]) == 0
    assert "attention: " in capsys.readouterr().out
    sheet = tmp_path / "v.attention.png"
    with Image.open(sheet) as image:
        plain = Image.open(tmp_path / "v.png")
        assert image.height > 2 * plain.height  # the video and one row per word
    for file in tmp_path.iterdir():
        file.unlink()
    assert main([*common, "--attention-maps", "cat"]) == 2
    assert "--attention-maps: 'cat' is not in the prompt" in error_line(capsys)
    assert not any(tmp_path.iterdir())
    assert main([*common, "--attention-maps", "dog"]) == 0
    capsys.readouterr()
    assert main([*common, "--attention-maps", "dog"]) == 2
    assert "already exists; pass --overwrite" in error_line(capsys)
