"""Dense optical flow (OpenCV's DIS, medium preset) and what the papers read from it: the camera's motion from
background pixels (MotionBooth's camera flow error) and how much a video moves (VBench's dynamic degree).

Flows are in image coordinates (x right, y down), as fractions of the frame width and height per frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

#: VBench's dynamic degree: a frame pair moves when the mean of its largest 5% flow magnitudes exceeds 6 pixels at
#: 256 pixels (scaled with the shorter side); a video is dynamic when at least 4 pairs in 16 frames move
DYNAMIC_THRESHOLD_AT_256 = 6.0
DYNAMIC_PAIRS_PER_16_FRAMES = 4


#: Rec. 601 luma weights of R, G, B
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def grey_frames(video: np.ndarray) -> np.ndarray:
    """Luma `(F, H, W)` uint8 of an RGB video `(F, H, W, 3)` with values in [0, 255] (uint8 or float)."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"a video is (F, H, W, 3), got shape {video.shape}")
    return np.clip(video.astype(np.float32) @ LUMA, 0, 255).astype(np.uint8)


def optical_flow(video: np.ndarray) -> np.ndarray:
    """Flow `(F-1, H, W, 2)` in pixels from each frame to the next (DIS, medium preset)."""
    grey = grey_frames(video)
    model = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flows = [model.calc(grey[k], grey[k + 1], None) for k in range(len(grey) - 1)]
    return np.stack(flows) if flows else np.zeros((0, *grey.shape[1:], 2), dtype=np.float32)


def background_motion(
    video: np.ndarray, keep: np.ndarray | None = None, margin: int | None = None, flows: np.ndarray | None = None
) -> np.ndarray:
    """Per-frame motion of the background `(F-1, 2)`: the mean flow from frame k to k+1 over pixels that are
    background in both (`keep` `(F, H, W)`, default all) and at least `margin` pixels (default H/8) inside the
    border, where new content enters; divided by the frame width and height. `flows`: the video's `optical_flow`
    when already computed."""
    flows = optical_flow(video) if flows is None else flows
    h, w = np.asarray(video).shape[1:3]
    margin = max(2, min(h, w) // 8) if margin is None else margin
    inner = np.zeros((h, w), dtype=bool)
    inner[margin : h - margin, margin : w - margin] = True
    keep = np.ones((len(flows) + 1, h, w), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    out = np.zeros((len(flows), 2))
    for k, flow in enumerate(flows):
        selected = keep[k] & keep[k + 1] & inner
        if not selected.any():
            selected = inner if inner.any() else np.ones((h, w), dtype=bool)
        out[k] = flow[selected].mean(0) / (w, h)
    return out


def outside_boxes(boxes: np.ndarray, size: tuple[int, int], margin: int) -> np.ndarray:
    """Masks `(F, H, W)` of the pixels at least `margin` pixels outside every box; `boxes` `(F, S, 4)` normalised
    (x1, y1, x2, y2) per frame and subject."""
    h, w = size
    keep = np.ones((len(boxes), h, w), dtype=bool)
    for k, frame_boxes in enumerate(np.asarray(boxes, dtype=float)):
        for x1, y1, x2, y2 in frame_boxes[~np.isnan(frame_boxes).any(1)]:
            top, bottom = max(0, int(y1 * h) - margin), min(h, int(np.ceil(y2 * h)) + margin)
            left, right = max(0, int(x1 * w) - margin), min(w, int(np.ceil(x2 * w)) + margin)
            keep[k, top:bottom, left:right] = False
    return keep


def camera_motion(video: np.ndarray, boxes: np.ndarray | None = None, flows: np.ndarray | None = None) -> np.ndarray:
    """How far the camera travels over the video `(2,)`, as fractions of the frame width and height (positive x:
    the camera pans right and the content moves left; MotionBooth's `camera_speed` convention): minus the summed
    background motion, the background being the pixels outside the subjects' `boxes` `(F, S, 4)` when given."""
    video = np.asarray(video)
    margin = max(2, min(video.shape[1:3]) // 8)
    keep = None if boxes is None else outside_boxes(boxes, video.shape[1:3], margin)
    return -background_motion(video, keep, margin, flows).sum(0)


def camera_error(travel: Sequence[float], requested: Sequence[float]) -> float:
    """Euclidean distance, in fractions of the frame, between the camera travel measured (`camera_motion`) and the
    `requested` camera speed (dx, dy)."""
    return float(np.linalg.norm(np.asarray(travel, dtype=float) - np.asarray(requested, dtype=float)))


def dynamic_degree(video: np.ndarray, flows: np.ndarray | None = None) -> dict[str, float | bool]:
    """VBench's dynamic degree with DIS flow in place of RAFT: per frame pair the mean of its largest 5% flow
    magnitudes; `moving_pairs` counts the pairs above 6 pixels at 256 (scaled with the shorter side), `dynamic` is
    whether they reach 4 per 16 frames, `flow_magnitude` is the mean over pairs in fractions of the shorter side.
    `flows`: the video's `optical_flow` when already computed."""
    flows = optical_flow(video) if flows is None else flows
    short = min(flows.shape[1:3])
    magnitude = np.linalg.norm(flows, axis=-1).reshape(len(flows), -1)
    top = np.sort(magnitude, axis=1)[:, -max(1, magnitude.shape[1] // 20) :].mean(1)
    moving = int((top > DYNAMIC_THRESHOLD_AT_256 * short / 256).sum())
    needed = max(1, round(DYNAMIC_PAIRS_PER_16_FRAMES * (len(flows) + 1) / 16))
    return {"dynamic": moving >= needed, "moving_pairs": moving, "flow_magnitude": float(top.mean() / short)}
