"""Preprocessing of a clip for fitting: decode, track the face, 68-point landmarks, stable crops, optical flow, cache.

The contract (fields, units, errors, callbacks) is docs/internals.md "Preprocessing"; the steps and measured numbers
are in docs/preprocessing.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from server.cache import PreprocessCache, cache_key, clip_digest
from server.crop import CROP_SIZE, cut_crop, face_boxes, to_crop_coords
from server.errors import Cancelled, ClipError
from server.flow import FLOW_MODES, FlowEstimator
from server.landmarks.fan import select_lmk68
from server.landmarks.mapping import mp_to_68
from server.landmarks.mediapipe_tracker import MediaPipeTracker, assemble_track
from server.video import fps_from_timestamps, iter_frames, probe, resolve_range

__all__ = ["PREPROCESS_VERSION", "Preprocessed", "preprocess", "ClipError", "Cancelled"]

# Part of the cache key: bump whenever a change alters what preprocessing produces.
PREPROCESS_VERSION = "1"
# A clip whose face is found in fewer than this fraction of its frames is refused: a lone (perhaps false) detection
# would otherwise be held over every frame, a frozen take.
MIN_FACE_COVERAGE = 0.10

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]

_ARRAY_FIELDS = ("frame_numbers", "mp_landmarks", "confidence", "face_found", "lmk68", "crop_boxes", "crops", "flow")


@dataclass
class Preprocessed:
    """One clip, ready for fitting. T frames; image pixels are those of the (possibly downscaled) processed frames.

    frame_numbers (T,) source frame indices · mp_landmarks (T, 478, 3) x, y pixels and z in the same pixel units ·
    confidence (T,) · face_found (T,) bool · lmk68 (T, 68, 2) pixels · crop_boxes (T, 3) [x0, y0, size] ·
    crops (T, 224, 224, 3) uint8 RGB · flow (T-1, 224, 224, 2) float16, crop t -> crop t+1 in crop pixels.
    `downscale` = processed pixels per source pixel; `image_size` = (w, h) as processed.
    """

    frame_numbers: np.ndarray
    fps: float
    fps_estimated: bool
    image_size: tuple[int, int]
    downscale: float
    mp_landmarks: np.ndarray
    confidence: np.ndarray
    face_found: np.ndarray
    lmk68: np.ndarray
    lmk68_source: str
    crop_boxes: np.ndarray
    crops: np.ndarray
    flow: np.ndarray
    flow_mode: str
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    clip: str = ""
    cache_hit: bool = False

    @property
    def lmk68_crop(self) -> np.ndarray:
        """lmk68 in crop pixels (T, 68, 2)."""
        return to_crop_coords(self.lmk68, self.crop_boxes, CROP_SIZE)

    @property
    def mp_landmarks_crop(self) -> np.ndarray:
        """mp_landmarks x, y in crop pixels (T, 478, 2)."""
        return to_crop_coords(self.mp_landmarks, self.crop_boxes, CROP_SIZE)


def _check(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("Preprocessing was cancelled.")


def preprocess(
    clip: str | Path,
    frames: Sequence[int] | None = None,
    flow: str = "fast",
    cache_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    max_side: int = 1280,
    fps: float | None = None,
    use_cache: bool = True,
) -> Preprocessed:
    """Preprocess `clip` (video file or image folder) over the half-open source frame range `frames`.

    flow: "fast" (DIS) or "tvl1" (the paper's TV-L1). fps: the clip's frame rate, overriding the container's and
    its timestamps; image folders carry none (default 30 with a warning), nor do some raw streams.
    Results are cached under cache_dir (default $MICROEXP_CACHE or ~/.cache/blender_microexp) unless use_cache is
    False. progress(stage, done, total) is called per frame of each stage ("landmarks", "crop", "flow");
    cancel() is polled every frame and a True raises Cancelled, leaving no cache entry.
    Raises ClipError (one sentence) for a missing/corrupt/empty clip, a bad range, or no face in any frame.
    """
    if flow not in FLOW_MODES:
        raise ValueError(f"Unknown flow mode {flow!r}; use one of {', '.join(FLOW_MODES)}.")
    info = probe(clip, fps=fps, max_side=max_side)
    start, stop = resolve_range(info, frames)
    range_key = None if frames is None else [start, stop]

    # 68 points: FAN needs the images again, so it runs in the crop pass; which source is used is part of the key
    # (FAN weights installed after a clip was cached must not be ignored for it).
    source, fan = select_lmk68()

    cache = PreprocessCache(cache_dir) if use_cache else None
    key = ""
    if cache is not None:
        settings = {"frames": range_key, "flow": flow, "max_side": max_side, "version": PREPROCESS_VERSION,
                    "fps": info.fps if info.kind == "images" or info.fps_given else None, "lmk68": source}
        key = cache_key(clip_digest(info.path), settings)
        t0 = time.perf_counter()
        hit = cache.load(key)
        if hit is not None:
            return _from_cache(*hit, load_seconds=time.perf_counter() - t0)

    warnings = list(info.warnings)
    timings: dict[str, float] = {}
    report = progress or (lambda stage, done, total: None)

    # Pass 1: decode + track. Only landmarks are kept; frames are dropped as soon as they are tracked.
    t0 = time.perf_counter()
    total = stop - start if info.frame_count < (1 << 31) else 0  # a video's header count is only a hint
    observations: list[tuple[np.ndarray, float] | None] = []
    frame_numbers: list[int] = []
    stamps: list[float] = []
    with MediaPipeTracker() as tracker:
        # The whole clip (frames=None) is decoded to the end of its stream, past a header that undercounts.
        for frame in iter_frames(info, None if frames is None else (start, stop)):
            _check(cancel)
            observations.append(tracker(frame.image))
            frame_numbers.append(frame.index)
            stamps.append(frame.timestamp_ms)
            report("landmarks", len(observations), max(total, len(observations)))
    count = len(observations)
    if total and count < total:  # only the whole clip gets here: a range past the clip's end is a ClipError
        warnings.append(f"The clip ended after {count} of the {total} frames its header counts.")
    if frames is None and info.kind == "video":
        # Decoded to its end: the real count, so that the crop pass's range is not counted again against a header
        # that undercounts.
        info = replace(info, frame_count=frame_numbers[-1] + 1 if frame_numbers else 0)
    track = assemble_track(observations)
    if track is None:
        raise ClipError(f"No face was found in any frame of {info.path.name}.")
    found = np.flatnonzero(track.face_found)
    if len(found) < MIN_FACE_COVERAGE * count:
        raise ClipError(f"The face was found in only {len(found)} of the {count} frames of {info.path.name}, fewer "
                        f"than the {100 * MIN_FACE_COVERAGE:g} % needed to follow it.")
    lost = count - len(found)
    if lost:
        held = int(found[0]) + (count - 1 - int(found[-1]))  # fill_missing holds the ends, interpolates the rest
        parts = [f"{lost - held} between detections are interpolated"] if lost > held else []
        if held:
            parts.append(f"{held} before the first or after the last detection hold that detection's landmarks")
        warnings.append(f"The face was not found in {lost} of {count} frames; {' and '.join(parts)}.")
    clip_fps, fps_estimated = info.fps, info.fps_estimated
    if info.kind == "video" and not info.fps_given:
        measured, estimated, note = fps_from_timestamps(stamps, info.fps)
        if note:
            warnings.append(note)
            clip_fps, fps_estimated = measured, fps_estimated or estimated
    timings["decode_landmarks"] = time.perf_counter() - t0

    lmk68 = mp_to_68(track.landmarks)

    # Pass 2: smoothed boxes, then re-decode to cut crops (cheaper than holding a clip of full frames in memory).
    t0 = time.perf_counter()
    boxes = face_boxes(track.landmarks)
    crops = np.empty((count, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    done = 0
    for frame in iter_frames(info, (frame_numbers[0], frame_numbers[-1] + 1)):
        if done >= count:
            break
        _check(cancel)
        crops[done] = cut_crop(frame.image, boxes[done])
        if fan is not None and track.face_found[done]:
            lmk68[done] = fan(frame.image, lmk68[done])
        done += 1
        report("crop", done, count)
    if done < count:
        raise ClipError(f"The clip {info.path.name} could not be decoded a second time (it changed or is corrupt).")
    timings["crop"] = time.perf_counter() - t0

    # Pass 3: flow between adjacent crops.
    t0 = time.perf_counter()
    estimator = FlowEstimator(flow)
    flows = np.empty((max(count - 1, 0), CROP_SIZE, CROP_SIZE, 2), dtype=np.float16)
    for t in range(count - 1):
        _check(cancel)
        flows[t] = estimator(crops[t], crops[t + 1])
        report("flow", t + 1, count - 1)
    timings["flow"] = time.perf_counter() - t0

    result = Preprocessed(
        frame_numbers=np.asarray(frame_numbers, dtype=np.int64),
        fps=float(clip_fps),
        fps_estimated=bool(fps_estimated),
        image_size=info.image_size,
        downscale=float(info.downscale),
        mp_landmarks=track.landmarks,
        confidence=track.confidence,
        face_found=track.face_found,
        lmk68=lmk68.astype(np.float32),
        lmk68_source=source,
        crop_boxes=boxes,
        crops=crops,
        flow=flows,
        flow_mode=flow,
        timings=timings,
        warnings=warnings,
        clip=str(info.path),
    )
    if cache is not None:
        _check(cancel)
        try:
            cache.store(key, {name: getattr(result, name) for name in _ARRAY_FIELDS}, _meta(result))
        except OSError as exc:  # a full disk or a read-only cache folder costs the cache, not the job
            result.warnings.append(f"The preprocessing cache in {cache.root} could not be written "
                                   f"({exc.strerror or 'write failed'}), so this clip will be preprocessed again "
                                   "next time.")
    return result


def _meta(pre: Preprocessed) -> dict[str, Any]:
    return {
        "fps": pre.fps,
        "fps_estimated": pre.fps_estimated,
        "image_size": list(pre.image_size),
        "downscale": pre.downscale,
        "lmk68_source": pre.lmk68_source,
        "flow_mode": pre.flow_mode,
        "timings": pre.timings,
        "warnings": pre.warnings,
        "clip": pre.clip,
        "version": PREPROCESS_VERSION,
    }


def _from_cache(arrays: dict[str, np.ndarray], meta: dict[str, Any], load_seconds: float) -> Preprocessed:
    return Preprocessed(
        **{name: arrays[name] for name in _ARRAY_FIELDS},
        fps=float(meta["fps"]),
        fps_estimated=bool(meta["fps_estimated"]),
        image_size=(int(meta["image_size"][0]), int(meta["image_size"][1])),
        downscale=float(meta["downscale"]),
        lmk68_source=str(meta["lmk68_source"]),
        flow_mode=str(meta["flow_mode"]),
        timings={"cache_load": load_seconds},
        warnings=list(meta["warnings"]),
        clip=str(meta["clip"]),
        cache_hit=True,
    )
