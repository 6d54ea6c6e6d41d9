"""Optical flow: both modes recover a known sub-pixel shift of a real face crop; output layout and speed report."""

from __future__ import annotations

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
        FlowEstimator("farneback")


def test_accuracy_report_has_speed_and_error() -> None:
    report = measure_flow_accuracy(repeats=1, modes=("fast",))
    assert set(report) == {"fast"}
    assert report["fast"]["ms_per_pair"] > 0
    assert report["fast"]["epe_mean_px"] < 0.15
