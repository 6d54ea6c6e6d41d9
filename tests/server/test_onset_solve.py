"""The onset-relative motion solve (server/onset_solve.py) on the toy head: it reads an expression change from the
flow, ignores the landmark fit's per-frame expression noise, and its priors behave as documented."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from server.errors import ClipError
from server.headmodel import HeadModel
from server.models.toy import make_toy_clip, toy_head_data
from server.onset_solve import millimetres_per_unit, sample_vertices, solve_onset_motion, sparse_prior
from server.refine import ClipTensors, HeadTopology, RefineConfig, deadband_from_onset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

T = 12


def test_sparse_prior_is_an_asymmetric_l1() -> None:
    change = torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.0, -0.2]])
    # mean over frames of (raising: 1 per mm, lowering: 5 per mm)
    assert float(sparse_prior(change, 5.0)) == pytest.approx(((1.0 + 5.0) + (0.5 + 1.0)) / 2)


def test_millimetres_per_unit_is_each_components_largest_vertex_motion() -> None:
    model = HeadModel(toy_head_data())
    dirs = model.data.exprdirs  # (V, 3, E) metres
    want = np.linalg.norm(dirs, axis=1).max(0) * 1000.0
    np.testing.assert_allclose(millimetres_per_unit(model).numpy(), want, rtol=1e-5)


def test_sample_vertices_thins_the_mask_evenly_and_keeps_small_ones() -> None:
    mask = torch.zeros(100, dtype=torch.bool)
    mask[10:90] = True
    thin = sample_vertices(mask, 9)
    assert int(thin.sum()) == 9 and bool((thin <= mask).all())
    assert thin[10] and thin[89]  # spans the whole range
    assert torch.equal(sample_vertices(mask, 1000), mask) and torch.equal(sample_vertices(mask, 0), mask)


def test_deadband_keeps_only_the_excess_over_the_band() -> None:
    jaw = np.array([[0.10], [0.105], [0.09], [0.13], [0.05]])
    out = deadband_from_onset(jaw, 0.01)
    np.testing.assert_allclose(out[:, 0], [0.10, 0.10, 0.10, 0.12, 0.06])


def test_solve_reads_the_expression_change_from_the_flow_not_the_landmark_noise() -> None:
    model = HeadModel(toy_head_data())
    mm = millimetres_per_unit(model).numpy()
    ramp = np.clip(np.arange(T) / (0.6 * (T - 1)), 0, 1)
    truth = np.zeros((T, model.num_expression), np.float32)
    truth[:, 1] = ramp * 2.0 / mm[1]  # component 1 rises to a 2 mm peak motion and holds
    pre, coarse = make_toy_clip(model, np.zeros((T, model.num_vertices, 3), np.float32), truth)
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, truth.shape).astype(np.float32) / mm  # ~1 mm of spurious motion per frame
    noise[0] = 0.0
    coarse.expression = truth + noise  # what a noisy landmark fit would report
    cfg = replace(RefineConfig(), solve_rigid_steps=60, solve_steps=200)
    clip = ClipTensors(pre, coarse, torch.device("cpu"), cfg)
    topo = HeadTopology(model, clip.shape, cfg.landmark_k)
    solved = solve_onset_motion(model, topo, clip, cfg)

    got_mm = (solved.expression.numpy() - truth) * mm
    coarse_mm = noise * mm
    assert np.abs(got_mm).mean() < 0.25 * np.abs(coarse_mm).mean(), (np.abs(got_mm).mean(), np.abs(coarse_mm).mean())
    peak = solved.expression.numpy()[-1, 1] * mm[1]
    assert peak == pytest.approx(2.0, abs=0.3)  # the change itself is recovered, not shrunk away
    others = np.delete(solved.expression.numpy() - solved.expression.numpy()[:1], 1, axis=1) * np.delete(mm, 1)
    assert np.abs(others).max() < 0.3  # components the flow does not ask for stay (nearly) at the onset's
    # The toy's rigid pose is exact: the rigid corrections stay small.
    assert float((solved.translation - clip.translation).abs().max()) < 5e-4
    rep = solved.report
    assert rep["steps"] == 260 and rep["pairs"] == T - 1
    assert rep["losses"]["data_final"] < rep["losses"]["data_initial"]


def test_unusable_flow_ends_in_one_sentence() -> None:
    model = HeadModel(toy_head_data())
    pre, coarse = make_toy_clip(model, np.zeros((4, model.num_vertices, 3), np.float32))
    pre.flow = np.full_like(pre.flow, np.nan)
    cfg = replace(RefineConfig(), solve_rigid_steps=2, solve_steps=2)
    clip = ClipTensors(pre, coarse, torch.device("cpu"), cfg)
    topo = HeadTopology(model, clip.shape, cfg.landmark_k)
    with pytest.raises(ClipError, match=r"^The onset solve diverged .*unusable\.$"):
        solve_onset_motion(model, topo, clip, cfg)
