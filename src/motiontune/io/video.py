"""Video I/O with PyAV: read clips as model-ready tensors, write MP4 / GIF / PNG contact sheets atomically."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from motiontune.errors import ConfigError, InputError, warn
from motiontune.utils import atomic_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "count_frames",
    "frames_to_uint8",
    "output_paths",
    "parse_sampling",
    "probe_video",
    "read_video",
    "sample_indices",
    "save_outputs",
    "write_contact_sheet",
    "write_video",
]

#: Extensions of still images accepted as frames when a video is given as a folder of images.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# Encoders tried in order for MP4 output; the first one this PyAV build provides is used.
_VIDEO_CODECS = ("libx264", "mpeg4")
# Containers write_video produces through FFmpeg (anything else but .gif is refused).
_FFMPEG_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
# Gap in pixels between contact-sheet cells and around the border.
_SHEET_GAP = 2
_SHEET_BACKGROUND = (24, 24, 24)
_SHEET_TEXT = (235, 235, 235)

_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, RuntimeError)


# ----------------------------------------------------------------------------------------------- helpers


def _one_line(text: object) -> str:
    """Collapse any whitespace (newlines included) so an error message stays on one line."""
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    """Short one-line cause of a PyAV / OS error, without the errno and file name FFmpeg prepends."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return _one_line(text)


def _natural_key(path: Path) -> list[object]:
    """Sort key that orders ``frame2.png`` before ``frame10.png``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def parse_sampling(sampling: str, path: Path | str | None = None) -> int | None:
    """Stride K for ``"stride:K"``, ``None`` for ``"uniform"``; ConfigError (naming ``path``) otherwise."""
    spec = sampling.strip().lower() if isinstance(sampling, str) else None
    if spec == "uniform":
        return None
    if spec is not None and spec.startswith("stride:"):
        value = spec[len("stride:") :].strip()
        if value.isdigit() and int(value) >= 1:
            return int(value)
    where = f"{path}: " if path is not None else ""
    expected = "expected 'uniform' or 'stride:K' with integer K >= 1"
    raise ConfigError(f"{where}invalid sampling {_one_line(repr(sampling))} ({expected})")


def sample_indices(
    num_available: int, num_frames: int, sampling: str = "uniform", path: Path | str | None = None
) -> list[int]:
    """Indices of the frames to take from a clip of ``num_available`` frames.

    ``"uniform"``: ``numpy.linspace(0, n - 1, num_frames).round()``; ``"stride:K"``: ``0, K, 2K, ...``.
    Raises ConfigError for a bad spec and InputError (naming ``path``) when the clip is empty or too short.
    """
    stride = parse_sampling(sampling, path)
    if num_frames < 1:
        raise ConfigError(f"{path}: num_frames must be >= 1, got {num_frames}")
    if num_available <= 0:
        raise InputError(f"{path}: empty video (no frames could be decoded)")
    if stride is None:
        if num_available < num_frames:
            raise InputError(f"{path}: video has {num_available} frames, need at least {num_frames}")
        return [int(i) for i in np.linspace(0, num_available - 1, num_frames).round()]
    needed = (num_frames - 1) * stride + 1
    if num_available < needed:
        raise InputError(
            f"{path}: video has {num_available} frames, need at least {needed} "
            f"for {num_frames} frames with sampling 'stride:{stride}'"
        )
    return [i * stride for i in range(num_frames)]


def _image_files(folder: Path) -> list[Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(files, key=_natural_key)


def _check_exists(path: Path) -> None:
    """A readable video source: a regular non-empty file or a folder of frames, never a FIFO or device (which
    would block or stream forever)."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if not (path.is_file() or path.is_dir()):
        raise InputError(f"{path}: not a regular file (a FIFO, socket or device); give a video file")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: empty video (file is 0 bytes)")


def _has_transparency(frame: av.VideoFrame) -> bool:
    """Whether a decoded frame's pixel format carries alpha and some pixel is not opaque."""
    if not any(name in frame.format.name for name in ("rgba", "bgra", "argb", "abgr", "yuva", "gbrap", "ya")):
        return False
    return bool((frame.to_ndarray(format="rgba")[..., 3] < 255).any())


def _image_frame(image_path: Path, source: Path, to_array: bool, what: str) -> np.ndarray | tuple[int, int]:
    """One image file as RGB uint8 `(H, W, 3)` (EXIF orientation applied) if `to_array`, else its (height, width);
    transparency is dropped with a warning naming `source`, a file that will not decode is an InputError naming it
    as `what`."""
    try:
        with Image.open(image_path) as image:
            if "A" in image.getbands() or "transparency" in image.info:
                _warn_transparency(source)
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB")) if to_array else image.size[::-1]
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{image_path}: cannot read {what} ({_reason(exc)})") from exc


def _iter_decoded(path: Path, to_array: bool) -> Iterator[np.ndarray | tuple[int, int]]:
    """Yield every frame of ``path`` in display order: RGB uint8 HxWx3 if ``to_array``, else its (height,
    width).

    ``path`` may be a video / GIF file (decoded with PyAV, one thread: multi-threaded decoding hides the
    errors of a truncated file) or a folder of image frames sorted by name. Every failure becomes an
    InputError naming ``path``; a file that decodes to fewer frames than its container declares is refused as
    truncated. Variable frame rate timing and transparency (dropped: frames are taken by index and composited
    as RGB) are reported as warnings.
    """
    _check_exists(path)
    if path.is_dir():
        images = _image_files(path)
        if not images:
            raise InputError(f"{path}: empty video (folder has no {'/'.join(IMAGE_EXTENSIONS)} frames)")
        for image_path in images:
            yield _image_frame(image_path, path, to_array, "image frame")
        return

    try:
        container = av.open(str(path), mode="r")
    except _AV_ERRORS as exc:
        raise InputError(f"{path}: cannot read video ({_reason(exc)})") from exc
    with container:
        if not container.streams.video:
            raise InputError(f"{path}: no video stream found (empty video or not a video file)")
        stream = container.streams.video[0]
        declared, decoded, times, transparent = stream.frames, 0, [], False
        try:
            for frame in container.decode(stream):
                decoded += 1
                if frame.time is not None:
                    times.append(frame.time)
                if decoded <= 2 and not transparent:
                    transparent = _has_transparency(frame)
                yield _to_rgb(frame) if to_array else (frame.height, frame.width)
        except _AV_ERRORS as exc:
            raise InputError(f"{path}: cannot decode video ({_reason(exc)})") from exc
        if declared and decoded < declared:
            raise InputError(f"{path}: truncated or damaged video (decoded {decoded} of its {declared} frames)")
        _warn_variable_rate(path, times)
        if transparent:
            _warn_transparency(path)


def _warn_variable_rate(path: Path, times: list[float]) -> None:
    """Warn (once) when frame intervals vary: frames are taken by index, so that timing is dropped."""
    intervals = np.diff(np.asarray(times, dtype=np.float64))
    if len(intervals) >= 2 and intervals.min() > 0 and intervals.max() > 1.5 * intervals.min():
        warn(
            f"{path}: variable frame rate (frame intervals {1000 * intervals.min():.0f}-{1000 * intervals.max():.0f} "
            "ms); frames are taken by index, so the motion's timing is not kept",
            once=True,
        )


def _warn_transparency(path: Path) -> None:
    """Warn (once) that frames with an alpha channel are read as RGB."""
    warn(f"{path}: transparency dropped (the alpha channel is ignored; frames are read as RGB)", once=True)


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """RGB uint8 (H, W, 3) array of a decoded frame, turned upright per its display matrix (phone videos)."""
    array = frame.to_ndarray(format="rgb24")
    quarter_turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as FFmpeg's autorotate
    return np.ascontiguousarray(np.rot90(array, quarter_turns)) if quarter_turns else array


def _resize_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize so the shorter side covers (height, width), then center-crop to exactly that size."""
    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    new_h = max(height, round(h * scale))
    new_w = max(width, round(w * scale))
    if (new_h, new_w) != (h, w):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        frame = cv2.resize(frame, (new_w, new_h), interpolation=interpolation)
    top = (new_h - height) // 2
    left = (new_w - width) // 2
    return np.ascontiguousarray(frame[top : top + height, left : left + width])


def _check_uint8_video(frames: np.ndarray, name: str = "frames_uint8") -> None:
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"{name} must have shape (F, H, W, 3) with F >= 1, got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {frames.dtype}")
    if frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"{name} has an empty frame size {tuple(frames.shape)}")


# -------------------------------------------------------------------------------------------- public API


def count_frames(path: str | os.PathLike[str]) -> int:
    """Number of frames in a video / GIF / image-frame folder, counted by decoding (container metadata
    is not trusted). Returns 0 for a stream that decodes to nothing; raises InputError if unreadable."""
    return probe_video(path)[0]


def probe_video(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """(frames, height, width) of a video / GIF / image-frame folder, by decoding it (the size of its first
    frame; frames 0 for a stream that decodes to nothing); raises InputError if unreadable."""
    count, size = 0, (0, 0)
    for shape in _iter_decoded(Path(path), to_array=False):
        count += 1
        size = size if count > 1 else shape
    return count, *size


def read_image(path: str | os.PathLike[str], height: int, width: int) -> torch.Tensor:
    """One image file as a frame `(3, height, width)` in [-1, 1]: resized so the shorter side covers the size,
    then center-cropped (as video frames are); transparency is dropped with a warning."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"{path}: not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    _check_exists(path)
    frame = _resize_crop(_image_frame(path, path, True, "image"), height, width)
    return torch.tensor(frame).permute(2, 0, 1).float() / 127.5 - 1  # a copy: the decoded array is read-only


def read_image_uint8(path: str | os.PathLike[str]) -> np.ndarray:
    """One image file at its own size, RGB uint8 `(H, W, 3)` (EXIF orientation applied, transparency dropped with a
    warning)."""
    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(f"{path}: not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    _check_exists(path)
    return np.array(_image_frame(path, path, True, "image"))


def read_native_video(path: str | os.PathLike[str]) -> np.ndarray:
    """Every frame of a video, GIF or folder of image frames at its own size, RGB uint8 `(F, H, W, 3)`."""
    count, height, width = probe_video(path)
    if count == 0:
        raise InputError(f"{path}: empty video (no frames decode)")
    return frames_to_uint8(read_video(path, count, height, width))


def read_video(
    path: str | os.PathLike[str], num_frames: int, height: int, width: int, sampling: str = "uniform"
) -> torch.Tensor:
    """Decode ``num_frames`` frames of a video, GIF or folder of image frames.

    Frames are picked with ``sampling`` (``"uniform"`` or ``"stride:K"``), resized so the shorter side
    covers (height, width) and center-cropped. Returns float32 (num_frames, 3, height, width) in [-1, 1].
    """
    path = Path(path)
    stride = parse_sampling(sampling, path)
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{path}: {name} must be a positive integer, got {value!r}")

    decoded = _iter_decoded(path, to_array=True)
    try:
        if stride is None:
            # Uniform sampling needs the length first: resize every frame while decoding (cheap at
            # training resolutions) and select afterwards, so the file is decoded only once.
            kept = [_resize_crop(frame, height, width) for frame in decoded]
            frames = [kept[i] for i in sample_indices(len(kept), num_frames, sampling, path)]
        else:
            last, count, frames = (num_frames - 1) * stride, 0, []
            for i, frame in enumerate(decoded):  # stop decoding once the last needed frame is in
                count = i + 1
                if i % stride == 0:
                    frames.append(_resize_crop(frame, height, width))
                if i >= last:
                    break
            sample_indices(count, num_frames, sampling, path)  # raises if the clip is too short
    finally:
        decoded.close()  # release the container now, also when decoding stopped early
    return uint8_to_frames(np.stack(frames)).contiguous()


def uint8_to_frames(frames: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) values in [0, 255] (uint8 or float) -> (..., 3, H, W) float32 in [-1, 1]: the inverse
    of `frames_to_uint8`."""
    return torch.from_numpy(frames).movedim(-1, -3).to(torch.float32) / 127.5 - 1.0


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(F, 3, H, W) float in [-1, 1] -> (F, H, W, 3) uint8 (values outside the range are clamped)."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if hasattr(frames, "shape") else type(frames).__name__
        raise ValueError(f"frames must be a (F, 3, H, W) tensor, got {shape}")
    x = torch.nan_to_num(frames.detach().to("cpu", torch.float32), nan=0.0)
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def _encoder_name() -> str:
    for name in _VIDEO_CODECS:
        try:
            av.codec.Codec(name, "w")
        except Exception:  # unknown / unavailable encoder in this FFmpeg build
            continue
        return name
    raise RuntimeError(f"no usable video encoder in this PyAV build (tried {', '.join(_VIDEO_CODECS)})")


def _write_ffmpeg(frames: np.ndarray, tmp: Path, fps: int, crf: int) -> None:
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:  # yuv420p needs even sizes: replicate the last row / column
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    codec = _encoder_name()
    # mpeg4 fallback: keep the quantiser low (about ffmpeg's "-q:v 2") for near-lossless output.
    options = {"crf": str(crf), "preset": "medium"} if codec == "libx264" else {"qmin": "1", "qmax": "3"}
    container_options = {"movflags": "+faststart"} if tmp.suffix.lower() in (".mp4", ".m4v", ".mov") else {}
    with av.open(str(tmp), mode="w", options=container_options) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        if codec != "libx264":
            stream.bit_rate = max(2_000_000, frames.shape[1] * frames.shape[2] * fps * 4)
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_gif(frames: np.ndarray, tmp: Path, fps: int) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(
        tmp,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        loop=0,
        duration=max(10, round(1000 / fps)),
        disposal=1,
    )


def write_video(frames_uint8: np.ndarray, path: str | os.PathLike[str], fps: int = 8, *, crf: int = 10) -> Path:
    """Write (F, H, W, 3) uint8 frames atomically and return the path.

    ``.gif`` -> animated GIF (PIL, loops forever); ``.mp4`` (or .m4v/.mov/.mkv) -> H.264 yuv420p via
    libx264 at ``crf`` (falls back to MPEG-4 Part 2 if libx264 is missing). Odd sizes are padded to even
    by edge replication. Parent folders are created; the file appears only once completely written.
    Note: GIF stores delays in 1/100 s, and identical consecutive frames may be merged by PIL.
    """
    path = Path(path)
    _check_uint8_video(frames_uint8)
    if not isinstance(fps, (int, np.integer)) or fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    if not 1 <= crf <= 51:  # crf 0 makes lossless High 4:4:4 streams that many players refuse
        raise ValueError(f"crf must be within 1..51, got {crf}")
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return atomic_file(path, lambda tmp: _write_gif(frames_uint8, tmp, int(fps)))
    if suffix not in _FFMPEG_SUFFIXES:
        supported = ", ".join((".gif", *_FFMPEG_SUFFIXES))
        raise ValueError(f"{path}: unsupported video extension (use one of {supported})")
    return atomic_file(path, lambda tmp: _write_ffmpeg(frames_uint8, tmp, int(fps), crf))


_Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _label_font() -> _Font:
    return ImageFont.load_default()


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: _Font) -> None:
    try:
        draw.text(xy, text, fill=_SHEET_TEXT, font=font)
    except UnicodeEncodeError:  # bitmap fallback font is latin-1 only
        draw.text(xy, text.encode("latin-1", "replace").decode("latin-1"), fill=_SHEET_TEXT, font=font)


def write_contact_sheet(
    frames_uint8_rows: list[np.ndarray],
    path: str | os.PathLike[str],
    labels: list[str] | None = None,
    max_frames: int = 8,
    scale: int | None = None,
) -> Path:
    """Write a PNG grid with one row per video ((F, H, W, 3) uint8 each) and up to ``max_frames`` evenly
    spaced frames per row, an optional text label above each row. Cells are upscaled with
    nearest-neighbour by ``scale`` (default ``max(1, 96 // H)`` so tiny frames stay viewable)."""
    path = Path(path)
    rows = list(frames_uint8_rows)
    if not rows:
        raise ValueError("write_contact_sheet needs at least one row")
    for i, row in enumerate(rows):
        _check_uint8_video(row, name=f"frames_uint8_rows[{i}]")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"got {len(labels)} labels for {len(rows)} rows")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if scale is not None and scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")

    font = _label_font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_sizes = []
    for label in labels or []:
        left, top, right, bottom = probe.textbbox((0, 0), _one_line(label), font=font)
        label_sizes.append((right - min(0, left), bottom - min(0, top)))
    text_h = max((h for _, h in label_sizes), default=0)
    label_h = text_h + 2 * _SHEET_GAP if labels is not None else 0

    # Lay out each row: pick frames, upscale, compute its footprint.
    cells_per_row: list[list[np.ndarray]] = []
    for row in rows:
        count = min(len(row), max_frames)
        indices = np.linspace(0, len(row) - 1, count).round().astype(int)
        factor = scale if scale is not None else max(1, 96 // row.shape[1])
        cells = [np.repeat(np.repeat(row[i], factor, axis=0), factor, axis=1) for i in indices]
        cells_per_row.append(cells)
    row_widths = [sum(c.shape[1] for c in cells) + _SHEET_GAP * (len(cells) + 1) for cells in cells_per_row]
    label_widths = [w + 2 * _SHEET_GAP for w, _ in label_sizes]
    sheet_w = max(row_widths + label_widths)
    sheet_h = _SHEET_GAP + sum(label_h + cells[0].shape[0] + _SHEET_GAP for cells in cells_per_row)

    sheet = Image.new("RGB", (sheet_w, sheet_h), _SHEET_BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = _SHEET_GAP
    for r, cells in enumerate(cells_per_row):
        if labels is not None:
            _draw_text(draw, (_SHEET_GAP, y), _one_line(labels[r]), font)
            y += label_h
        x = _SHEET_GAP
        for cell in cells:
            sheet.paste(Image.fromarray(cell), (x, y))
            x += cell.shape[1] + _SHEET_GAP
        y += cells[0].shape[0] + _SHEET_GAP
    return atomic_file(path, lambda tmp: sheet.save(tmp, format="PNG"))


def output_paths(video_path: str | os.PathLike[str]) -> dict[str, Path]:
    """The ``X.mp4``, ``X.gif`` and ``X.png`` that `save_outputs` writes for ``X.mp4``."""
    video_path = Path(video_path)
    base = video_path.with_suffix("") if video_path.suffix.lower() == ".mp4" else video_path
    return {ext: base.with_name(f"{base.name}.{ext}") for ext in ("mp4", "gif", "png")}


def save_outputs(
    frames_uint8: np.ndarray, video_path: str | os.PathLike[str], fps: int = 8, label: str | None = None
) -> dict[str, Path]:
    """Write ``X.mp4``, ``X.gif`` and ``X.png`` (one-row contact sheet) side by side for ``X.mp4``; a file that
    cannot be written is an InputError naming it (the files written before it stay whole)."""
    outputs = output_paths(video_path)
    writers = {
        "mp4": lambda: write_video(frames_uint8, outputs["mp4"], fps=fps),
        "gif": lambda: write_video(frames_uint8, outputs["gif"], fps=fps),
        "png": lambda: write_contact_sheet([frames_uint8], outputs["png"], labels=None if label is None else [label]),
    }
    for kind, write in writers.items():
        try:
            write()
        except (OSError, av.error.FFmpegError) as exc:
            raise InputError(f"{outputs[kind]}: cannot write ({_reason(exc)})") from None
    return outputs
