"""Clip decoding: probe a video file or image folder, validate a frame range, stream RGB frames one at a time."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from server.errors import ClipError

__all__ = ["ClipError", "ClipInfo", "Frame", "probe", "iter_frames", "resolve_range", "fps_from_timestamps"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_FPS = 30.0
# Spacing deviations beyond this fraction of the median mark a clip as variable frame rate.
_VFR_TOLERANCE = 0.25


@dataclass
class ClipInfo:
    """What a clip is, before any frame is processed.

    `width`, `height` are the source frames'; `image_size` is (w, h) after downscaling so that the longest side is at
    most `max_side`; `downscale` = processed pixels per source pixel (1.0 when not downscaled).
    `frame_count` is exact for image folders; for a video it is the header's count, only a hint (some containers
    undercount or overcount, some store none: then it is 2**31): whole-clip decoding goes to the end of the stream,
    and a range is checked against the frames that decoding finds.
    """

    path: Path
    kind: str  # "video" | "images"
    frame_count: int
    fps: float
    fps_estimated: bool
    width: int
    height: int
    image_size: tuple[int, int]
    downscale: float
    image_files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fps_given: bool = False
    """`fps` is the caller's (probe's `fps`), not the container's: the frames' timestamps do not overrule it."""


@dataclass
class Frame:
    """One decoded frame: `index` is the source frame number, `image` (H, W, 3) uint8 RGB after downscaling."""

    index: int
    image: np.ndarray
    timestamp_ms: float


def _natural_key(path: Path) -> list[object]:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", path.name)]


def _read_image(path: Path) -> np.ndarray | None:
    """A BGR image, or None when it cannot be read. Read as bytes and decoded, because cv2.imread cannot open
    non-ASCII paths on Windows; imdecode with IMREAD_COLOR applies the EXIF orientation just as imread does."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def _scaled_size(width: int, height: int, max_side: int) -> tuple[tuple[int, int], float]:
    longest = max(width, height)
    if longest <= max_side:
        return (width, height), 1.0
    scale = max_side / longest
    return (max(1, round(width * scale)), max(1, round(height * scale))), scale


def probe(path: str | Path, fps: float | None = None, max_side: int = 1280) -> ClipInfo:
    """Open a clip (video file or folder of images) and describe it; raises ClipError if it cannot be used.

    `fps` (a positive number) is the clip's frame rate, overriding the container's; image folders carry none, so
    without it they get 30 fps with a warning (as does a video whose container reports none).
    """
    # Absolute, so that FFmpeg does not read a relative name with a colon (take1:final.mp4) as a protocol.
    clip = Path(path).expanduser().resolve()
    if not clip.exists():
        raise ClipError(f"The clip {clip} does not exist.")
    if clip.is_dir():
        return _probe_folder(clip, fps, max_side)
    return _probe_video(clip, max_side, fps)


def _probe_folder(folder: Path, fps: float | None, max_side: int) -> ClipInfo:
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=_natural_key)
    if not files:
        raise ClipError(f"The folder {folder} contains no png or jpg images to use as frames.")
    first = _read_image(files[0])
    if first is None:
        raise ClipError(f"The image {files[0]} could not be read.")
    height, width = first.shape[:2]
    warnings: list[str] = []
    estimated = not _usable_fps(fps)
    if fps is None or estimated:
        fps = DEFAULT_FPS
        warnings.append(f"The image folder {folder.name} carries no frame rate; assuming {DEFAULT_FPS:g} fps.")
    size, scale = _scaled_size(width, height, max_side)
    if scale != 1.0:
        warnings.append(f"Frames of {width}x{height} are downscaled to {size[0]}x{size[1]}.")
    for w in warnings:
        log.warning(w)
    return ClipInfo(folder, "images", len(files), float(fps), estimated, width, height, size, scale, files, warnings,
                    fps_given=not estimated)


def _usable_fps(fps: float | None) -> bool:
    return fps is not None and math.isfinite(fps) and fps > 0


def _open_video(path: Path) -> cv2.VideoCapture:
    """A capture that turns frames as the file's rotation metadata says (portrait phone clips): OpenCV 4.11's FFmpeg
    backend leaves CAP_PROP_ORIENTATION_AUTO off, and it must be set before the first read."""
    cap = cv2.VideoCapture(str(path))
    cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
    return cap


def _probe_video(clip: Path, max_side: int, fps: float | None) -> ClipInfo:
    if clip.stat().st_size == 0:
        raise ClipError(f"The clip {clip} is an empty file.")
    cap = _open_video(clip)
    try:
        if not cap.isOpened():
            raise ClipError(f"The file {clip} could not be opened as a video (not a video, or corrupt).")
        ok, frame = cap.read()
        if not ok or frame is None:
            raise ClipError(f"The video {clip} has no frame that can be decoded (empty or corrupt).")
        height, width = frame.shape[:2]
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        container_fps = float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()
    warnings: list[str] = []
    estimated = False
    given = False
    if fps is not None and _usable_fps(fps):
        container_fps, given = float(fps), True  # the caller's rate overrides the container's
    elif not math.isfinite(container_fps) or container_fps <= 0 or container_fps > 1000:
        container_fps = DEFAULT_FPS
        estimated = True
        warnings.append(f"The video {clip.name} reports no usable frame rate; assuming {DEFAULT_FPS:g} fps.")
    if count <= 0:
        # Some containers do not store a count; the range is then checked while decoding.
        count = 1 << 31
    size, scale = _scaled_size(width, height, max_side)
    if scale != 1.0:
        warnings.append(f"Frames of {width}x{height} are downscaled to {size[0]}x{size[1]}.")
    for w in warnings:
        log.warning(w)
    return ClipInfo(clip, "video", count, container_fps, estimated, width, height, size, scale, [], warnings,
                    fps_given=given)


def _past_the_end(start: int, stop: int, count: int) -> ClipError:
    """The range error for a clip of `count` frames, said in first/last frames (inclusive) as the Blender panel asks
    for them."""
    asked = f"Frame {start} was" if stop == start + 1 else f"Frames {start} to {stop - 1} were"
    return ClipError(f"{asked} asked for, but the clip has frames 0 to {count - 1}.")


def resolve_range(info: ClipInfo, frames: Sequence[int] | None) -> tuple[int, int]:
    """Validate a half-open [start, stop) range of source frame indices (None = the whole clip).

    A video's frame count is only its header's hint, so a range that goes past it is refused by `iter_frames`, once
    decoding shows that the clip really ends before `stop`.
    """
    if frames is None:
        return 0, info.frame_count
    if len(frames) != 2:
        raise ClipError(f"The frame range {list(frames)} must be two numbers [start, stop).")
    start, stop = int(frames[0]), int(frames[1])
    # Said in first/last frames (inclusive), as the Blender panel asks for them.
    if stop <= start:
        raise ClipError(f"The frame range is empty: its last frame ({stop - 1}) comes before its first ({start}).")
    if start < 0 or (info.kind != "video" and stop > info.frame_count):
        raise _past_the_end(start, stop, info.frame_count)
    return start, stop


def _count_frames(path: Path, limit: int) -> int:
    """How many frames a video really has, counting no further than `limit` (grab() skips the colour conversion)."""
    cap = _open_video(path)
    try:
        count = 0
        while count < limit and cap.grab():
            count += 1
        return count
    finally:
        cap.release()


def iter_frames(
    path: str | Path | ClipInfo,
    frames: Sequence[int] | None = None,
    max_side: int = 1280,
    fps: float | None = None,
) -> Iterator[Frame]:
    """Stream the frames of [start, stop) one at a time as RGB uint8, downscaled to `max_side`.

    Only one frame is held at a time. Without `frames`, a video is decoded to the end of its stream, whatever its
    header counts. A range that goes past the video's real end raises ClipError: before any frame when it goes past
    the header's count (the frames are counted first), else when decoding reaches the end. A stream that yields
    nothing raises ClipError.
    """
    info = path if isinstance(path, ClipInfo) else probe(path, fps=fps, max_side=max_side)
    start, stop = resolve_range(info, frames)
    size, scale = info.image_size, info.downscale

    def finish(image_bgr: np.ndarray) -> np.ndarray:
        if scale != 1.0:
            image_bgr = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)

    produced = 0
    if info.kind == "images":
        for index in range(start, stop):
            image = _read_image(info.image_files[index])
            if image is None:
                raise ClipError(f"The image {info.image_files[index]} could not be read.")
            if image.shape[:2] != (info.height, info.width):
                raise ClipError(
                    f"The image {info.image_files[index].name} is {image.shape[1]}x{image.shape[0]} but the first "
                    f"frame is {info.width}x{info.height}; all frames must have one size."
                )
            produced += 1
            yield Frame(index, finish(image), 1000.0 * index / info.fps)
    else:
        whole = frames is None
        if not whole and stop > info.frame_count:
            # The header's count is only a hint (some undercount): the frames themselves say whether the range fits.
            found = _count_frames(info.path, stop)
            if found < stop:
                raise _past_the_end(start, stop, found)
        cap = _open_video(info.path)
        try:
            # Reach `start` by grabbing from frame 0: CAP_PROP_POS_FRAMES does nothing on streams without a frame count
            # (raw MJPEG) and seeks by time on variable-frame-rate clips, so other frames would come back under these
            # numbers.
            for skipped in range(start):
                if not cap.grab():
                    raise _past_the_end(start, stop, skipped)
            index = start
            while whole or index < stop:
                ok, image = cap.read()
                if not ok or image is None:
                    if not whole:  # the header overcounts, or the file is truncated
                        raise _past_the_end(start, stop, index)
                    break
                produced += 1
                yield Frame(index, finish(image), float(cap.get(cv2.CAP_PROP_POS_MSEC)))
                index += 1
        finally:
            cap.release()
    if produced == 0:
        raise ClipError(f"No frame of {info.path} could be decoded in the range [{start}, {stop}).")


def fps_from_timestamps(timestamps_ms: Sequence[float] | np.ndarray, container_fps: float) -> tuple[float, bool, str]:
    """Check decoded frame timestamps against the container's fps.

    Returns (fps, estimated, warning): when the spacing varies by more than 25 % of its median (variable frame
    rate), fps is 1000 / median spacing, estimated, and `warning` says so; when the timestamps are unusable (not
    finite, or not increasing: the backend gave none), the container fps, estimated, with a warning; when steady
    spacing disagrees with the container by more than 5 %, the timestamps' fps with a warning; otherwise the
    container fps and an empty warning. Fewer than 3 timestamps are not checked.
    """
    ts = np.asarray(timestamps_ms, dtype=np.float64)
    if ts.size < 3:
        return container_fps, False, ""
    spacing = np.diff(ts)
    median = float(np.median(spacing)) if np.all(np.isfinite(ts)) else 0.0
    if median <= 0:
        return container_fps, True, (
            f"The frames carry no usable timestamps, so the clip's {container_fps:.3g} fps is assumed, not checked."
        )
    variable = bool(np.any(np.abs(spacing - median) > _VFR_TOLERANCE * median))
    median_fps = 1000.0 / median
    if variable:
        return median_fps, True, (
            f"The clip has a variable frame rate; frames are treated as evenly spaced at {median_fps:.3g} fps."
        )
    if abs(median_fps - container_fps) > 0.05 * container_fps:
        return median_fps, False, (
            f"The container says {container_fps:.3g} fps but frames are {median:.3g} ms apart; using "
            f"{median_fps:.3g} fps."
        )
    return container_fps, False, ""
