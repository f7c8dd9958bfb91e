"""CLIP and DINO (v2) embeddings from local folders, and the papers' scores on them.

* CLIP-T (MotionMatcher, Motion Inversion, MotionBooth): per frame, the cosine between the CLIP image embedding
  and the CLIP text embedding of the prompt; averaged over frames.
* Temporal consistency (the same papers; DeT with DINO too): the cosine between the embeddings of consecutive
  frames, averaged.
* R-CLIP / R-DINO (MotionBooth): the cosine between each frame's subject region (cropped at its box; the whole
  frame without boxes) and each subject image, averaged over images and frames.
* Appearance leakage (the concern of Motion Inversion and MotionMatcher): the cosine between each generated frame
  and the reference frame at the same point in time; a generated video that copies the reference scores near 1.

Models load through transformers' own classes with `local_files_only`, so nothing is ever downloaded; a folder
that is not given, or does not exist, skips its scores with one line saying which and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

BATCH = 32


@dataclass
class Embedder:
    """One image (and, for CLIP, text) embedding model loaded from `folder`; embeddings are unit vectors."""

    name: str
    folder: Path
    model: torch.nn.Module
    processor: object

    @torch.no_grad()
    def images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Unit embeddings `(N, D)` of RGB uint8 images `(H, W, 3)` (any sizes; the folder's processor resizes)."""
        parts = []
        for start in range(0, len(images), BATCH):
            batch = self.processor(images=list(images[start : start + BATCH]), return_tensors="pt")
            pixels = batch["pixel_values"].to(self.model.dtype)
            if self.name == "CLIP":
                features = self.model.get_image_features(pixel_values=pixels).pooler_output
            else:
                features = self.model(pixel_values=pixels).pooler_output
            parts.append(torch.nn.functional.normalize(features.float(), dim=-1))
        return torch.cat(parts)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        """Unit CLIP text embeddings `(N, D)`."""
        tokens = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        features = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return torch.nn.functional.normalize(features.pooler_output.float(), dim=-1)


def load_embedder(name: str, folder: Path | None) -> tuple[Embedder | None, str | None]:
    """`name` "CLIP" (`CLIPModel` + its processor) or "DINO" (`AutoModel`, e.g. `Dinov2Model`, + its image
    processor) from a local folder: the embedder, or None and the one line saying why its scores are skipped. A
    folder that exists but does not load is an InputError naming it."""
    option = f"--{name.lower()}"
    if folder is None:
        return None, f"{name} scores skipped: no {option} folder given"
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None, f"{name} scores skipped: {folder} is not a model folder (no config.json)"
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor, CLIPModel

    try:
        if name == "CLIP":
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(folder, local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise InputError(f"{option} {folder}: cannot load the model ({' '.join(str(error).split())[:300]})") from None
    return Embedder(name, folder, model.eval(), processor), None


def text_similarity(frames: torch.Tensor, text: torch.Tensor) -> np.ndarray:
    """CLIP-T per frame `(F,)`: cos(image embedding of frame k, text embedding), from unit embeddings `(F, D)` and
    `(D,)`."""
    return (frames @ text).numpy()


def consecutive_similarity(frames: torch.Tensor) -> np.ndarray:
    """Temporal consistency per frame pair `(F-1,)`: cos(embedding of frame k, embedding of frame k+1), from unit
    embeddings `(F, D)`."""
    return (frames[:-1] * frames[1:]).sum(-1).numpy()


def box_crops(frames: np.ndarray, boxes: np.ndarray | None) -> list[np.ndarray]:
    """Each frame cropped at its box `(F, 4)` normalised (x1, y1, x2, y2; at least one pixel); whole frames without
    boxes or where a frame's box is missing (NaN)."""
    if boxes is None:
        return list(frames)
    h, w = frames.shape[1:3]
    crops = []
    for frame, box in zip(frames, np.asarray(boxes, dtype=float), strict=True):
        if np.isnan(box).any():
            crops.append(frame)
            continue
        left, top = int(np.clip(box[0], 0, 1) * w), int(np.clip(box[1], 0, 1) * h)
        right = max(left + 1, int(np.ceil(np.clip(box[2], 0, 1) * w)))
        bottom = max(top + 1, int(np.ceil(np.clip(box[3], 0, 1) * h)))
        crops.append(frame[top:bottom, left:right])
    return crops


def subject_similarity(regions: torch.Tensor, subject_images: torch.Tensor) -> np.ndarray:
    """R-CLIP / R-DINO per frame `(F,)`: the mean over subject images of cos(frame k's subject region, image), from
    unit embeddings of the regions `(F, D)` (`box_crops`) and of the images `(I, D)`."""
    return (regions @ subject_images.T).mean(-1).numpy()


def matching_frames(reference_frames: int, frames: int) -> np.ndarray:
    """The reference frame at the same point in time as each of `frames` frames (picked evenly)."""
    return np.linspace(0, reference_frames - 1, frames).round().astype(int)


def reference_similarity(frames: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """Appearance leakage per frame `(F,)`: cos(generated frame k, the reference frame at the same point in time),
    from unit embeddings of the generated frames `(F, D)` and of the reference's frames `(F', D)`."""
    return (frames * reference[matching_frames(len(reference), len(frames))]).sum(-1).numpy()
