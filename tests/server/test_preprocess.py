"""preprocess(): the Preprocessed contract end to end, stable crops, lost faces, errors, cancel, progress, cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import pytest

from server.crop import cut_crop, face_boxes
from server.errors import Cancelled, ClipError
from server.preprocess import Preprocessed, preprocess

try:  # tests/ as packages (relative) or as rootdir-inserted folders (absolute)
    from .preprocess_clips import moving_face_frames, noise_frames, write_undercounted_avi, write_video
except ImportError:
    from preprocess_clips import (  # type: ignore[no-redef,unused-ignore]
        moving_face_frames,
        noise_frames,
        write_undercounted_avi,
        write_video,
    )


class FakeTracker:
    """Stands in for MediaPipeTracker (no model run): a fixed synthetic mesh, 20 px across at the frame's centre,
    in the frames (counted from 0 by call) for which `found` is true, else no face."""

    def __init__(self, found: Callable[[int], bool]) -> None:
        self.found, self.calls = found, 0
        rng = np.random.default_rng(0)
        self.mesh = np.concatenate([rng.uniform(-10, 10, (478, 2)), rng.uniform(-5, 5, (478, 1))], axis=1)

    def __enter__(self) -> FakeTracker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        pass

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, float] | None:
        t, self.calls = self.calls, self.calls + 1
        if not self.found(t):
            return None
        centre = np.array([rgb.shape[1] / 2, rgb.shape[0] / 2, 0.0])
        return (self.mesh + centre).astype(np.float32), 0.9


InstallTracker = Callable[[Callable[[int], bool]], None]


@pytest.fixture
def fake_tracker(monkeypatch: pytest.MonkeyPatch) -> InstallTracker:
    """Call it with `found(t)` to make preprocess track with a FakeTracker."""

    def install(found: Callable[[int], bool]) -> None:
        monkeypatch.setattr("server.preprocess.MediaPipeTracker", lambda: FakeTracker(found))

    return install


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    moving = moving_face_frames(count=10, size=(320, 240), step=1.0)
    gap = list(moving)
    for t in (4, 5, 6):
        gap[t] = np.full_like(moving[t], 110)  # the face leaves the picture for three frames
    return {
        "moving": write_video(folder / "moving.mp4", moving),
        "static": write_video(folder / "static.mp4", moving_face_frames(count=12, step=0.0, noise=4.0)),
        "gap": write_video(folder / "gap.mp4", gap),
        "noface": write_video(folder / "noface.mp4", noise_frames()),
    }


@pytest.fixture(scope="module")
def moving_result(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Preprocessed:
    return preprocess(clips["moving"], cache_dir=tmp_path_factory.mktemp("cache"))


def test_result_follows_the_contract(moving_result: Preprocessed) -> None:
    pre = moving_result
    t = 10
    np.testing.assert_array_equal(pre.frame_numbers, np.arange(t))
    assert pre.fps == pytest.approx(30.0) and not pre.fps_estimated
    assert pre.image_size == (320, 240) and pre.downscale == 1.0
    assert pre.mp_landmarks.shape == (t, 478, 3) and pre.mp_landmarks.dtype == np.float32
    assert pre.confidence.shape == (t,) and (pre.confidence > 0.5).all()
    assert pre.face_found.dtype == bool and pre.face_found.all()
    assert pre.lmk68.shape == (t, 68, 2) and pre.lmk68_source == "mediapipe-map"
    assert pre.crop_boxes.shape == (t, 3)
    assert pre.crops.shape == (t, 224, 224, 3) and pre.crops.dtype == np.uint8
    assert pre.flow.shape == (t - 1, 224, 224, 2) and pre.flow.dtype == np.float16
    assert pre.flow_mode == "fast"
    assert set(pre.timings) == {"decode_landmarks", "crop", "flow"}
    # The face drifts 1 px/frame to the right; the landmarks follow it.
    drift = np.diff(pre.mp_landmarks[:, :, 0].mean(axis=1))
    assert np.median(drift) == pytest.approx(1.0, abs=0.3)


def test_crop_coordinates_follow_the_contract_formula(moving_result: Preprocessed) -> None:
    pre = moving_result
    box = pre.crop_boxes[3]
    expected = (pre.lmk68[3] - box[:2]) * 224.0 / box[2]
    np.testing.assert_allclose(pre.lmk68_crop[3], expected, rtol=1e-5)
    # The box is ~1.6x the face and centred on it: every landmark lands well inside the crop.
    inside = pre.mp_landmarks_crop
    assert inside.min() > 10 and inside.max() < 214


def test_cut_crop_matches_the_box_mapping_to_subpixel_accuracy() -> None:
    rng = np.random.default_rng(0)
    image = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    image = np.ascontiguousarray(np.repeat(np.repeat(image[::4, ::4], 4, 0), 4, 1))  # blocky, so sampling is testable
    crop = cut_crop(image, np.array([100.0, 50.0, 224.0]))
    np.testing.assert_array_equal(crop[10:-10, 10:-10], image[60:50 + 214, 110:100 + 214])


def test_cut_crop_of_a_large_box_keeps_the_mapping() -> None:
    """Boxes over twice the crop size go down a pyramid first; the box-to-crop mapping must survive that."""
    x = np.arange(1200, dtype=np.float32)
    image = np.ascontiguousarray(np.broadcast_to((0.2 * x)[None, :, None], (1000, 1200, 3)).astype(np.uint8))
    crop = cut_crop(image, np.array([100.0, 50.0, 896.0]))
    expected = 0.2 * (100.0 + np.arange(224) * 896.0 / 224.0)  # image x of each crop column, times 0.2
    np.testing.assert_allclose(crop[112, 8:-8, 0], expected[8:-8], atol=1.5)


def test_static_face_gives_a_still_crop_box(clips: dict[str, Path]) -> None:
    pre = preprocess(clips["static"], use_cache=False)
    moves = np.abs(np.diff(pre.crop_boxes, axis=0))
    assert moves.max() < 0.5, f"crop box jitters by {moves.max():.2f} px on a still face"
    # ...while an unsmoothed box, following the landmark noise of the noisy frames, does jitter.
    raw = face_boxes(pre.mp_landmarks, centre_sigma=0, size_sigma=0)
    assert np.abs(np.diff(raw, axis=0)).max() > 2 * moves.max()


def test_lost_frames_are_interpolated_and_flagged(clips: dict[str, Path]) -> None:
    pre = preprocess(clips["gap"], use_cache=False)
    np.testing.assert_array_equal(np.flatnonzero(~pre.face_found), [4, 5, 6])
    assert (pre.confidence[[4, 5, 6]] == 0).all() and (pre.confidence[pre.face_found] > 0).all()
    expected = pre.mp_landmarks[3] + (pre.mp_landmarks[7] - pre.mp_landmarks[3]) * 0.5
    np.testing.assert_allclose(pre.mp_landmarks[5], expected, atol=1e-3)
    assert "The face was not found in 3 of 10 frames; 3 between detections are interpolated." in pre.warnings


def test_no_face_anywhere_is_one_clip_error(clips: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ClipError, match=r"^No face was found in any frame of noface\.mp4\.$"):
        preprocess(clips["noface"], cache_dir=tmp_path)
    assert not list(tmp_path.iterdir()), "a failed run must leave no cache entry"


def test_a_face_in_fewer_than_a_tenth_of_the_frames_is_one_clip_error(tmp_path: Path,
                                                                      fake_tracker: InstallTracker) -> None:
    """One (perhaps false) detection in a faceless clip would otherwise be held over every frame: a frozen take."""
    fake_tracker(lambda t: t == 5)
    with pytest.raises(ClipError) as err:
        preprocess(write_video(tmp_path / "once.mp4", noise_frames(count=11)), use_cache=False)
    assert str(err.value) == ("The face was found in only 1 of the 11 frames of once.mp4, fewer than the 10 % needed "
                              "to follow it.")


def test_frames_before_the_first_and_after_the_last_detection_are_said_to_be_held(
        tmp_path: Path, fake_tracker: InstallTracker) -> None:
    fake_tracker(lambda t: t in (3, 6))
    pre = preprocess(write_video(tmp_path / "twice.mp4", noise_frames(count=10)), use_cache=False)
    np.testing.assert_array_equal(np.flatnonzero(pre.face_found), [3, 6])
    assert ("The face was not found in 8 of 10 frames; 2 between detections are interpolated and 6 before the "
            "first or after the last detection hold that detection's landmarks.") in pre.warnings


def test_frame_range_is_respected_and_validated(clips: dict[str, Path]) -> None:
    pre = preprocess(clips["moving"], frames=(3, 7), use_cache=False)
    np.testing.assert_array_equal(pre.frame_numbers, [3, 4, 5, 6])
    assert pre.flow.shape[0] == 3
    with pytest.raises(ClipError) as err:
        preprocess(clips["moving"], frames=(5, 11), use_cache=False)
    n = len(preprocess(clips["moving"], use_cache=False).frame_numbers)
    assert str(err.value) == f"Frames 5 to 10 were asked for, but the clip has frames 0 to {n - 1}."
    with pytest.raises(ClipError, match=r"^The frame range is empty: its last frame \(2\) comes before its first"):
        preprocess(clips["moving"], frames=(3, 3), use_cache=False)


def test_the_whole_clip_goes_past_a_header_that_undercounts(tmp_path: Path, fake_tracker: InstallTracker,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import server.video

    fake_tracker(lambda t: True)
    counted: list[int] = []
    real_count = server.video._count_frames

    def count_frames(path: Path, limit: int) -> int:
        counted.append(limit)
        return real_count(path, limit)

    monkeypatch.setattr(server.video, "_count_frames", count_frames)
    pre = preprocess(write_undercounted_avi(tmp_path / "under.avi", count=10, header_count=6), use_cache=False)
    assert counted == []  # the first pass found the real end: the crop pass does not count the frames again
    np.testing.assert_array_equal(pre.frame_numbers, np.arange(10))
    assert pre.crops.shape[0] == 10 and pre.flow.shape[0] == 9
    # The last crop is frame 9's (grey 180), not a repeat of the header's last frame.
    assert abs(int(pre.crops[9, 0, 0, 0]) - 180) <= 3


def test_progress_is_reported_per_frame_for_each_stage(clips: dict[str, Path]) -> None:
    calls: list[tuple[str, int, int]] = []
    preprocess(clips["moving"], frames=(0, 4), use_cache=False, progress=lambda s, d, t: calls.append((s, d, t)))
    assert [c for c in calls if c[0] == "landmarks"] == [("landmarks", i, 4) for i in range(1, 5)]
    assert [c for c in calls if c[0] == "crop"] == [("crop", i, 4) for i in range(1, 5)]
    assert [c for c in calls if c[0] == "flow"] == [("flow", i, 3) for i in range(1, 4)]


@pytest.mark.parametrize("stop_after", [2, 14])
def test_cancel_raises_and_leaves_no_cache(clips: dict[str, Path], tmp_path: Path, stop_after: int) -> None:
    polls = 0

    def cancel() -> bool:
        nonlocal polls
        polls += 1
        return polls > stop_after  # 2: during decoding; 14: during cropping

    with pytest.raises(Cancelled):
        preprocess(clips["moving"], cache_dir=tmp_path, cancel=cancel)
    assert not any(tmp_path.rglob("*")), "a cancelled run must leave nothing in the cache"


def test_second_run_hits_the_cache_and_other_flow_mode_misses(clips: dict[str, Path], tmp_path: Path) -> None:
    first = preprocess(clips["moving"], frames=(0, 5), cache_dir=tmp_path)
    again = preprocess(clips["moving"], frames=(0, 5), cache_dir=tmp_path)
    assert not first.cache_hit and again.cache_hit
    assert set(again.timings) == {"cache_load"}, "a cache hit must skip decoding, landmarks, crops and flow"
    for name in ("frame_numbers", "mp_landmarks", "confidence", "face_found", "lmk68", "crop_boxes", "crops", "flow"):
        np.testing.assert_array_equal(np.asarray(getattr(again, name)), getattr(first, name), err_msg=name)
    assert isinstance(again.crops, np.memmap) and isinstance(again.flow, np.memmap)
    assert (again.fps, again.image_size, again.lmk68_source) == (first.fps, first.image_size, first.lmk68_source)
    other = preprocess(clips["moving"], frames=(0, 5), cache_dir=tmp_path, flow="tvl1")
    assert not other.cache_hit and other.flow_mode == "tvl1"
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 2


def test_fan_weights_installed_after_a_clip_was_cached_are_used(tmp_path: Path, fake_tracker: InstallTracker,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tracker(lambda t: True)
    clip = write_video(tmp_path / "clip.mp4", noise_frames(count=4))
    monkeypatch.setattr("server.preprocess.select_lmk68", lambda: ("mediapipe-map", None))
    before = preprocess(clip, cache_dir=tmp_path / "cache")
    monkeypatch.setattr("server.preprocess.select_lmk68",
                        lambda: ("fan", lambda _rgb, guide: guide + np.float32(1.0)))  # the weights are now on disk
    after = preprocess(clip, cache_dir=tmp_path / "cache")
    assert not after.cache_hit and after.lmk68_source == "fan"
    np.testing.assert_allclose(after.lmk68, before.lmk68 + 1.0)
    assert preprocess(clip, cache_dir=tmp_path / "cache").cache_hit


def test_a_given_fps_overrides_the_container_s_and_is_part_of_the_cache_key(tmp_path: Path,
                                                                            fake_tracker: InstallTracker) -> None:
    fake_tracker(lambda t: True)
    clip = write_video(tmp_path / "clip.mp4", noise_frames(count=4), fps=25.0)
    given = preprocess(clip, fps=12.0, cache_dir=tmp_path / "cache")
    assert (given.fps, given.fps_estimated) == (12.0, False)
    container = preprocess(clip, cache_dir=tmp_path / "cache")
    assert not container.cache_hit and container.fps == pytest.approx(25.0)


def test_frames_without_usable_timestamps_make_the_fps_estimated(tmp_path: Path, fake_tracker: InstallTracker,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    from server import video

    real = cv2.VideoCapture

    class NoTimestamps:  # what raw streams give on some backends: every frame at 0 ms
        def __init__(self, path: str) -> None:
            self._cap = real(path)

        def get(self, prop: int) -> float:
            return 0.0 if prop == cv2.CAP_PROP_POS_MSEC else float(self._cap.get(prop))

        def __getattr__(self, name: str) -> object:
            return getattr(self._cap, name)

    fake_tracker(lambda t: True)
    monkeypatch.setattr(video.cv2, "VideoCapture", NoTimestamps)
    clip = write_video(tmp_path / "clip.mp4", noise_frames(count=4), fps=25.0)
    pre = preprocess(clip, use_cache=False)
    assert pre.fps == pytest.approx(25.0) and pre.fps_estimated
    assert "The frames carry no usable timestamps, so the clip's 25 fps is assumed, not checked." in pre.warnings
    given = preprocess(clip, use_cache=False, fps=25.0)  # a rate the user gives needs no timestamps
    assert given.fps == 25.0 and not given.fps_estimated and not given.warnings


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_failure(clips: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from server.cache import PreprocessCache

    def full_disk(self: PreprocessCache, *_args: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreprocessCache, "store", full_disk)
    pre = preprocess(clips["moving"], frames=(0, 3), cache_dir=tmp_path)
    assert len(pre.frame_numbers) == 3
    assert pre.warnings[-1] == (f"The preprocessing cache in {tmp_path} could not be written (No space left on "
                                "device), so this clip will be preprocessed again next time.")


def test_cache_location_defaults_to_the_environment(clips: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MICROEXP_CACHE", str(tmp_path / "envcache"))
    preprocess(clips["moving"], frames=(0, 2))
    assert len(list((tmp_path / "envcache").iterdir())) == 1


@pytest.mark.shared
def test_real_clip(real_clip: Path) -> None:
    pre = preprocess(real_clip, use_cache=False)
    assert len(pre.frame_numbers) == 72 and pre.image_size == (640, 360) and pre.fps == pytest.approx(30.0)
    assert pre.face_found.all() and pre.confidence.min() > 0.5
    # Crop jitter on real footage: the box moves smoothly (no frame-to-frame jump above 3 px at 640x360).
    assert np.abs(np.diff(pre.crop_boxes[:, :2], axis=0)).max() < 3.0
    # Lips move in this talking clip: the flow is not all zero, and float16 holds it.
    assert np.isfinite(pre.flow.astype(np.float32)).all() and np.abs(pre.flow).max() > 0.5
    boxes = pre.crop_boxes[:, None]  # (T, 1, 3): x0, y0, size in image pixels
    np.testing.assert_allclose(pre.lmk68_crop, (pre.lmk68[..., :2] - boxes[..., :2]) * 224.0 / boxes[..., 2:],
                               rtol=1e-5, atol=1e-3)
    assert pre.lmk68_crop.min() > 0 and pre.lmk68_crop.max() < 224  # the face stays inside its crop
