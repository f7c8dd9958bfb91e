"""MotionBooth's training-free controls at inference: subject boxes and camera motion (Wu et al. 2024, Sec. 3.3).

* **Box control** (Eq. 6-7): the subject's prompt tokens are amplified inside the subject's box by
  `alpha * (1 - |B| / |Q|)` while the timestep is above `amplify_until` (tau), and suppressed outside
  the box at every step. `BoxControl` arms the attention controller's `BoxEdit` step by step.
* **Camera control** (Eq. 8, latent shift): inside a timestep window the noisy latent of frame `f`
  is shifted by a growing share of `speed * size * f / (F - 1)` latent cells, so the last frame ends
  `speed` of the frame away; the exposed strip is filled with tokens drawn from the same row (or
  column) of the same frame, outside the subject boxes, and the boxes move with the scene.

Both come from a `MotionScript`: the official JSON control script (`prompt`, `phrases`, `bbox`,
`bbox_proportions`, `camera_speed`, `bg_phrase`) or the same content given as options.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .attention import AttentionController, BoxEdit, SubjectBox, box_span
from .backbones.base import Backbone
from .diffusion import window_level
from .errors import ConfigError, InputError
from .sampling import StepHook, StepState, make_scheduler
from .utils import check_regular_file

Box = tuple[float, float, float, float]

SCRIPT_FIELDS = ("prompt", "phrases", "bbox", "bbox_proportions", "camera_speed", "bg_phrase")
PLACEHOLDER = "[rare token] [class name]"
PLACEHOLDER_PARTS = ("[rare token]", "[class name]")


@dataclass(frozen=True)
class SubjectPath:
    """One subject: the prompt words that name it and its box keyframes (x1, y1, x2, y2 in [0, 1]).

    `proportions` are the relative durations of the segments between keyframes (one per segment);
    `None` spreads the keyframes evenly over the video.
    """

    words: str
    keyframes: tuple[Box, ...]
    proportions: tuple[float, ...] | None = None

    def boxes(self, frames: int) -> torch.Tensor:
        """Per-frame boxes `(F, 4)` interpolated linearly between the keyframes."""
        return interpolate_boxes(self.keyframes, self.proportions, frames)


@dataclass(frozen=True)
class MotionScript:
    """What to generate and how things move: prompt, subject box paths, camera speed.

    `camera_speed` `(c_x, c_y)` is the fraction of the frame width / height the camera travels over
    the video: positive x pans right (content moves left), positive y moves down (content moves up).
    `background` names prompt words kept outside the boxes (the official `bg_phrase`).
    """

    prompt: str | None = None
    subjects: tuple[SubjectPath, ...] = ()
    camera_speed: tuple[float, float] = (0.0, 0.0)
    background: str | None = None
    source: str = "motion script"


@dataclass
class ControlOptions:
    """Strengths and windows of the controls, in timesteps so they do not depend on the sampler or step count.

    Defaults are the official ones at 50 DDIM steps (t_i = 981 - 20 i): alpha 10, amplification for
    steps 0-14 (t > 700), latent shift for steps 10-19 (800 >= t > 600).
    """

    box_strength: float = 10.0
    amplify_until: int = 700
    keep_other_words: bool = False
    shift_window: tuple[int, int] = (800, 600)

    def __post_init__(self):
        start, end = self.shift_window
        if start <= end:
            raise ConfigError(
                f"--shift-window START,END must have START > END (timesteps count down), got {start},{end}"
            )
        if not (math.isfinite(self.box_strength) and self.box_strength >= 0):
            raise ConfigError(f"--box-strength must be a finite number >= 0, got {self.box_strength}")

    def box_edit(
        self, subjects: list[SubjectBox], word_positions: list[int], background: list[int] | None = None
    ) -> BoxEdit:
        """The box edit these options ask for, amplifying (`BoxControl` switches that per step)."""
        return BoxEdit(
            subjects,
            strength=self.box_strength,
            word_positions=list(word_positions),
            suppress_other_words=not self.keep_other_words,
            background_positions=background or [],
        )


# ----------------------------------------------------------------------------------------- box paths


def interpolate_boxes(keyframes: Sequence[Box], proportions: Sequence[float] | None, frames: int) -> torch.Tensor:
    """Per-frame boxes `(F, 4)`: keyframe k sits at frame `(F - 1) * sum(p[:k]) / sum(p)`, linear in between.

    Unlike the official `interpolate_bbox` (rounded segment lengths), the last frame reaches the last
    keyframe and every frame gets a box whatever the rounding.
    """
    keys = np.asarray(keyframes, dtype=np.float64).reshape(-1, 4)
    if frames == 1 or len(keys) == 1:
        return torch.tensor(np.repeat(keys[:1], frames, axis=0), dtype=torch.float32)
    weights = np.ones(len(keys) - 1) if proportions is None else np.asarray(proportions, dtype=np.float64)
    positions = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()]) * (frames - 1)
    steps = np.arange(frames)
    boxes = np.stack([np.interp(steps, positions, keys[:, coord]) for coord in range(4)], axis=1)
    return torch.tensor(boxes, dtype=torch.float32)


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def checked_box(values, where: str) -> Box:
    """A box `[x1, y1, x2, y2]` inside the unit square with x1 < x2 and y1 < y2."""
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        raise ConfigError(f"{where}: a box is [x1, y1, x2, y2], got {values!r}")
    x1, y1, x2, y2 = (_number(v, where) for v in values)
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        raise ConfigError(f"{where}: box {list(values)} is outside [0, 1] (coordinates are fractions of the frame)")
    if x1 >= x2 or y1 >= y2:
        raise ConfigError(f"{where}: box {list(values)} needs x1 < x2 and y1 < y2")
    return (x1, y1, x2, y2)


def checked_speed(values, where: str) -> tuple[float, float]:
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        raise ConfigError(f"{where}: camera speed is [dx, dy], got {values!r}")
    speed = tuple(_number(v, where) for v in values)
    if not all(-1.0 <= v <= 1.0 for v in speed):
        raise ConfigError(f"{where}: camera speed {list(values)} must be within [-1, 1] (fractions of the frame)")
    return speed


def _checked_proportions(values, segments: int, where: str) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) != segments:
        raise ConfigError(
            f"{where}: bbox_proportions needs one positive number per segment between keyframes ({segments}), "
            f"got {values!r}"
        )
    proportions = tuple(_number(v, f"{where}: bbox_proportions") for v in values)
    if any(p <= 0 for p in proportions):
        raise ConfigError(f"{where}: bbox_proportions must all be positive, got {values!r}")
    return proportions


# ------------------------------------------------------------------------------------ scripts, options


def _fill_placeholder(text: str, subject: str | None, where: str, what: str) -> str:
    if subject is not None:
        text = text.replace(PLACEHOLDER, subject)
    if any(part in text for part in PLACEHOLDER_PARTS):
        raise ConfigError(
            f"{where}: {what} {text!r} has the placeholder '{PLACEHOLDER}'; "
            "give the subject's words with --subject (e.g. 'sks dog')"
        )
    return text


def read_script(path: str | os.PathLike) -> MotionScript:
    """Read and check an official MotionBooth control script (placeholders kept; see `with_subject`)."""
    where = str(path)
    check_regular_file(Path(path), "script file")
    try:
        with open(path) as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{where}: cannot read script ({error})") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{where}: invalid JSON ({error})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to be a control script") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{where}: a script is a JSON object with the fields {', '.join(SCRIPT_FIELDS)}")
    unknown = [key for key in content if key not in SCRIPT_FIELDS]
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(SCRIPT_FIELDS)})")
    prompt = content.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: missing 'prompt' (a non-empty string)")
    phrases = content.get("phrases", [])
    if not isinstance(phrases, list) or not all(isinstance(p, str) and p.strip() for p in phrases):
        raise ConfigError(f"{where}: 'phrases' must be a list of non-empty strings, got {phrases!r}")
    subjects: tuple[SubjectPath, ...] = ()
    keyframes = content.get("bbox")
    if keyframes is not None:
        subjects = _script_subjects(keyframes, phrases, content.get("bbox_proportions"), where)
    elif "bbox_proportions" in content:
        raise ConfigError(f"{where}: 'bbox_proportions' given without 'bbox'")
    background = content.get("bg_phrase")
    if background is not None and not (isinstance(background, str) and background.strip()):
        raise ConfigError(f"{where}: 'bg_phrase' must be a non-empty string, got {background!r}")
    return MotionScript(
        prompt=prompt,
        subjects=subjects,
        camera_speed=checked_speed(content.get("camera_speed", [0.0, 0.0]), f"{where}: camera_speed"),
        background=background,
        source=where,
    )


def _script_subjects(keyframes, phrases: list[str], proportions, where: str) -> tuple[SubjectPath, ...]:
    """The official `bbox` layout: a list over keyframes, each a list with one box per phrase."""
    if not phrases:
        raise ConfigError(f"{where}: 'bbox' needs 'phrases' naming the boxed subjects")
    if not isinstance(keyframes, list) or not keyframes:
        raise ConfigError(f"{where}: 'bbox' must be a non-empty list of keyframes, each a list of boxes")
    for k, frame in enumerate(keyframes):
        if not isinstance(frame, list) or len(frame) != len(phrases):
            raise ConfigError(
                f"{where}: bbox keyframe {k} must list one box per phrase ({len(phrases)}), got {frame!r}"
            )
    if proportions is not None:
        proportions = _checked_proportions(proportions, len(keyframes) - 1, where)
    return tuple(
        SubjectPath(
            words=phrase,
            keyframes=tuple(checked_box(frame[i], f"{where}: bbox keyframe {k}") for k, frame in enumerate(keyframes)),
            proportions=proportions,
        )
        for i, phrase in enumerate(phrases)
    )


def with_subject(script: MotionScript, subject: str | None) -> MotionScript:
    """Replace the '[rare token] [class name]' placeholder in the prompt, subject words and background words."""
    where = script.source

    def filled(text: str | None, what: str) -> str | None:
        return None if text is None else _fill_placeholder(text, subject, where, what)

    subjects = tuple(replace(path, words=filled(path.words, "phrase")) for path in script.subjects)
    return replace(
        script,
        prompt=filled(script.prompt, "prompt"),
        subjects=subjects,
        background=filled(script.background, "bg_phrase"),
    )


def parse_box_option(text: str) -> SubjectPath:
    """`WORDS:x1,y1,x2,y2[;x1,y1,x2,y2...]`: a subject's words and keyframes spread evenly over the video."""
    where = f"--box {text!r}"
    words, colon, boxes = text.rpartition(":")
    if not colon or not words.strip():
        raise ConfigError(f"{where}: expected WORDS:x1,y1,x2,y2[;x1,y1,x2,y2...]")
    keyframes = []
    for part in boxes.split(";"):
        try:
            values = [float(v) for v in part.split(",")]
        except ValueError:
            raise ConfigError(f"{where}: box {part!r} is not four comma-separated numbers") from None
        keyframes.append(checked_box(values, where))
    return SubjectPath(words=words.strip(), keyframes=tuple(keyframes))


def parse_camera_speed(text: str) -> tuple[float, float]:
    """`DX,DY` as fractions of the frame width and height travelled over the video."""
    where = f"--camera-speed {text!r}"
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{where}: expected two comma-separated numbers DX,DY") from None
    return checked_speed(values, where)


def parse_shift_window(text: str) -> tuple[int, int]:
    """`START,END` timesteps; the shift happens at steps with START >= t > END."""
    try:
        start, end = (int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--shift-window {text!r}: expected two integer timesteps START,END") from None
    return start, end


def motion_script(
    prompt: str | None = None,
    script: str | os.PathLike | None = None,
    subject: str | None = None,
    boxes: Mapping[str, Sequence[Sequence[float]]] | Sequence[SubjectPath] | None = None,
    camera_speed: Sequence[float] | None = None,
) -> MotionScript:
    """The script file (if any) with the prompt, boxes and camera speed given directly taking precedence.

    `boxes` maps a subject's prompt words to its keyframe boxes (spread evenly), or lists `SubjectPath`s;
    given boxes replace all of the script's.
    """
    result = read_script(script) if script is not None else MotionScript(source="options")
    if prompt is not None:
        result = replace(result, prompt=prompt)
    if boxes is not None:
        if isinstance(boxes, Mapping):
            paths = tuple(
                SubjectPath(words, tuple(checked_box(box, f"boxes[{words!r}]") for box in keyframes))
                for words, keyframes in boxes.items()
            )
        else:
            paths = tuple(boxes)
        if any(not path.keyframes for path in paths):
            raise ConfigError("boxes: every subject needs at least one box")
        result = replace(result, subjects=paths, source=f"{result.source} with boxes from options")
    if camera_speed is not None:
        result = replace(result, camera_speed=checked_speed(list(camera_speed), "camera speed"))
    if not result.prompt:
        raise ConfigError("missing prompt: give --prompt or a --script with a 'prompt'")
    return with_subject(result, subject)


# ------------------------------------------------------------------------------------------- hooks


class BoxControl:
    """Step hook arming the controller's box edit: amplify while the noise level is above `amplify_until` / 1000
    (t > amplify_until on a 1000-step DDPM model), suppress always.

    The edit holds the subjects' box tensors themselves, so a `CameraShift` that moves them in place
    is seen by the next denoiser call. After sampling the controller gets back its previous edit.
    """

    def __init__(self, controller: AttentionController, edit: BoxEdit, amplify_until: int):
        self.controller = controller
        self.edit = edit
        self.amplify_until = amplify_until
        self._previous: BoxEdit | None = None
        self._armed = False

    def before_step(self, state: StepState) -> None:
        if not self._armed:
            self._previous, self._armed = self.controller.box_edit, True
        self.edit.amplify = state.noise_level > window_level(self.amplify_until)
        self.controller.box_edit = self.edit

    def after_sampling(self) -> None:
        if self._armed:
            self.controller.box_edit, self._armed = self._previous, False


def _rounded(value: float) -> int:
    """Nearest integer, halves away from zero (symmetric for left and right pans)."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def box_cells(boxes: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Cells `(h, w)` covered by any of the boxes `(4,)`, rounded to the grid as the box edit does."""
    h, w = grid
    covered = torch.zeros(h, w, dtype=torch.bool)
    for x1, y1, x2, y2 in (box.tolist() for box in boxes):
        (r1, r2), (c1, c2) = box_span(y1, y2, h), box_span(x1, x2, w)
        covered[r1:r2, c1:c2] = True
    return covered


def _row_picks(blocked: torch.Tensor, count: int, generator) -> torch.Tensor:
    """`count` cell indices per row of `blocked` `(rows, cols)`, drawn without replacement from the free
    cells; a row with fewer free cells than `count` also draws from its blocked cells, after the free ones."""
    device = generator.device if generator is not None else None
    keys = torch.rand(blocked.shape, generator=generator, device=device).cpu() + 2.0 * blocked
    return keys.argsort(dim=1)[:, :count]


def _gather_rows(frame: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """The tokens at `picks` `(rows, count)` of every row of `frame` `(B, C, rows, cols)`."""
    batch, channels, rows = frame.shape[:3]
    return frame.gather(-1, picks.to(frame.device).expand(batch, channels, rows, picks.shape[1]))


def shift_frame(
    frames: Sequence[torch.Tensor], dx: int, dy: int, boxes: Sequence[torch.Tensor], generator: torch.Generator | None
) -> list[torch.Tensor]:
    """Shift one frame `(B, C, h, w)` of the latent, and of what a multistep scheduler remembers of it
    (`frames`, all alike), by `dx` columns and `dy` rows, moving `boxes` in place (Eq. 8:
    h_x = SampleHorizontal(z_t, B, c_x), h_y = SampleVertical(z_t, B, c_y), z_t <- Fill(Crop(Shift(z_t)), h_x, h_y)).

    Positive `dx` moves content left, positive `dy` moves it up. Both exposed strips are filled with tokens
    sampled from the unshifted frame, as Eq. 8 and the official code take them: from the same row (horizontal
    shift) or column (vertical shift), outside the boxes; every tensor is filled from the same cells.
    """
    h, w = frames[0].shape[-2:]
    blocked = box_cells(boxes, (h, w))
    row_picks = _row_picks(blocked, abs(dx), generator) if dx else None
    column_picks = _row_picks(blocked.T, abs(dy), generator) if dy else None
    shifted = []
    for frame in frames:
        moved = frame
        if row_picks is not None:
            fill = _gather_rows(frame, row_picks)
            moved = torch.cat([moved[..., dx:], fill], -1) if dx > 0 else torch.cat([fill, moved[..., :dx]], -1)
        if column_picks is not None:
            fill = _gather_rows(frame.transpose(-1, -2), column_picks).transpose(-1, -2)
            moved = torch.cat([moved[..., dy:, :], fill], -2) if dy > 0 else torch.cat([fill, moved[..., :dy, :]], -2)
        shifted.append(moved)
    for box in boxes:
        box[[0, 2]] -= dx / w
        box[[1, 3]] -= dy / h
    return shifted


class CameraShift:
    """Step hook of the latent shift: the camera travels `speed` of the frame over the video.

    Frame f must move `speed * size * f / (F - 1)` latent cells in all; the sampling steps whose noise levels
    (`noise_levels`, one per step) lie inside the window (`start >= 1000 level > end`: `start >= t > end` on a
    1000-step DDPM model) share that evenly. Each step moves the rounded cumulative
    target minus what was already moved, so fractions carry over and the total is exact. When no
    step falls inside the window (very few steps), the first step after `start` does the whole shift.
    The subjects' boxes move with the scene; `after_sampling` puts them back, so a hook can be reused.
    """

    def __init__(
        self,
        speed: tuple[float, float],
        noise_levels: Sequence[float],
        window: tuple[int, int] = (800, 600),
        subjects: Sequence[SubjectBox] = (),
        seed: int = 0,
    ):
        start, end = window_level(window[0]), window_level(window[1])
        self.speed = speed
        self.noise_levels = [float(level) for level in noise_levels]
        steps = [i for i, level in enumerate(self.noise_levels) if end < level <= start]
        if not steps:
            steps = [i for i, level in enumerate(self.noise_levels) if level <= start][:1]
        self.window_steps = {index: k + 1 for k, index in enumerate(steps)}
        self.subjects = list(subjects)
        self.initial_boxes = [subject.boxes.clone() for subject in self.subjects]
        self.fallback_generator = torch.Generator().manual_seed(seed)
        self.moved: list[list[int]] | None = None

    def targets(self, frames: int, grid: tuple[int, int], progress: float) -> list[tuple[int, int]]:
        """Rounded cumulative shift `(dx, dy)` of every frame after `progress` (0..1) of the window."""
        h, w = grid
        share = [f / (frames - 1) if frames > 1 else 0.0 for f in range(frames)]
        return [(_rounded(self.speed[0] * w * s * progress), _rounded(self.speed[1] * h * s * progress)) for s in share]

    def before_step(self, state: StepState) -> None:
        position = self.window_steps.get(state.index)
        if position is None:
            return
        if state.num_steps != len(self.noise_levels) or state.noise_level != self.noise_levels[state.index]:
            raise RuntimeError("CameraShift was built for another schedule than the one being sampled")
        latents = state.latents
        frames, grid = latents.shape[2], tuple(latents.shape[-2:])
        if self.moved is None:
            self.moved = [[0, 0] for _ in range(frames)]
        targets = self.targets(frames, grid, position / len(self.window_steps))
        generator = state.generator if state.generator is not None else self.fallback_generator
        tensors = [latents, *state.history]
        shifted: list[list[torch.Tensor]] = [[] for _ in tensors]
        for f, (target_x, target_y) in enumerate(targets):
            dx, dy = target_x - self.moved[f][0], target_y - self.moved[f][1]
            self.moved[f] = [target_x, target_y]
            boxes = [subject.boxes[f] for subject in self.subjects]
            frames = shift_frame([t[:, :, f] for t in tensors], dx, dy, boxes, generator)
            for moved, frame in zip(shifted, frames, strict=True):
                moved.append(frame)
        state.latents, *state.history = [torch.stack(frames, dim=2) for frames in shifted]

    def after_sampling(self) -> None:
        for subject, boxes in zip(self.subjects, self.initial_boxes, strict=True):
            subject.boxes.copy_(boxes)
        self.moved = None


def subject_boxes(backbone: Backbone, prompt: str, script: MotionScript, frames: int) -> list[SubjectBox]:
    """Token positions of every subject's words in `prompt` and its per-frame boxes (fresh tensors)."""
    return [
        SubjectBox(
            prompt_phrase_positions(backbone, prompt, path.words, "subject words {!r} are", script.source),
            path.boxes(frames),
        )
        for path in script.subjects
    ]


def prompt_phrase_positions(backbone: Backbone, prompt: str, phrase: str, what: str, source: str) -> list[int]:
    """Token positions of `phrase` in `prompt`, or one ConfigError line naming its source (a script, an option) and
    the phrase (`what` is e.g. "bg_phrase {!r} is"; a phrase cut off by the text length says so)."""
    try:
        return backbone.phrase_positions(prompt, phrase)
    except ValueError as error:
        truncated = f" ({error})" if "falls beyond" in str(error) else ""
        raise ConfigError(f"{source}: {what.format(phrase)} not in the prompt {prompt!r}{truncated}") from None


def control_hooks(
    backbone: Backbone,
    script: MotionScript,
    frames: int,
    timesteps: Sequence[float],
    options: ControlOptions | None = None,
    seed: int = 0,
) -> list[StepHook]:
    """The step hooks realising `script` for a video of `frames` pixel frames sampled over `timesteps`. Boxes and
    the camera path are laid over the latent frames (keyframes spread over the video's duration, so a latent frame
    that stands for several pixel frames gets the boxes of its time in the video)."""
    options = options or ControlOptions()
    prompt = script.prompt or ""
    subjects = subject_boxes(backbone, prompt, script, backbone.latent_frames(frames))
    hooks: list[StepHook] = []
    if any(script.camera_speed):
        levels = [backbone.noise_process.noise_level(t) for t in timesteps]
        hooks.append(CameraShift(script.camera_speed, levels, options.shift_window, subjects, seed))
    if subjects:
        if backbone.controller is None:
            raise ConfigError("box control needs the attention controller (open the model with api.open_backbone)")
        background = []
        if script.background is not None:
            background = prompt_phrase_positions(
                backbone, prompt, script.background, "bg_phrase {!r} is", script.source
            )
        edit = options.box_edit(subjects, backbone.word_positions(prompt), background)
        hooks.append(BoxControl(backbone.controller, edit, options.amplify_until))
    return hooks


def sampling_timesteps(backbone: Backbone, sampler: str | None, steps: int) -> list[float]:
    """The timesteps the named sampler (None: the model's own) visits in `steps` steps (what `sampling.sample`
    will run)."""
    scheduler = make_scheduler(backbone, sampler)
    scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.timesteps]
