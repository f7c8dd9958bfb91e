"""Tests for motiontune.io.video: decoding, frame sampling, resizing, errors and atomic outputs."""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from motiontune.errors import ConfigError, InputError
from motiontune.io import video
from motiontune.io.video import (
    count_frames,
    frames_to_uint8,
    read_video,
    sample_indices,
    save_outputs,
    uint8_to_frames,
    write_contact_sheet,
    write_video,
)

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "reference_videos"
REFERENCE_VIDEOS = ["car_turn.mp4", "cat.mp4", "dog.mp4", "eiffel.mp4", "gold_fish.mp4"]


def reference_dir() -> Path:
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference videos not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


def moving_square(num_frames: int = 12, height: int = 24, width: int = 40) -> np.ndarray:
    """Black clip with a 6x6 white square moving left to right through the central region."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        x = 8 + round(16 * i / (num_frames - 1))
        frames[i, 9:15, x : x + 6] = 255
    return frames


def brightness_video(num_frames: int = 20, size: int = 16) -> np.ndarray:
    """Flat grey frames whose brightness encodes the frame index: value = 8 + 12 * index."""
    values = (8 + 12 * np.arange(num_frames)).astype(np.uint8)
    return np.broadcast_to(values[:, None, None, None], (num_frames, size, size, 3)).copy()


def frame_indices_from_brightness(pixels: torch.Tensor) -> list[float]:
    """Recover the (fractional) frame index encoded by brightness_video from decoded [-1, 1] pixels."""
    values = (pixels.float() + 1) * 127.5
    return [(float(v) - 8) / 12 for v in values.mean(dim=(1, 2, 3))]


def assert_one_line_naming(exc: BaseException, path: Path) -> None:
    message = str(exc)
    assert path.name in message, message
    assert "\n" not in message and "\r" not in message, message


@pytest.fixture(scope="module")
def brightness_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bright") / "bright.mp4"
    write_video(brightness_video(), path, fps=8, crf=4)
    return path


# --------------------------------------------------------------------------------------------- reading


def test_roundtrip_moving_square_shape_range_and_motion(tmp_path: Path) -> None:
    path = write_video(moving_square(), tmp_path / "square.mp4", fps=8)
    assert path == tmp_path / "square.mp4" and path.is_file()
    assert count_frames(path) == 12

    pixels = read_video(path, num_frames=8, height=16, width=16)
    assert pixels.shape == (8, 3, 16, 16)
    assert pixels.dtype == torch.float32
    assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0
    assert float(pixels.max()) > 0.9 and float(pixels.min()) < -0.9  # white square on black survives

    weights = (pixels.mean(dim=1) + 1).numpy()  # (F, H, W), background ~0
    cols = np.arange(16)
    cx = [(w.sum(axis=0) * cols).sum() / w.sum() for w in weights]
    cy = [(w.sum(axis=1) * cols).sum() / w.sum() for w in weights]
    assert np.all(np.diff(cx) > 0.5), cx  # moves right in every sampled frame
    assert np.ptp(cy) < 0.5, cy  # and not vertically
    # 40x24 -> resize to 27x16 (shorter side covers 16) -> center crop removes 5 columns on the left:
    # frame 0's square (columns 8..13, centre 11) lands at x = 11 * 27 / 40 - 0.5 - 5 ~= 1.9.
    assert cx[0] == pytest.approx(1.9, abs=0.75)
    assert cx[-1] == pytest.approx((24 + 3) * 27 / 40 - 0.5 - 5, abs=0.75)


def test_uint8_frames_map_to_minus_one_one_channels_first_and_back() -> None:
    frames = np.zeros((2, 1, 4, 5, 3), dtype=np.uint8)
    frames[..., 0] = 255
    frames[0, 0, 1, 2] = (0, 51, 255)
    pixels = uint8_to_frames(frames)
    assert pixels.shape == (2, 1, 3, 4, 5) and pixels.dtype == torch.float32
    assert torch.equal(pixels[0, 0, :, 1, 2], torch.tensor([-1.0, 51 / 127.5 - 1, 1.0]))
    assert torch.equal(pixels[1, 0, 0], torch.ones(4, 5)) and torch.equal(pixels[1, 0, 1], -torch.ones(4, 5))
    assert np.array_equal(frames_to_uint8(pixels[0]), frames[0])


def test_resize_center_crop_keeps_the_middle_of_a_wide_frame(tmp_path: Path) -> None:
    frames = np.zeros((4, 20, 60, 3), np.uint8)
    frames[:, :, :20] = (255, 0, 0)  # left third red
    frames[:, :, 20:40] = (0, 255, 0)  # middle third green
    frames[:, :, 40:] = (0, 0, 255)  # right third blue
    pixels = read_video(write_video(frames, tmp_path / "wide.mp4", crf=4), 4, 20, 20)
    center = frames_to_uint8(pixels)[:, 4:16, 4:16].reshape(-1, 3).mean(axis=0)
    assert center[1] > 200 and center[0] < 40 and center[2] < 40  # only the green middle remains

    upscaled = read_video(tmp_path / "wide.mp4", 4, 40, 10)  # upscaling path (INTER_LINEAR)
    assert upscaled.shape == (4, 3, 40, 10)
    assert frames_to_uint8(upscaled)[:, 5:35, 2:8, 1].mean() > 200  # still the green middle

    tall = np.zeros((4, 60, 20, 3), np.uint8)
    tall[:, :20], tall[:, 20:40], tall[:, 40:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    pixels = read_video(write_video(tall, tmp_path / "tall.mp4", crf=4), 4, 10, 10)  # shrink (INTER_AREA)
    center = frames_to_uint8(pixels)[:, 2:8, 2:8].reshape(-1, 3).mean(axis=0)
    assert center[1] > 200 and center[0] < 40 and center[2] < 40


@pytest.mark.parametrize(("degrees", "red_rows"), [(90, slice(24, 32)), (-90, slice(0, 8))])
def test_display_rotation_is_applied(tmp_path: Path, degrees: int, red_rows: slice) -> None:
    """Phone videos store landscape frames plus a display matrix; frames must come out upright."""
    frame = np.zeros((16, 32, 3), np.uint8)
    frame[:, :8] = (255, 0, 0)  # red stripe on the left of the stored frame
    path = tmp_path / f"rot{degrees}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8, options={"crf": "4"})
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        stream.set_display_rotation(degrees)  # counter-clockwise
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    upright = frames_to_uint8(read_video(path, 3, 32, 16))  # portrait: no crop needed
    assert upright.shape == (3, 32, 16, 3)
    red = (upright[..., 0] > 128) & (upright[..., 1] < 100)
    assert red[:, red_rows].mean() > 0.9 and red.mean() == pytest.approx(0.25, abs=0.05)


def test_uniform_sampling_picks_evenly_spaced_frames(brightness_mp4: Path) -> None:
    assert sample_indices(20, 5, "uniform") == [0, 5, 10, 14, 19]  # linspace(0, 19, 5).round()
    got = frame_indices_from_brightness(read_video(brightness_mp4, 5, 8, 8, sampling="uniform"))
    assert got == pytest.approx([0, 5, 10, 14, 19], abs=0.25)
    all_frames = frame_indices_from_brightness(read_video(brightness_mp4, 20, 8, 8))
    assert all_frames == pytest.approx(list(range(20)), abs=0.25)


@pytest.mark.parametrize(("spec", "expected"), [("stride:3", [0, 3, 6, 9, 12]), ("stride:4", [0, 4, 8, 12, 16])])
def test_stride_sampling_picks_every_kth_frame(brightness_mp4: Path, spec: str, expected: list[int]) -> None:
    assert sample_indices(20, 5, spec) == expected
    got = frame_indices_from_brightness(read_video(brightness_mp4, 5, 8, 8, sampling=spec))
    assert got == pytest.approx(expected, abs=0.25)


def test_stride_sampling_too_short_clip(brightness_mp4: Path) -> None:
    with pytest.raises(InputError, match=r"has 20 frames, need at least 21") as info:
        read_video(brightness_mp4, 5, 8, 8, sampling="stride:5")  # needs frames 0..20
    assert_one_line_naming(info.value, brightness_mp4)


def test_gif_and_image_folder_inputs(tmp_path: Path) -> None:
    frames = brightness_video(num_frames=13, size=12)
    gif = write_video(frames, tmp_path / "clip.gif", fps=10)
    assert count_frames(gif) == 13
    got = frame_indices_from_brightness(read_video(gif, 4, 6, 6))
    assert got == pytest.approx([0, 4, 8, 12], abs=0.25)  # linspace(0, 12, 4)

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):  # unpadded names: natural order must beat string order
        Image.fromarray(frame).save(folder / f"frame{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    assert count_frames(folder) == 13
    got = frame_indices_from_brightness(read_video(folder, 13, 12, 12))
    assert got == pytest.approx(list(range(13)), abs=0.01)  # PNG is lossless; frame10 after frame9


@pytest.mark.parametrize("name", REFERENCE_VIDEOS)
def test_reference_videos_load(name: str) -> None:
    path = reference_dir() / name
    for num_frames, size in ((8, 32), (16, 64)):
        pixels = read_video(path, num_frames, size, size)
        assert pixels.shape == (num_frames, 3, size, size)
        assert pixels.dtype == torch.float32
        assert torch.isfinite(pixels).all()
        assert -1.0 <= float(pixels.min()) < float(pixels.max()) <= 1.0


def test_reference_car_turn_has_16_frames() -> None:
    path = reference_dir() / "car_turn.mp4"
    assert count_frames(path) == 16
    assert read_video(path, 16, 32, 32).shape == (16, 3, 32, 32)
    with pytest.raises(InputError, match="has 16 frames, need at least 17"):
        read_video(path, 17, 32, 32)


def test_reference_captions_csv_lists_the_videos() -> None:
    with open(reference_dir() / "captions.csv", newline="", encoding="utf-8") as handle:
        names = sorted(row["video_path"] for row in csv.DictReader(handle))
    assert names == REFERENCE_VIDEOS


# ---------------------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(InputError, match="no such file") as info:
        read_video(path, 8, 16, 16)
    assert_one_line_naming(info.value, path)
    with pytest.raises(InputError):
        count_frames(path)


def test_text_file_renamed_mp4_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(InputError, match="cannot read video") as info:
        read_video(path, 8, 16, 16)
    assert_one_line_naming(info.value, path)


def test_corrupt_video_data(tmp_path: Path) -> None:
    path = write_video(moving_square(), tmp_path / "corrupt.mp4")
    data = bytearray(path.read_bytes())
    start = data.find(b"mdat") + 4
    size = int.from_bytes(data[start - 8 : start - 4], "big") - 8
    data[start : start + size] = bytes(size)  # wipe the coded frames, keep the container intact
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as info:
        read_video(path, 8, 16, 16)
    assert_one_line_naming(info.value, path)


@pytest.mark.parametrize("keep", [1 / 3, 2 / 3])
def test_truncated_video_is_refused(tmp_path: Path, keep: float) -> None:
    """A file cut short must not train on the frames that survive (multi-threaded decoding used to hide it)."""
    rng = np.random.default_rng(0)
    path = write_video(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), tmp_path / "full.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: round(path.stat().st_size * keep)])
    with pytest.raises(InputError, match=r"truncated|cannot decode") as info:
        count_frames(cut)
    assert_one_line_naming(info.value, cut)


def test_variable_frame_rate_and_transparency_are_reported(tmp_path: Path, caplog) -> None:
    from fractions import Fraction

    vfr = tmp_path / "vfr.mp4"
    with av.open(str(vfr), "w") as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1000)
        time = 0
        for index in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 30, np.uint8), format="rgb24")
            frame.pts, frame.time_base = time, Fraction(1, 1000)
            time += 40 if index % 2 else 200
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames = [Image.fromarray(np.full((32, 32, 3), i * 30, np.uint8)).convert("P") for i in range(4)]
    transparent = tmp_path / "alpha.gif"
    frames[0].save(transparent, save_all=True, append_images=frames[1:], transparency=0, duration=100)
    steady = write_video(moving_square(), tmp_path / "steady.mp4")
    with caplog.at_level("WARNING", logger="motiontune"):
        assert count_frames(vfr) == 8
        assert count_frames(transparent) == 4
        assert count_frames(steady) == 12
    lines = [record.getMessage() for record in caplog.records]
    assert any(str(vfr) in line and "variable frame rate (frame intervals 40-200 ms)" in line for line in lines)
    assert any(str(transparent) in line and "transparency dropped" in line for line in lines)
    assert not any(str(steady) in line for line in lines), lines


def test_empty_files_and_folders(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(InputError, match="empty video") as info:
        read_video(empty, 8, 16, 16)
    assert_one_line_naming(info.value, empty)

    # A container whose video track holds no frame at all (the mp4 demuxer drops such a track).
    no_frames = tmp_path / "noframes.mp4"
    with av.open(str(no_frames), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = 16
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
        container.mux(stream.encode())
    with pytest.raises(InputError) as info:
        read_video(no_frames, 8, 16, 16)
    assert_one_line_naming(info.value, no_frames)

    folder = tmp_path / "noframes_dir"
    folder.mkdir()
    with pytest.raises(InputError, match="empty video") as info:
        read_video(folder, 8, 16, 16)
    assert_one_line_naming(info.value, folder)


def test_too_few_frames(tmp_path: Path) -> None:
    path = write_video(moving_square(num_frames=5), tmp_path / "short.mp4")
    with pytest.raises(InputError, match="video has 5 frames, need at least 8") as info:
        read_video(path, 8, 16, 16)
    assert_one_line_naming(info.value, path)


@pytest.mark.parametrize("spec", ["random", "stride:0", "stride:-2", "stride:x", "stride:", "stride:1.5", ""])
def test_bad_sampling_spec(brightness_mp4: Path, spec: str) -> None:
    with pytest.raises(ConfigError, match="invalid sampling") as info:
        read_video(brightness_mp4, 4, 8, 8, sampling=spec)
    assert_one_line_naming(info.value, brightness_mp4)


def test_bad_sizes_are_config_errors(brightness_mp4: Path) -> None:
    for kwargs in ({"num_frames": 0, "height": 8, "width": 8}, {"num_frames": 4, "height": 0, "width": 8}):
        with pytest.raises(ConfigError) as info:
            read_video(brightness_mp4, **kwargs)
        assert_one_line_naming(info.value, brightness_mp4)


# ---------------------------------------------------------------------------------------------- writing


def test_frames_to_uint8_inverts_read_scaling_and_clamps() -> None:
    frames = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.float32).view(1, 3, 1, 2) / 127.5 - 1
    out = frames_to_uint8(frames)
    assert out.shape == (1, 1, 2, 3) and out.dtype == np.uint8
    assert out.transpose(0, 3, 1, 2).ravel().tolist() == [0, 1, 127, 128, 254, 255]
    wild = frames_to_uint8(torch.tensor([-3.0, 3.0, float("nan")]).view(1, 3, 1, 1))
    assert wild.ravel().tolist() == [0, 255, 128]
    with pytest.raises(ValueError):
        frames_to_uint8(torch.zeros(3, 8, 8))


@pytest.mark.parametrize(("height", "width"), [(16, 16), (32, 32), (15, 17)])
def test_write_small_and_odd_sizes(tmp_path: Path, height: int, width: int) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (6, height, width, 3), dtype=np.uint8)
    path = write_video(frames, tmp_path / "nested" / "dir" / "small.mp4", fps=12)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (width + width % 2, height + height % 2)  # padded, not scaled
        assert stream.average_rate == 12
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(decoded) == 6
    if height % 2:  # padding replicates the edge row
        assert np.abs(decoded[0][-1].astype(int) - decoded[0][-2].astype(int)).mean() < 40
    assert sorted(p.name for p in path.parent.iterdir()) == ["small.mp4"]  # no temp file left


def test_mpeg4_fallback_when_libx264_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video, "_VIDEO_CODECS", ("libx264_not_built", "mpeg4"))
    path = write_video(brightness_video(), tmp_path / "fallback.mp4")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    got = frame_indices_from_brightness(read_video(path, 20, 8, 8))
    assert got == pytest.approx(list(range(20)), abs=0.25)


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError):
        write_video(np.zeros((4, 16, 16), np.uint8), out / "bad.mp4")  # wrong ndim
    with pytest.raises(ValueError):
        write_video(np.zeros((4, 16, 16, 3), np.float32), out / "bad.gif")  # wrong dtype
    assert list(out.iterdir()) == []

    # A failure in the middle of encoding (after the temp file has data): the temp file is removed and
    # an existing output survives untouched.
    previous = write_video(moving_square(), out / "keep.mp4")
    before = previous.read_bytes()
    from_ndarray = av.VideoFrame.from_ndarray
    calls = []

    def fail_on_tenth_frame(*args: object, **kwargs: object) -> av.VideoFrame:
        calls.append(1)
        if len(calls) == 10:
            raise RuntimeError("encoder died")
        return from_ndarray(*args, **kwargs)

    def explode(image: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        Path(str(fp)).write_bytes(b"partial output")
        raise RuntimeError("encoder died")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail_on_tenth_frame)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_video(brightness_video(), out / "keep.mp4")
    monkeypatch.setattr(Image.Image, "save", explode)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_video(brightness_video(), out / "anim.gif")
    with pytest.raises(RuntimeError, match="encoder died"):
        write_contact_sheet([moving_square()], out / "sheet.png")
    assert sorted(p.name for p in out.iterdir()) == ["keep.mp4"]
    assert previous.read_bytes() == before


def test_gif_output(tmp_path: Path) -> None:
    frames = moving_square(num_frames=7, height=32, width=32)
    path = write_video(frames, tmp_path / "anim.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.format == "GIF"
        assert gif.size == (32, 32)
        assert gif.n_frames == 7
        assert gif.info["loop"] == 0  # loops forever
        assert gif.info["duration"] == 100
        gif.seek(3)
        restored = np.asarray(gif.convert("RGB"))
    assert np.abs(restored.astype(int) - frames[3]).max() <= 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif"]


def test_contact_sheet_layout_and_content(tmp_path: Path) -> None:
    gap = video._SHEET_GAP
    rows = [np.zeros((10, 16, 16, 3), np.uint8), np.zeros((3, 16, 16, 3), np.uint8)]
    for i in range(10):
        rows[0][i] = (20 * i, 0, 200)  # red channel encodes the frame index
    rows[1][:] = (0, 255, 0)

    path = write_contact_sheet(rows, tmp_path / "sheet.png", max_frames=4)
    cell = 16 * (96 // 16)  # tiny frames are upscaled 6x
    with Image.open(path) as sheet:
        assert sheet.format == "PNG"
        assert sheet.size == (4 * cell + 5 * gap, 2 * cell + 3 * gap)
        pixels = np.asarray(sheet.convert("RGB"))
    for col, index in enumerate([0, 3, 6, 9]):  # linspace(0, 9, 4)
        x = gap + col * (cell + gap) + cell // 2
        assert pixels[gap + cell // 2, x].tolist() == [20 * index, 0, 200]
    row2_y = 2 * gap + cell + cell // 2
    assert pixels[row2_y, gap + cell // 2].tolist() == [0, 255, 0]
    assert pixels[row2_y, gap + 3 * (cell + gap) + cell // 2].tolist() != [0, 255, 0]  # only 3 cells

    labelled = write_contact_sheet(rows, tmp_path / "labelled.png", labels=["first", "second"], scale=2)
    with Image.open(labelled) as sheet:
        width, height = sheet.size
    assert width == 8 * 32 + 9 * gap  # max_frames=8 cells of 16*2 px
    assert height > 2 * 32 + 3 * gap + 2 * 8  # room for two text lines
    with pytest.raises(ValueError):
        write_contact_sheet(rows, tmp_path / "x.png", labels=["only one"])


def test_save_outputs_writes_mp4_gif_png(tmp_path: Path) -> None:
    frames = moving_square(num_frames=9, height=32, width=32)
    outputs = save_outputs(frames, tmp_path / "samples" / "step_10.mp4", fps=8, label="a white square")
    assert set(outputs) == {"mp4", "gif", "png"}
    assert [p.name for p in outputs.values()] == ["step_10.mp4", "step_10.gif", "step_10.png"]
    assert count_frames(outputs["mp4"]) == 9
    with Image.open(outputs["gif"]) as gif:
        assert gif.n_frames == 9 and gif.size == (32, 32)
    with Image.open(outputs["png"]) as png:
        assert png.format == "PNG" and png.width == 8 * 96 + 9 * video._SHEET_GAP
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step_10.gif",
        "step_10.mp4",
        "step_10.png",
    ]
