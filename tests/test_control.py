"""MotionBooth's training-free controls: scripts, box paths, box edits as step hooks, latent shift, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from PIL import Image, ImageSequence

from motiontune.app.cli import main
from motiontune.attention import SubjectBox
from motiontune.control import (
    BoxControl,
    CameraShift,
    ControlOptions,
    MotionScript,
    SubjectPath,
    control_hooks,
    interpolate_boxes,
    motion_script,
    parse_box_option,
    parse_camera_speed,
    read_script,
    sampling_timesteps,
    shift_frame,
    with_subject,
)
from motiontune.errors import ConfigError, InputError
from motiontune.generation import GenerationConfig, generate_latents
from motiontune.lab.tiny import ZEROSCOPE_SCHEDULER
from motiontune.sampling import StepState, guided_prediction


@pytest.fixture
def backbone(unet3d_backbone):
    """The tiny UNet3D only: controls act through the attention controller and the contract;
    test_animatediff.py runs boxes and the camera pan on AnimateDiff."""
    return unet3d_backbone


SCRIPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "motionbooth_scripts"
SHIPPED = sorted(SCRIPTS.glob("*.json")) if SCRIPTS.is_dir() else []
CROSS_SITE = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
PROMPT = "a red sks square"


def write_script(folder: Path, content, name: str = "script.json") -> Path:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# ------------------------------------------------------------------------------------------ scripts


@pytest.mark.parametrize("path", SHIPPED or [None], ids=lambda p: p.stem if p else "absent")
def test_every_shipped_script_parses(path):
    if path is None:
        pytest.skip(f"shared MotionBooth scripts not found at {SCRIPTS}")
    content = json.loads(path.read_text())
    script = with_subject(read_script(path), "sks dog")
    assert script.source == str(path)
    assert script.prompt == content["prompt"].replace("[rare token] [class name]", "sks dog")
    assert "[" not in script.prompt
    assert script.camera_speed == tuple(content.get("camera_speed", (0.0, 0.0)))
    if "bbox" in content:
        assert [s.words for s in script.subjects] == ["sks dog"] * len(content["phrases"])
        for i, subject in enumerate(script.subjects):
            assert subject.keyframes == tuple(tuple(frame[i]) for frame in content["bbox"])
            boxes = subject.boxes(24)
            assert boxes.shape == (24, 4)
            assert torch.allclose(boxes[0], torch.tensor(content["bbox"][0][i]))
            assert torch.allclose(boxes[-1], torch.tensor(content["bbox"][-1][i]))
    else:
        assert script.subjects == ()


def test_the_two_keyframe_example_script():
    path = SCRIPTS / "customized_both__swim_coral.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    script = motion_script(script=path, subject="sks dog")
    assert script.prompt == "A sks dog swimming around the coral reef"
    assert script.camera_speed == (0.0, -0.2)
    (subject,) = script.subjects
    assert subject.keyframes == ((0.3, 0.6, 0.6, 0.9), (0.4, 0.1, 0.7, 0.4))


BAD_SCRIPTS = [
    ({"prompt": "a dog", "phrases": ["dog"], "bbox": [[[0.1, 0.1, 1.2, 0.5]]]}, "outside [0, 1]"),
    ({"prompt": "a dog", "phrases": ["dog"], "bbox": [[[-0.1, 0.1, 0.5, 0.5]]]}, "outside [0, 1]"),
    ({"prompt": "a dog", "phrases": ["dog"], "bbox": [[[0.5, 0.1, 0.5, 0.4]]]}, "x1 < x2"),
    ({"prompt": "a dog", "phrases": ["dog"], "bbox": [[[0.1, 0.6, 0.5, 0.4]]]}, "y1 < y2"),
    ({"prompt": "a dog", "phrases": ["dog"], "bbox": [[[0.1, 0.1, 0.5]]]}, "a box is [x1, y1, x2, y2]"),
    ({"prompt": "a dog", "camera_sped": [0.1, 0]}, "unknown field(s) camera_sped"),
    ({"camera_speed": [0.1, 0.0]}, "missing 'prompt'"),
    ({"prompt": ""}, "missing 'prompt'"),
    ({"prompt": "a dog", "bbox": [[[0.1, 0.1, 0.5, 0.5]]]}, "'bbox' needs 'phrases'"),
    ({"prompt": "a dog", "phrases": ["dog"], "bbox": [[[0.1, 0.1, 0.5, 0.5], [0, 0, 1, 1]]]}, "one box per phrase"),
    (
        {"prompt": "a dog", "phrases": ["dog"], "bbox": [[[0, 0, 1, 1]], [[0, 0, 1, 1]]], "bbox_proportions": [1, 2]},
        "bbox_proportions needs one positive number per segment",
    ),
    ({"prompt": "a dog", "camera_speed": [0.5]}, "camera speed is [dx, dy]"),
    ({"prompt": "a dog", "camera_speed": [1.5, 0]}, "within [-1, 1]"),
    ({"prompt": "a dog", "camera_speed": [True, 0]}, "finite number"),
    (["a dog"], "JSON object"),
]


@pytest.mark.parametrize(("content", "message"), BAD_SCRIPTS)
def test_script_errors_are_one_line_naming_the_file(tmp_path, content, message):
    path = write_script(tmp_path, content)
    with pytest.raises(ConfigError) as error:
        read_script(path)
    text = str(error.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_unreadable_scripts_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_script(tmp_path / "missing.json")
    with pytest.raises(InputError, match="invalid JSON"):
        read_script(write_script(tmp_path, "{'prompt': 1"))


def test_placeholder_needs_a_subject_and_options_override_the_script(tmp_path):
    path = write_script(
        tmp_path,
        {
            "prompt": "a [rare token] [class name] on the left",
            "phrases": ["[rare token] [class name]"],
            "bbox": [[[0.0, 0.0, 0.5, 0.5]], [[0.5, 0.5, 1.0, 1.0]]],
            "camera_speed": [0.3, 0.0],
        },
    )
    with pytest.raises(ConfigError, match="--subject"):
        motion_script(script=path)
    script = motion_script(script=path, subject="sks dog")
    assert script.prompt == "a sks dog on the left" and script.subjects[0].words == "sks dog"
    overridden = motion_script(
        "a red sks square", path, boxes={"sks": [[0.1, 0.1, 0.2, 0.2]]}, camera_speed=(0.0, -0.5)
    )
    assert overridden.prompt == "a red sks square"
    assert overridden.subjects == (SubjectPath("sks", ((0.1, 0.1, 0.2, 0.2),)),)
    assert overridden.camera_speed == (0.0, -0.5)
    with pytest.raises(ConfigError, match="missing prompt"):
        motion_script(boxes={"sks": [[0.1, 0.1, 0.2, 0.2]]})


def test_box_and_camera_options_parse_and_fail_clearly():
    path = parse_box_option("sks dog:0.1,0.1,0.4,0.4;0.6,0.6,0.9,0.9")
    assert path == SubjectPath("sks dog", ((0.1, 0.1, 0.4, 0.4), (0.6, 0.6, 0.9, 0.9)))
    assert parse_camera_speed("0.4,-0.2") == (0.4, -0.2)
    for text, message in [
        ("0.1,0.1,0.4,0.4", "expected WORDS:"),
        ("dog:0.1,0.1,0.4", "a box is"),
        ("dog:0.1,0.1,0.4,x", "four comma-separated numbers"),
        ("dog:0.5,0.1,0.4,0.4", "x1 < x2"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_box_option(text)
    with pytest.raises(ConfigError, match="DX,DY"):
        parse_camera_speed("left")


# ---------------------------------------------------------------------------------------- box paths


def test_keyframes_interpolate_on_a_hand_computed_case():
    """Keyframes at frames 0, 2 and 8 (proportions 1:3 over 9 frames), linear in between."""
    keyframes = ((0.0, 0.0, 0.2, 0.2), (0.4, 0.2, 0.6, 0.4), (0.4, 0.6, 0.6, 0.8))
    boxes = interpolate_boxes(keyframes, (1.0, 3.0), 9)
    expected = {
        0: (0.0, 0.0, 0.2, 0.2),
        1: (0.2, 0.1, 0.4, 0.3),
        2: (0.4, 0.2, 0.6, 0.4),
        5: (0.4, 0.4, 0.6, 0.6),
        8: (0.4, 0.6, 0.6, 0.8),
    }
    for frame, box in expected.items():
        assert torch.allclose(boxes[frame], torch.tensor(box), atol=1e-6), frame
    even = interpolate_boxes(keyframes[:2], None, 5)
    assert torch.allclose(even[:, 0], torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4]))
    assert torch.equal(interpolate_boxes(keyframes, None, 1), torch.tensor([keyframes[0]]))
    assert torch.equal(interpolate_boxes(keyframes[:1], None, 3), torch.tensor([keyframes[0]] * 3))


# ------------------------------------------------------------------------------------- box control


def _cross_maps(backbone, latents, text, uncond):
    with backbone.controller.record(lambda site: site.name == CROSS_SITE) as maps:
        guided_prediction(backbone, latents, torch.tensor(500), text, uncond, 3.0)
    return maps[CROSS_SITE]


def test_box_hook_edits_the_conditional_attention_only_where_it_should(backbone):
    frames, hw = 2, (16, 16)
    latents = torch.randn(1, 4, frames, *hw, generator=torch.Generator().manual_seed(0))
    text, uncond = backbone.encode_prompt([PROMPT]), backbone.encode_prompt([""])
    script = motion_script(PROMPT, boxes={"sks": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]})
    options = ControlOptions(box_strength=5.0, amplify_until=600)
    (hook,) = control_hooks(backbone, script, frames, [900, 500], options)
    assert isinstance(hook, BoxControl)
    heads = backbone.denoiser.get_submodule(CROSS_SITE).heads
    sks = backbone.phrase_positions(PROMPT, "sks")
    others = [p for p in range(1, len(backbone.token_ids(PROMPT)) + 1) if p not in sks]
    inside = torch.zeros(frames, *hw, dtype=torch.bool)
    inside[0, :8, :8] = inside[1, 8:, 8:] = True

    def split(maps):
        uncond_half, cond_half = maps.view(2, frames, heads, *hw, -1).unbind(0)
        return uncond_half, cond_half.mean(1)

    plain_uncond, plain = split(_cross_maps(backbone, latents, text, uncond))
    hook.before_step(StepState(0, 900, 0.9, 2, latents, None))
    amp_uncond, amplified = split(_cross_maps(backbone, latents, text, uncond))
    hook.before_step(StepState(1, 500, 0.5, 2, latents, None))
    _, late = split(_cross_maps(backbone, latents, text, uncond))
    hook.after_sampling()
    assert backbone.controller.box_edit is None
    _, after = split(_cross_maps(backbone, latents, text, uncond))

    assert torch.allclose(amp_uncond, plain_uncond, atol=1e-6)
    for edited in (amplified, late):
        subject = edited[..., sks].sum(-1)
        assert torch.all(subject[~inside] == 0) and torch.all(edited[..., others] == 0)
        assert subject[inside].mean() > plain[..., sks].sum(-1)[inside].mean()
    assert amplified[..., sks][inside].mean() > late[..., sks][inside].mean()
    assert torch.allclose(after, plain, atol=1e-6)

    kept = ControlOptions(box_strength=5.0, amplify_until=600, keep_other_words=True)
    (keep_hook,) = control_hooks(backbone, script, frames, [900, 500], kept)
    keep_hook.before_step(StepState(0, 900, 0.9, 2, latents, None))
    _, kept_map = split(_cross_maps(backbone, latents, text, uncond))
    keep_hook.after_sampling()
    assert torch.all(kept_map[..., sks].sum(-1)[~inside] == 0)
    assert torch.all(kept_map[..., others].sum(-1) > 0)


def test_background_words_stay_outside_the_boxes(backbone):
    frames = 1
    script = MotionScript(PROMPT, (SubjectPath("sks", ((0.0, 0.0, 0.5, 0.5),)),), background="red")
    (hook,) = control_hooks(backbone, script, frames, [900])
    edit = hook.edit
    red, sks = backbone.phrase_positions(PROMPT, "red"), backbone.phrase_positions(PROMPT, "sks")
    bias, suppress = edit.bias_and_mask(frames, (10, 18), 8)
    bias, suppress = bias.view(10, 18, 8), suppress.view(10, 18, 8)
    inside = torch.zeros(10, 18, dtype=torch.bool)
    inside[:5, :9] = True
    assert torch.all(suppress[..., red[0]] == inside) and torch.all(suppress[..., sks[0]] == ~inside)
    assert torch.allclose(bias[..., red[0]][~inside], torch.full((135,), 10.0 * 45 / 180))
    assert torch.all(bias[..., red[0]][inside] == 0)


def test_generation_with_controls_is_repeatable_and_differs_from_plain(backbone):
    """A second run with the same hooks starts from the script's boxes again (the official issue #6)."""
    settings = GenerationConfig(frames=3, height=32, width=32, steps=4, guidance_scale=3.0, progress=False)
    script = motion_script(PROMPT, boxes={"sks": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]}, camera_speed=(0.5, 0))
    timesteps = sampling_timesteps(backbone, "ddim", settings.steps)
    options = ControlOptions(amplify_until=500, shift_window=(800, 300))
    hooks = control_hooks(backbone, script, settings.frames, timesteps, options)
    assert [type(hook) for hook in hooks] == [CameraShift, BoxControl]
    boxes = hooks[1].edit.subjects[0].boxes
    initial = boxes.clone()

    first = generate_latents(backbone, [PROMPT], (), settings, hooks)
    assert torch.equal(boxes, initial)
    second = generate_latents(backbone, [PROMPT], (), settings, hooks)
    assert torch.equal(first, second)
    assert backbone.controller.box_edit is None
    assert not torch.allclose(first, generate_latents(backbone, [PROMPT], (), settings), atol=1e-4)


# ------------------------------------------------------------------------------------- latent shift


def _indexed_latents(frames: int, h: int, w: int) -> torch.Tensor:
    """Channels: column, row, frame, and a unique id `frame * 10000 + row * 100 + column`."""
    f, r, c = torch.meshgrid(torch.arange(frames), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([c, r, f, f * 10000 + r * 100 + c]).float()[None]


def _levels(timesteps: list[int]) -> list[float]:
    """Noise levels of a 1000-step DDPM model's timesteps."""
    return [t / 1000 for t in timesteps]


def _run_shift(hook: CameraShift, latents: torch.Tensor, timesteps: list[int], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    for index, timestep in enumerate(timesteps):
        state = StepState(index, timestep, timestep / 1000, len(timesteps), latents, generator)
        hook.before_step(state)
        latents = state.latents
    return latents


def test_horizontal_shift_moves_content_and_fills_from_the_same_row_outside_the_box():
    frames, h, w = 4, 6, 8
    box = SubjectBox([1], torch.tensor([[0.0, 0.0, 0.5, 1.0]] * frames))
    hook = CameraShift((0.5, 0.0), _levels([900, 700, 500, 300, 100]), (800, 200), [box])
    assert hook.window_steps == {1: 1, 2: 2, 3: 3}
    shifted = _run_shift(hook, _indexed_latents(frames, h, w), [900, 700, 500, 300, 100])[0]
    for f, expected in enumerate([0, 1, 3, 4]):  # round(0.5 * 8 * f / 3)
        column, row, frame, ident = shifted[:, f]
        kept = slice(0, w - expected)
        assert torch.equal(column[:, kept], torch.arange(expected, w).float().expand(h, -1)), f
        assert torch.all(frame == f) and torch.equal(row, torch.arange(h).float()[:, None].expand(h, w))
        filled_from = ident[:, w - expected :] % 100
        assert torch.all(filled_from >= 4), "filled from the subject's box"
        assert torch.allclose(box.boxes[f], torch.tensor([-expected / w, 0.0, 0.5 - expected / w, 1.0]))


def test_what_a_multistep_sampler_remembers_moves_with_the_latents():
    frames, h, w = 3, 6, 8
    latents = _indexed_latents(frames, h, w)
    box = SubjectBox([1], torch.tensor([[0.0, 0.0, 0.5, 0.5]] * frames))
    hook = CameraShift((0.5, 0.5), _levels([700, 500]), (800, 400), [box])
    state = StepState(0, 700, 0.7, 2, latents, torch.Generator().manual_seed(0), [latents * 10, latents - 1])
    hook.before_step(state)
    assert not torch.equal(state.latents, latents)
    assert torch.equal(state.history[0], state.latents * 10) and torch.equal(state.history[1], state.latents - 1)


def test_vertical_shift_fills_from_the_same_column():
    frames, h, w = 3, 8, 5
    hook = CameraShift((0.0, -0.5), _levels([700, 500]), (800, 400))
    shifted = _run_shift(hook, _indexed_latents(frames, h, w), [700, 500])[0]
    for f, expected in enumerate([0, 2, 4]):  # content moves down by round(0.5 * 8 * f / 2)
        column, row, frame, _ = shifted[:, f]
        assert torch.equal(row[expected:], torch.arange(h - expected).float()[:, None].expand(-1, w)), f
        assert torch.equal(column, torch.arange(w).float().expand(h, -1)) and torch.all(frame == f)


def test_both_fill_strips_come_from_the_unshifted_frame():
    """Eq. 8 samples h_x and h_y from z_t before the shift: the corner filled by the vertical strip holds
    tokens of the original frame's columns, not of the horizontally shifted one."""
    h, w = 6, 6
    frame = _indexed_latents(1, h, w)[:, :, 0]
    (shifted,) = shift_frame([frame], 2, 2, [], torch.Generator().manual_seed(0))
    column = shifted[0, 0]
    # the bottom strip (vertical fill) sits under every column c of the shifted frame; before the shift that
    # column held original column c + 2 (or horizontal fill tokens): Eq. 8 fills it from original column c
    assert torch.equal(column[h - 2 :, :], torch.arange(w).float().expand(2, -1))
    assert torch.equal(column[: h - 2, : w - 2], torch.arange(2, w).float().expand(h - 2, -1))


def test_boxes_of_every_subject_follow_the_shift():
    frames, h, w = 3, 8, 8
    first = SubjectBox([1], torch.tensor([[0.5, 0.5, 0.75, 0.75]] * frames))
    second = SubjectBox([2], torch.tensor([[0.0, 0.25, 0.25, 0.5]] * frames))
    originals = [first.boxes.clone(), second.boxes.clone()]
    hook = CameraShift((0.5, 0.25), _levels([700, 650, 500]), (800, 600), [first, second])
    _run_shift(hook, _indexed_latents(frames, h, w), [700, 650, 500])
    moved = torch.tensor([[0, 0], [2, 1], [4, 2]], dtype=torch.float32) / torch.tensor([w, h])
    for subject, original in zip((first, second), originals, strict=True):
        assert torch.allclose(subject.boxes, original - moved.repeat(1, 2))


@pytest.mark.parametrize("speed", [(0.45, -0.3), (-0.5, 0.3)])
def test_total_shift_is_independent_of_the_number_of_steps(speed):
    frames, h, w = 6, 10, 18
    results = []
    for steps in (10, 25, 50):
        scheduler = DDIMScheduler(**ZEROSCOPE_SCHEDULER)
        scheduler.set_timesteps(steps)
        timesteps = [int(t) for t in scheduler.timesteps]
        box = SubjectBox([1], torch.tensor([[0.2, 0.2, 0.4, 0.4]] * frames))
        hook = CameraShift(speed, _levels(timesteps), (800, 600), [box])
        assert len(hook.window_steps) == {10: 2, 25: 5, 50: 10}[steps]
        results.append((_run_shift(hook, _indexed_latents(frames, h, w), timesteps), hook.moved, box.boxes))
    last = round(abs(speed[0]) * w), round(abs(speed[1]) * h)
    assert [abs(v) for v in results[0][1][-1]] == list(last)
    for latents, moved, boxes in results[1:]:
        assert moved == results[0][1] and torch.allclose(boxes, results[0][2])
        for f, (dx, dy) in enumerate(moved):
            rows = slice(max(-dy, 0), h - max(dy, 0))
            cols = slice(max(-dx, 0), w - max(dx, 0))
            assert torch.equal(latents[0, :, f, rows, cols], results[0][0][0, :, f, rows, cols])


def test_few_steps_still_shift_once_after_the_window_start():
    hook = CameraShift((0.5, 0.0), _levels([501, 1]), (800, 600))
    assert hook.window_steps == {0: 1}
    shifted = _run_shift(hook, _indexed_latents(2, 2, 4), [501, 1])[0]
    assert torch.equal(shifted[0, 1, :, :2], torch.tensor([[2.0, 3.0]] * 2))


# ---------------------------------------------------------------------------------------------- CLI


def _gif(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def test_cli_generate_with_a_script(tiny_model_dir, tmp_path, capsys):
    script = write_script(
        tmp_path,
        {
            "prompt": "A [rare token] [class name] swimming around the coral reef",
            "phrases": ["[rare token] [class name]"],
            "bbox": [[[0.3, 0.6, 0.6, 0.9]], [[0.4, 0.1, 0.7, 0.4]]],
            "camera_speed": [0.0, -0.5],
        },
    )
    common = ["generate", "--model", str(tiny_model_dir), "--script", str(script), "--subject", "sks dog"]
    common += ["--steps", "3", "--frames", "4", "--height", "32", "--width", "32", "--quiet"]
    assert main([*common, "--output", str(tmp_path / "scripted.mp4")]) == 0
    assert "mp4:" in capsys.readouterr().out and (tmp_path / "scripted.gif").exists()
    assert main([*common, "--camera-speed", "0,0", "--output", str(tmp_path / "still.mp4")]) == 0
    assert _gif(tmp_path / "scripted.gif").shape == (4, 32, 32, 3)
    assert not np.array_equal(_gif(tmp_path / "scripted.gif"), _gif(tmp_path / "still.gif"))


def test_cli_control_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    bad = write_script(tmp_path, {"prompt": "a dog", "phrases": ["dog"], "bbox": [[[0.6, 0.1, 0.2, 0.4]]]})
    base = ["generate", "--model", str(tiny_model_dir), "--steps", "2", "--quiet", "--output", str(tmp_path / "x.mp4")]
    assert main([*base, "--script", str(bad)]) == 2
    error = capsys.readouterr().err.strip()
    assert str(bad) in error and "x1 < x2" in error and "\n" not in error
    assert main([*base, "--prompt", PROMPT, "--box", "sks:0.1,0.1,0.4"]) == 2
    assert "a box is" in capsys.readouterr().err
    assert main([*base, "--prompt", PROMPT, "--box", "dog:0.1,0.1,0.4,0.4"]) == 2
    assert "'dog' are not in the prompt" in capsys.readouterr().err
    assert main(base) == 2
    assert "--prompt" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_cli_help_documents_the_controls(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    for option in ("--script", "--subject", "--box", "--camera-speed", "--box-strength", "--amplify-until"):
        assert option in text
    assert "--keep-other-words" in text and "--shift-window" in text
