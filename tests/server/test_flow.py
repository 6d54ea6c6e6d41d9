"""Optical flow: the preprocessing modes recover a known sub-pixel shift of a real face crop, the anchored pairs' mode
reads a local bump of motion; output layout and speed report."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from server.flow import FlowEstimator, flow
from server.flow.accuracy import measure_flow_accuracy, shifted_face_pair


@pytest.mark.parametrize(("mode", "tolerance"), [("fast", 0.15), ("tvl1", 0.06)])
def test_flow_recovers_a_known_subpixel_shift(mode: str, tolerance: float) -> None:
    shift = (0.5, 0.25)
    prev, nxt = shifted_face_pair(shift)
    field = flow(prev, nxt, mode)
    assert field.shape == (224, 224, 2) and field.dtype == np.float32
    inner = field[16:-16, 16:-16]
    np.testing.assert_allclose(inner.reshape(-1, 2).mean(axis=0), shift, atol=0.05)
    assert np.median(np.linalg.norm(inner - np.array(shift), axis=-1)) < tolerance


def test_flow_direction_follows_the_content() -> None:
    prev, nxt = shifted_face_pair((-2.0, 1.0))
    inner = FlowEstimator("fast")(prev, nxt)[16:-16, 16:-16]
    np.testing.assert_allclose(inner.reshape(-1, 2).mean(axis=0), (-2.0, 1.0), atol=0.1)


def test_identical_crops_give_zero_flow_and_float16_keeps_it() -> None:
    prev, _ = shifted_face_pair()
    field = FlowEstimator("fast")(prev, prev)
    assert np.abs(field.astype(np.float16)).max() < 0.05


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown flow mode"):
        FlowEstimator("raft")


def _bump_pair(center: tuple[float, float], peak: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """The face crop and the same crop with its content pushed by a Gaussian bump (σ 15 px, `peak` px at
    `center`), both with σ 1.5 grey-level noise and blurred as the anchored pairs are -> (gray a, gray b, field)."""
    from server.raster import gray_crops

    face, _ = shifted_face_pair((0.0, 0.0))
    gy, gx = np.mgrid[0:224, 0:224].astype(np.float32)
    bump = np.exp(-0.5 * ((gx - center[0]) ** 2 + (gy - center[1]) ** 2) / 15.0**2)
    field = np.stack([peak[0] * bump, peak[1] * bump], axis=-1).astype(np.float32)
    moved = cv2.remap(face, gx - field[..., 0], gy - field[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    rng = np.random.default_rng(seed)
    noisy = [np.clip(x + rng.normal(0.0, 1.5, x.shape), 0, 255).astype(np.uint8) for x in (face, moved)]
    a, b = gray_crops(np.stack(noisy), 1.0, np.uint8)
    return a, b, field


def test_farneback_reads_a_local_skin_bump_in_full() -> None:
    """The anchored pairs' estimator: a 1 px bump of local motion is read within 15% where it is over 0.3 px,
    and on average at least as fully as DIS reads it (DIS settles short of such motion: docs/model.md)."""
    read = {"fast": [], "farneback": []}
    for k, center in enumerate([(112.0, 112.0), (80.0, 150.0), (150.0, 90.0)]):
        a, b, field = _bump_pair(center, (1.0, -0.6), seed=k)
        inside = np.linalg.norm(field, axis=-1) > 0.3
        for mode, values in read.items():
            f = FlowEstimator(mode)(a, b)
            values.append(float((f[inside] * field[inside]).sum() / (field[inside] ** 2).sum()))
    assert all(0.85 <= r <= 1.15 for r in read["farneback"]), read
    assert np.mean(read["farneback"]) >= np.mean(read["fast"]), read


def test_accuracy_report_has_speed_and_error() -> None:
    report = measure_flow_accuracy(repeats=1, modes=("fast",))
    assert set(report) == {"fast"}
    assert report["fast"]["ms_per_pair"] > 0
    assert report["fast"]["epe_mean_px"] < 0.15
