"""Decoding: probing, frame ranges, fps (container, missing, variable), image folders, downscaling, bad clips."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from server import video
from server.errors import ClipError
from server.video import fps_from_timestamps, iter_frames, probe, resolve_range

try:  # tests/ as packages (relative) or as rootdir-inserted folders (absolute)
    from .preprocess_clips import moving_face_frames, write_raw_mjpeg, write_undercounted_avi, write_video
except ImportError:
    from preprocess_clips import (  # type: ignore[no-redef,unused-ignore]
        moving_face_frames,
        write_raw_mjpeg,
        write_undercounted_avi,
        write_video,
    )


@pytest.fixture(scope="module")
def small_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = moving_face_frames(count=8, size=(160, 120))
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, fps=25.0)


def test_probe_reads_size_count_and_container_fps(small_mp4: Path) -> None:
    info = probe(small_mp4)
    assert (info.kind, info.width, info.height, info.frame_count) == ("video", 160, 120, 8)
    assert info.fps == pytest.approx(25.0)
    assert not info.fps_estimated
    assert info.image_size == (160, 120) and info.downscale == 1.0


def test_iter_frames_streams_the_half_open_range_as_rgb(small_mp4: Path) -> None:
    frames = list(iter_frames(small_mp4, frames=(2, 5)))
    assert [f.index for f in frames] == [2, 3, 4]
    assert frames[0].image.shape == (120, 160, 3) and frames[0].image.dtype == np.uint8
    # The background is grey 110 and the astronaut's suit is white: RGB order must put the face's red > blue.
    skin = frames[0].image[60, 100]
    assert skin[0] > skin[2]
    assert frames[1].timestamp_ms > frames[0].timestamp_ms


@pytest.mark.parametrize(("bad", "message"), [
    ((-1, 3), "Frames -1 to 2 were asked for, but the clip has frames 0 to 7."),
    ((3, 3), "The frame range is empty: its last frame (2) comes before its first (3)."),
    ((5, 2), "The frame range is empty: its last frame (1) comes before its first (5)."),
    ((0, 9), "Frames 0 to 8 were asked for, but the clip has frames 0 to 7."),
    ((8, 9), "Frame 8 was asked for, but the clip has frames 0 to 7."),
])
def test_out_of_range_frames_are_a_clip_error(small_mp4: Path, bad: tuple[int, int], message: str) -> None:
    """Said in first/last frames (inclusive), as the Blender panel asks for them. Past the end is decided by decoding
    (a video's header count is only a hint), so the range goes through iter_frames."""
    with pytest.raises(ClipError) as err:
        list(iter_frames(small_mp4, frames=bad))
    assert str(err.value) == message


def test_missing_path_is_a_clip_error(tmp_path: Path) -> None:
    with pytest.raises(ClipError, match="does not exist"):
        probe(tmp_path / "nope.mp4")


def test_text_file_named_mp4_is_a_clip_error(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 50)
    with pytest.raises(ClipError) as err:
        probe(fake)
    message = str(err.value)
    assert "notes.mp4 could not be opened as a video (not a video, or corrupt)." in message
    assert message.endswith(".") and ". " not in message  # one sentence


def test_empty_file_is_a_clip_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ClipError, match="empty file"):
        probe(empty)


def test_truncated_mp4_is_a_clip_error(tmp_path: Path, small_mp4: Path) -> None:
    data = small_mp4.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # OpenCV's mp4v writer puts the index (moov) at the end
    with pytest.raises(ClipError):
        list(iter_frames(cut))


def test_video_with_zero_frames_is_a_clip_error(tmp_path: Path) -> None:
    path = tmp_path / "zero.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 30.0, (64, 48))
    writer.release()
    if not path.exists():
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42")  # the same situation: a container header and no frame
    with pytest.raises(ClipError):
        probe(path)


def test_missing_container_fps_falls_back_to_30_with_a_warning(
    small_mp4: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = cv2.VideoCapture

    class NoFps:
        def __init__(self, path: str) -> None:
            self._cap = real(path)

        def get(self, prop: int) -> float:
            return float("nan") if prop == cv2.CAP_PROP_FPS else self._cap.get(prop)

        def __getattr__(self, name: str) -> object:
            return getattr(self._cap, name)

    monkeypatch.setattr(video.cv2, "VideoCapture", NoFps)
    info = probe(small_mp4)
    assert info.fps == 30.0 and info.fps_estimated
    assert any("30 fps" in w for w in info.warnings)


def test_a_given_fps_overrides_the_container_s(small_mp4: Path) -> None:
    info = probe(small_mp4, fps=12.5)
    assert (info.fps, info.fps_estimated, info.fps_given, info.warnings) == (12.5, False, True, [])
    assert not probe(small_mp4).fps_given
    assert probe(small_mp4, fps=float("nan")).fps == pytest.approx(25.0)  # not a rate: the container's


def test_timestamps_detect_variable_frame_rate() -> None:
    steady = np.arange(20) * 40.0
    assert fps_from_timestamps(steady, 25.0) == (25.0, False, "")
    # Alternating 33 ms / 50 ms gaps (a phone's VFR recording): median spacing decides the rate.
    gaps = np.tile([33.0, 50.0, 33.0], 10)
    fps, variable, warning = fps_from_timestamps(np.concatenate([[0.0], np.cumsum(gaps)]), 30.0)
    assert variable and "variable frame rate" in warning
    assert fps == pytest.approx(1000.0 / 33.0)
    # A header that disagrees with steady timestamps: trust the timestamps.
    fps, variable, warning = fps_from_timestamps(np.arange(20) * 20.0, 30.0)
    assert fps == pytest.approx(50.0) and not variable and warning
    # Backends that report no timestamps (all zero) leave the container's fps, unchecked: estimated, with a warning.
    fps, estimated, warning = fps_from_timestamps(np.zeros(10), 24.0)
    assert (fps, estimated) == (24.0, True)
    assert warning == "The frames carry no usable timestamps, so the clip's 24 fps is assumed, not checked."
    assert fps_from_timestamps([0.0, float("nan"), 80.0, 120.0], 24.0)[1]


def _write_images(folder: Path, names: list[str], size: tuple[int, int] = (64, 48)) -> None:
    folder.mkdir()
    for i, name in enumerate(names):
        img = np.full((size[1], size[0], 3), 10 * i, np.uint8)
        cv2.imwrite(str(folder / name), img)


def test_image_folder_sorts_naturally_and_defaults_to_30_fps(tmp_path: Path) -> None:
    folder = tmp_path / "seq"
    _write_images(folder, ["f1.png", "f2.png", "f10.png", "f3.jpg"])
    (folder / "notes.txt").write_text("not a frame")
    info = probe(folder)
    assert [p.name for p in info.image_files] == ["f1.png", "f2.png", "f3.jpg", "f10.png"]
    assert info.fps == 30.0 and info.fps_estimated and any("30 fps" in w for w in info.warnings)
    values = [int(f.image[0, 0, 0]) for f in iter_frames(info)]
    assert values[:2] == [0, 10] and abs(values[2] - 30) <= 2 and values[3] == 20  # jpg is lossy
    assert probe(folder, fps=24.0).fps == 24.0 and not probe(folder, fps=24.0).warnings


def test_empty_folder_and_mixed_sizes_are_clip_errors(tmp_path: Path) -> None:
    (tmp_path / "none").mkdir()
    with pytest.raises(ClipError, match="contains no png or jpg"):
        probe(tmp_path / "none")
    folder = tmp_path / "mixed"
    _write_images(folder, ["a1.png"])
    cv2.imwrite(str(folder / "a2.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ClipError, match="must have one size"):
        list(iter_frames(folder))


def test_huge_frames_are_downscaled(tmp_path: Path) -> None:
    folder = tmp_path / "huge"
    folder.mkdir()
    big = np.zeros((3000, 4000, 3), np.uint8)
    big[1000:2000, 1000:3000] = 255
    for i in range(2):
        cv2.imwrite(str(folder / f"{i}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 50])
    info = probe(folder, fps=30, max_side=1280)
    assert (info.width, info.height) == (4000, 3000)
    assert info.image_size == (1280, 960) and info.downscale == pytest.approx(0.32)
    frame = next(iter_frames(info))
    assert frame.image.shape == (960, 1280, 3)
    # The white block lands at source coordinates x downscale.
    assert frame.image[480, 640, 0] > 200 and frame.image[200, 200, 0] < 50


def _mp4_boxes(data: bytes | bytearray, start: int, end: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset, size, type) of the ISO-BMFF boxes directly inside data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield pos, size, kind
        pos += size


def rotate_90_in_header(path: Path) -> None:
    """Give an mp4 a phone's portrait rotation: a 90-degree display matrix in its track header (tkhd), the metadata
    FFmpeg reports as CAP_PROP_ORIENTATION_META 90. The frames themselves stay landscape."""
    data = bytearray(path.read_bytes())
    one = 0x10000  # 16.16 fixed point
    done = False
    for moov, moov_size, kind in _mp4_boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        for trak, trak_size, kind2 in _mp4_boxes(data, moov + 8, moov + moov_size):
            if kind2 != b"trak":
                continue
            for box, _size, kind3 in _mp4_boxes(data, trak + 8, trak + trak_size):
                if kind3 == b"tkhd":
                    matrix = box + (48 if data[box + 8] == 0 else 60)  # version 0 or 1 header
                    data[matrix:matrix + 36] = struct.pack(">9i", 0, one, 0, -one, 0, 0, 0, 0, 0x40000000)
                    done = True
    assert done, "no track header found"
    path.write_bytes(bytes(data))


def test_rotation_metadata_turns_portrait_phone_clips_upright(tmp_path: Path) -> None:
    landscape = np.full((48, 64, 3), 30, np.uint8)
    landscape[:24, :16] = 250  # a bright block in the stored frame's top-left corner
    path = write_video(tmp_path / "portrait.mp4", [landscape] * 3, fps=25.0)
    rotate_90_in_header(path)
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_ORIENTATION_META) == 90.0
    cap.release()
    info = probe(path)
    assert (info.width, info.height) == (48, 64)
    frames = list(iter_frames(info))
    assert len(frames) == 3 and frames[0].image.shape == (64, 48, 3)
    # Turned 90 degrees clockwise, as the phone held it: the block is now in the top-right corner.
    bright = np.argwhere(frames[0].image[..., 0] > 150)
    assert bright[:, 0].max() < 20 and bright[:, 1].min() > 20


def test_a_relative_name_with_a_colon_is_a_file_not_a_protocol(tmp_path: Path, small_mp4: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "take1:final.mp4").write_bytes(small_mp4.read_bytes())
    monkeypatch.chdir(tmp_path)
    info = probe("take1:final.mp4")
    assert info.path == (tmp_path / "take1:final.mp4").resolve() and info.frame_count == 8
    assert len(list(iter_frames("take1:final.mp4"))) == 8


def test_a_range_of_a_stream_without_frame_count_starts_at_its_first_frame(tmp_path: Path) -> None:
    """Seeking with CAP_PROP_POS_FRAMES silently stays at frame 0 on such a stream."""
    raw = write_raw_mjpeg(tmp_path / "raw.mjpeg", 10)
    frames = list(iter_frames(raw, frames=(4, 7)))
    assert [f.index for f in frames] == [4, 5, 6]
    assert [int(f.image[0, 0, 0]) for f in frames] == pytest.approx([80, 100, 120], abs=3)


def test_a_header_that_undercounts_frames_loses_no_frame(tmp_path: Path) -> None:
    avi = write_undercounted_avi(tmp_path / "under.avi", count=10, header_count=6)
    info = probe(avi)
    assert info.frame_count == 6  # what the header says
    whole = list(iter_frames(info))
    assert [f.index for f in whole] == list(range(10))
    assert [int(f.image[0, 0, 0]) for f in whole] == pytest.approx([20 * i for i in range(10)], abs=3)
    assert resolve_range(info, (7, 10)) == (7, 10)  # past the header's count: decoding decides
    tail = list(iter_frames(info, frames=(7, 10)))  # past the header's count, inside the clip
    assert [f.index for f in tail] == [7, 8, 9]
    assert [int(f.image[0, 0, 0]) for f in tail] == pytest.approx([140, 160, 180], abs=3)
    for bad, message in (((8, 12), "Frames 8 to 11 were asked for, but the clip has frames 0 to 9."),
                         ((12, 13), "Frame 12 was asked for, but the clip has frames 0 to 9.")):
        with pytest.raises(ClipError) as err:
            next(iter_frames(info, frames=bad))  # refused before any frame is streamed
        assert str(err.value) == message


def test_a_stream_without_frame_count_is_decoded_to_its_end_and_ranges_checked_against_it(tmp_path: Path) -> None:
    raw = write_raw_mjpeg(tmp_path / "raw.mjpeg", 10)
    assert len(list(iter_frames(raw))) == 10
    with pytest.raises(ClipError) as err:
        list(iter_frames(raw, frames=(8, 12)))
    assert str(err.value) == "Frames 8 to 11 were asked for, but the clip has frames 0 to 9."
    with pytest.raises(ClipError) as err:
        list(iter_frames(raw, frames=(11, 13)))
    assert str(err.value) == "Frames 11 to 12 were asked for, but the clip has frames 0 to 9."


def test_image_folders_are_read_without_imread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Windows cv2.imread returns None for non-ASCII paths; frames are read as bytes and decoded instead."""
    folder = tmp_path / "prise_été"
    _write_images(folder, ["é1.png", "é2.png"])
    monkeypatch.setattr(video.cv2, "imread", lambda *_args, **_kw: None)  # as on Windows for these names
    assert [int(f.image[0, 0, 0]) for f in iter_frames(folder, fps=24.0)] == [0, 10]


def test_image_frames_keep_their_exif_orientation(tmp_path: Path) -> None:
    from PIL import Image

    stored = np.full((40, 60, 3), 30, np.uint8)
    stored[:20, :15] = 250  # top-left of the stored pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; show the picture rotated 90 degrees clockwise
    (tmp_path / "seq").mkdir()
    Image.fromarray(stored).save(tmp_path / "seq" / "1.jpg", exif=exif.tobytes(), quality=95)
    expected = cv2.imread(str(tmp_path / "seq" / "1.jpg"), cv2.IMREAD_COLOR)  # what imread made of it
    info = probe(tmp_path / "seq", fps=24.0)
    assert (info.width, info.height) == (40, 60)
    image = next(iter_frames(info)).image
    np.testing.assert_array_equal(image, cv2.cvtColor(expected, cv2.COLOR_BGR2RGB))
    bright = np.argwhere(image[..., 0] > 150)
    assert bright[:, 0].max() < 20 and bright[:, 1].min() >= 20  # now top-right
