"""Point tracks and DMT's motion fidelity (Yatim et al. 2024, "Space-Time Diffusion Features for Zero-Shot
Text-Driven Motion Transfer", Sec. 5), without a learned tracker.

A tracker is any callable `video (F, H, W, 3) uint8 -> Tracks`; the default follows corners of the first frame
(Shi-Tomasi) with pyramidal Lucas-Kanade and drops a track at the first frame where tracking it back does not
return within `max_error` pixels (forward-backward check, Kalal et al. 2010). A CoTracker checkpoint or any other
tracker plugs in through `load_tracker("module:factory")`.

Motion fidelity compares the per-frame displacements of tracks in two videos:
`corr(t, t~) = 1/(F-1) sum_k agree(v_k, v~_k)` with `agree` the cosine of the two displacements (1 when both are
still, 0 when only one moves), and `MF = 1/m sum_{t~ in generated} max_{t in reference} corr(t, t~)`: the one-sided
score of DMT's released code (`two_sided=True` adds the reference-side term and halves the sum). Only tracks
followed through every frame (CoTracker's are; Lucas-Kanade loses points that leave the frame) and that move enter
(DeT restricts DMT's score to the moving object's mask for the same reason): DMT's cosine scores still points 0, so
its score of a video against itself falls with its share of static background.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ConfigError
from .flow import grey_frames

#: tracks that get this far (a fraction of the frame) from where they start carry motion; the rest is background
MOVING = 0.02


@dataclass(frozen=True)
class Tracks:
    """Points `(N, F, 2)` as (x, y) pixels and where each is tracked `(N, F)`, in a video of `size` (H, W)."""

    points: np.ndarray
    visible: np.ndarray
    size: tuple[int, int]

    def complete(self, moving: float = 0.0) -> np.ndarray:
        """The tracks followed through every frame, as fractions of the frame `(n, F, 2)`; with `moving`, only those
        that get at least that far (a fraction of the frame) from where they start."""
        whole = self.points[self.visible.all(axis=1)] / np.array([self.size[1], self.size[0]], dtype=float)
        reach = np.linalg.norm(whole - whole[:, :1], axis=-1).max(axis=1, initial=0.0)
        return whole[reach >= moving] if moving > 0 else whole


Tracker = Callable[[np.ndarray], Tracks]


@dataclass(frozen=True)
class LucasKanadeTracker:
    """Corners of the first frame followed with pyramidal Lucas-Kanade (OpenCV), each dropped at the first frame
    where it fails the forward-backward check; windows and pyramid depth shrink to fit small frames."""

    max_points: int = 400
    quality: float = 0.01
    window: int = 15
    levels: int = 3
    max_error: float = 1.0

    def __call__(self, video: np.ndarray) -> Tracks:
        grey = grey_frames(video)
        frames, (h, w) = len(grey), grey.shape[1:]
        window = max(5, min(self.window, (min(h, w) // 4) | 1))
        levels = max(0, min(self.levels, int(math.log2(max(min(h, w) / window, 1)))))
        corners = cv2.goodFeaturesToTrack(grey[0], self.max_points, self.quality, max(2, min(h, w) // 40))
        count = 0 if corners is None else len(corners)
        points = np.full((count, frames, 2), np.nan)
        visible = np.zeros((count, frames), dtype=bool)
        if count == 0:
            return Tracks(points, visible, (h, w))
        current = corners.reshape(-1, 1, 2).astype(np.float32)
        points[:, 0], visible[:, 0] = current[:, 0], True
        alive = np.ones(count, dtype=bool)
        options = {
            "winSize": (window, window),
            "maxLevel": levels,
            "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01),
        }
        for k in range(frames - 1):
            forward, found, _ = cv2.calcOpticalFlowPyrLK(grey[k], grey[k + 1], current, None, **options)
            backward, returned, _ = cv2.calcOpticalFlowPyrLK(grey[k + 1], grey[k], forward, None, **options)
            error = np.linalg.norm((backward - current)[:, 0], axis=1)
            inside = (forward[:, 0] >= 0).all(1) & (forward[:, 0, 0] <= w - 1) & (forward[:, 0, 1] <= h - 1)
            alive &= found[:, 0].astype(bool) & returned[:, 0].astype(bool) & (error < self.max_error) & inside
            points[alive, k + 1], visible[alive, k + 1] = forward[alive, 0], True
            current = forward
        return Tracks(points, visible, (h, w))


def load_tracker(spec: str | None) -> Tracker:
    """The default tracker (None), or the one `module:factory` makes (`factory()` returns a `video -> Tracks`
    callable, e.g. a wrapper around a local CoTracker checkpoint); one ConfigError line when it cannot be made."""
    if spec is None:
        return LucasKanadeTracker()
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise ConfigError(f"--tracker '{spec}': expected 'module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"--tracker '{spec}': cannot load it ({error})") from None
    tracker = factory()
    if not callable(tracker):
        raise ConfigError(f"--tracker '{spec}': {factory_name}() returned {type(tracker).__name__}, not a tracker")
    return tracker


def displacement_agreement(v: np.ndarray, u: np.ndarray, still: float) -> np.ndarray:
    """Per displacement pair `(..., 2)`: cos(v, u); 1 where both are shorter than `still` (both still), 0 where only
    one is (neither agreement nor opposition)."""
    nv, nu = np.linalg.norm(v, axis=-1), np.linalg.norm(u, axis=-1)
    still_v, still_u = nv < still, nu < still
    cosine = (v * u).sum(-1) / np.maximum(nv * nu, 1e-12)
    return np.where(still_v & still_u, 1.0, np.where(still_v | still_u, 0.0, cosine))


def resample_tracks(tracks: np.ndarray, frames: int) -> np.ndarray:
    """Tracks `(n, F', 2)` linearly resampled in time to `frames` frames (a video of another length)."""
    if tracks.shape[1] == frames:
        return tracks
    at = np.linspace(0, tracks.shape[1] - 1, frames)
    below = np.minimum(np.floor(at).astype(int), tracks.shape[1] - 2)
    weight = (at - below)[None, :, None]
    return (1 - weight) * tracks[:, below] + weight * tracks[:, below + 1]


def track_correlations(reference: np.ndarray, generated: np.ndarray, still: float) -> np.ndarray:
    """`corr(t, t~)` for every generated track (rows) against every reference track (columns): the mean over frames
    of the agreement of their displacements. Tracks are `(n, F, 2)` fractions of the frame."""
    generated = resample_tracks(generated, reference.shape[1])
    dr, dg = np.diff(reference, axis=1), np.diff(generated, axis=1)
    return displacement_agreement(dg[:, None], dr[None], still).mean(-1)


def motion_fidelity(
    reference: Tracks, generated: Tracks, still: float = 0.002, moving: float = MOVING, two_sided: bool = False
) -> float:
    """DMT's motion fidelity of `generated` against `reference`, in [-1, 1], on the tracks each video follows
    through every frame and that move: at least `moving` (a fraction of the frame) from where they start. A static
    background holds no motion to compare, and would otherwise match any other static background perfectly. NaN
    when the reference has no such track, 0 when the generated video has none (it reproduced no motion).
    `still`: displacements shorter than this fraction of the frame per frame count as no motion."""
    one_sided, both_sided = motion_fidelities(reference, generated, still, moving)
    return both_sided if two_sided else one_sided


def motion_fidelities(
    reference: Tracks, generated: Tracks, still: float = 0.002, moving: float = MOVING
) -> tuple[float, float]:
    """The one-sided and the two-sided `motion_fidelity` from one matrix of track correlations."""
    ref, gen = reference.complete(moving), generated.complete(moving)
    if len(ref) == 0:
        return float("nan"), float("nan")
    if len(gen) == 0:
        return 0.0, 0.0
    correlations = track_correlations(ref, gen, still)
    one_sided = correlations.max(axis=1).mean()
    return float(one_sided), float((one_sided + correlations.max(axis=0).mean()) / 2)
