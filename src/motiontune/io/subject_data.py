"""Subject datasets: a few still images of one subject, each with a binary foreground mask.

A folder holds the images (`.png`, `.jpg`, ...). Each image's mask is, in order of lookup,
`masks/<name>.<ext>`, `<name>_mask.<ext>` beside it, or the image's own alpha channel. Masks are
read as grey levels and binarised at 0.5. Images are resized to a square of the shorter training
side and zero-padded to the training size, as MotionBooth's data pipeline does (black bars, mask 0
there, so the padding never enters the subject region loss).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ..backbones.base import Backbone
from ..errors import InputError
from ..training import Example
from .video import IMAGE_EXTENSIONS, uint8_to_frames

__all__ = [
    "MASK_FOLDER",
    "MASK_SUFFIX",
    "SubjectImage",
    "find_subject_images",
    "prepare_subject_examples",
    "read_subject_image",
]

MASK_FOLDER = "masks"
MASK_SUFFIX = "_mask"
_LAYOUT = f"name.png with {MASK_FOLDER}/name.png, name{MASK_SUFFIX}.png or an alpha channel"


@dataclass(frozen=True)
class SubjectImage:
    """One subject image and where its mask comes from (`mask` is None: the image's alpha channel)."""

    path: Path
    mask: Path | None


def _images_in(folder: Path) -> list[Path]:
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS)


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"{path}: cannot read image ({' '.join(str(error).split())})") from None


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def find_subject_images(root: str | os.PathLike[str]) -> list[SubjectImage]:
    """List a subject folder's images with their masks, sorted by path.

    Raises InputError (one line naming the file) for an empty folder, an image without a mask, an
    image with two masks, or a mask file without its image.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder" if not root.exists() else f"{root}: expected a folder of images")
    files = _images_in(root)
    images = [p for p in files if not p.stem.endswith(MASK_SUFFIX)]
    if not images:
        raise InputError(f"{root}: no subject images found (expected {_LAYOUT})")
    folder_masks = {p.stem: p for p in _images_in(root / MASK_FOLDER)} if (root / MASK_FOLDER).is_dir() else {}
    side_masks = {p.stem.removesuffix(MASK_SUFFIX): p for p in files if p.stem.endswith(MASK_SUFFIX)}
    stems = {p.stem for p in images}
    for mask in sorted([*folder_masks.values(), *side_masks.values()]):
        stem = mask.stem.removesuffix(MASK_SUFFIX) if mask.parent == root else mask.stem
        if stem not in stems:
            raise InputError(f"{mask}: mask without an image named {stem}.* in {root}")
    items = []
    for image in images:
        found = [m for m in (folder_masks.get(image.stem), side_masks.get(image.stem)) if m is not None]
        if len(found) > 1:
            raise InputError(f"{image}: two masks ({found[0]} and {found[1]}), keep one")
        if not found and not _has_alpha(_open(image)):
            expected = f"{MASK_FOLDER}/{image.stem}.png, {image.stem}{MASK_SUFFIX}.png or an alpha channel"
            raise InputError(f"{image}: no mask (expected {expected})")
        items.append(SubjectImage(image, found[0] if found else None))
    return items


def _square_and_pad(image: Image.Image, height: int, width: int, resample: Image.Resampling) -> np.ndarray:
    """Resize to a square of side min(height, width) and zero-pad it, centred, to (height, width)."""
    side = min(height, width)
    square = np.asarray(image.resize((side, side), resample), dtype=np.float32)
    top, left = (height - side) // 2, (width - side) // 2
    padding = [(top, height - side - top), (left, width - side - left)] + [(0, 0)] * (square.ndim - 2)
    return np.pad(square, padding)


def read_subject_image(item: SubjectImage, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels `(3, H, W)` in [-1, 1] and the binary mask `(1, H, W)` of one subject image.

    The image is resized bilinearly and the mask with nearest neighbours, then the mask is binarised
    at 0.5 (MotionBooth `MotionBoothDataset`: nearest resize, zero pad, `> 0.5`).
    """
    image = _open(item.path)
    if item.mask is None:
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] == 255:
            raise InputError(f"{item.path}: alpha channel is fully opaque, so it marks no subject; give a mask file")
        mask = alpha
    else:
        mask = _open(item.mask).convert("L")
        if mask.size != image.size:
            raise InputError(
                f"{item.mask}: mask is {mask.size[0]}x{mask.size[1]}, "
                f"image {item.path.name} is {image.size[0]}x{image.size[1]}"
            )
    rgb = _square_and_pad(image.convert("RGB"), height, width, Image.Resampling.BILINEAR)
    binary = _square_and_pad(mask, height, width, Image.Resampling.NEAREST) / 255.0 > 0.5
    if not binary.any():
        raise InputError(f"{item.mask or item.path}: mask has no foreground pixels at {height}x{width}")
    return uint8_to_frames(rgb), torch.from_numpy(binary)[None].float()


def prepare_subject_examples(
    backbone: Backbone, items: list[SubjectImage], caption: str, height: int, width: int, progress: bool = True
) -> list[Example]:
    """Encode every subject image once as a 1-frame video `(C, 1, h, w)`, with its mask and `caption`."""
    with torch.no_grad():
        text = backbone.encode_prompt([caption])[0]
    examples = []
    for item in tqdm(items, desc="encoding subject images", disable=not progress, leave=False):
        pixels, mask = read_subject_image(item, height, width)
        latents = backbone.encode_video(pixels[None, None])[0]
        examples.append(Example(latents, caption, text, "target", str(item.path), mask=mask))
    return examples
