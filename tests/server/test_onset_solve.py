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
    assert rep["steps"] == 60 + 200 + cfg.solve_refit_steps and rep["pairs"] == T - 1
    assert rep["losses"]["data_final"] < rep["losses"]["data_initial"]


def test_refit_undoes_the_sparse_priors_shrinkage() -> None:
    """A strong L1 prior shrinks the change it keeps; the refit frees exactly the changes it kept (over
    `solve_refit_min_mm`) and fits them to the flow alone, so the peak comes back to the true 2 mm while the
    components it zeroed stay where the sparse stage left them."""
    model = HeadModel(toy_head_data())
    mm = millimetres_per_unit(model).numpy()
    truth = np.zeros((T, model.num_expression), np.float32)
    truth[:, 1] = np.clip(np.arange(T) / (0.6 * (T - 1)), 0, 1) * 2.0 / mm[1]
    pre, coarse = make_toy_clip(model, np.zeros((T, model.num_vertices, 3), np.float32), truth)
    coarse.expression = np.zeros_like(truth)
    results = {}
    for refit in (0, 150):
        cfg = replace(RefineConfig(), solve_rigid_steps=60, solve_steps=200, w_sparse=0.15, solve_refit_steps=refit)
        clip = ClipTensors(pre, coarse, torch.device("cpu"), cfg)
        topo = HeadTopology(model, clip.shape, cfg.landmark_k)
        results[refit] = solve_onset_motion(model, topo, clip, cfg)
    change = {k: (r.expression.numpy() - r.expression.numpy()[:1]) * mm for k, r in results.items()}
    shrunk, refitted = change[0][-1, 1], change[150][-1, 1]
    assert shrunk < 1.8, shrunk  # the prior's price: the kept change falls short of the truth
    assert refitted == pytest.approx(2.0, abs=0.15), refitted
    held = np.abs(change[0]) <= 0.3  # the refit's threshold (`solve_refit_min_mm`)
    assert held[1, 1]  # frame 1's small start of the rise (0.06 mm) is among them
    np.testing.assert_array_equal(change[150][held], change[0][held])
    rep = results[150].report
    assert rep["steps"] == 60 + 200 + 150 and 0 < rep["refit_support"] < 1
    assert rep["losses"]["data_final"] < rep["losses"]["data_before_refit"]


def test_warped_flow_reads_the_motion_a_smoothing_estimator_falls_short_of() -> None:
    """A 1.7 px bump of motion on a textured image: Farnebäck's flow reads ~80 % of it; warped by a guess of 80 %
    of it first, the flow reads it within a few percent, and a zero guess changes nothing."""
    import cv2

    from server.flow import FlowEstimator
    from server.refine import warped_flow

    rng = np.random.default_rng(0)
    size = 96
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 2.0)
    tex = cv2.normalize(tex, None, 20, 235, cv2.NORM_MINMAX)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    bump = np.exp(-((xs - 48) ** 2 + (ys - 48) ** 2) / (2 * 6.0**2))
    motion = np.stack([1.5 * bump, 0.8 * bump], -1).astype(np.float32)  # prev(p) is at p + motion(p) in next
    nxt = cv2.remap(tex, xs - motion[..., 0], ys - motion[..., 1], cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    prev, nxt = tex.astype(np.uint8), np.clip(nxt, 0, 255).astype(np.uint8)
    near = bump > 0.5
    estimator = FlowEstimator("farneback")

    def share(flow: np.ndarray) -> float:
        return float((flow[near] * motion[near]).sum() / (motion[near] ** 2).sum())

    plain = estimator(prev, nxt)
    assert share(plain) < 0.85
    assert share(warped_flow(estimator, prev, nxt, 0.8 * motion)) == pytest.approx(1.0, abs=0.06)
    np.testing.assert_array_equal(warped_flow(estimator, prev, nxt, np.zeros_like(motion)), plain)


def test_a_thinned_solve_evaluates_only_the_vertices_it_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `solve_max_vertices` below the face's vertex count (FLAME), the solve evaluates the head at the used
    vertices only (`HeadModel.subset`); the result is the one the whole mesh gives."""
    model = HeadModel(toy_head_data())
    truth = np.zeros((T, model.num_expression), np.float32)
    truth[:, 1] = np.clip(np.arange(T) / (0.6 * (T - 1)), 0, 1) * 2.0 / millimetres_per_unit(model).numpy()[1]
    pre, coarse = make_toy_clip(model, np.zeros((T, model.num_vertices, 3), np.float32), truth)
    cfg = replace(RefineConfig(), solve_rigid_steps=20, solve_steps=40, solve_refit_steps=20, solve_max_vertices=120)
    clip = ClipTensors(pre, coarse, torch.device("cpu"), cfg)
    topo = HeadTopology(model, clip.shape, cfg.landmark_k)
    subsets: list[int] = []
    real_subset = HeadModel.subset

    def counting(self: HeadModel, ids: torch.Tensor):  # type: ignore[no-untyped-def]
        subsets.append(int(ids.numel()))
        return real_subset(self, ids)

    monkeypatch.setattr(HeadModel, "subset", counting)
    thinned = solve_onset_motion(model, topo, clip, cfg)
    assert subsets == [120]
    monkeypatch.setattr(HeadModel, "subset", lambda self, ids: lambda s, e, p: self(s, e, p).vertices[:, ids])
    whole = solve_onset_motion(model, topo, clip, cfg)
    torch.testing.assert_close(thinned.expression, whole.expression, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(thinned.translation, whole.translation, atol=1e-7, rtol=1e-4)


def test_the_pairs_flows_stop_when_cancelled() -> None:
    """The warped re-read of the anchored flow (`parallel_map`, a few seconds per clip) polls cancel before each
    pair: a cancel mid-way raises Cancelled with one sentence and leaves the remaining pairs undone."""
    from server.errors import Cancelled
    from server.refine import parallel_map

    done: list[int] = []

    def work(i: int) -> np.ndarray:
        done.append(i)
        return np.zeros(1)

    assert len(parallel_map(work, list(range(8)))) == 8
    done.clear()
    with pytest.raises(Cancelled, match=r"^The refinement was cancelled\.$"):
        parallel_map(work, list(range(200)), cancel=lambda: len(done) >= 3)
    assert len(done) < 200


def test_the_first_anchored_flow_stops_when_cancelled() -> None:
    """The anchored flow read from textured crops when the clip's tensors are built polls cancel per pair too."""
    from server.errors import Cancelled

    model = HeadModel(toy_head_data())
    pre, coarse = make_toy_clip(model, np.zeros((T, model.num_vertices, 3), np.float32))
    pre.crops = np.random.default_rng(0).integers(0, 256, (T, 224, 224, 3), dtype=np.uint8)
    cfg = RefineConfig()
    assert ClipTensors(pre, coarse, torch.device("cpu"), cfg).anchor_estimator is not None  # the crops' flow is read
    calls: list[int] = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled, match=r"^The refinement was cancelled\.$"):
        ClipTensors(pre, coarse, torch.device("cpu"), cfg, cancel=cancel)


def test_unusable_flow_ends_in_one_sentence() -> None:
    model = HeadModel(toy_head_data())
    pre, coarse = make_toy_clip(model, np.zeros((4, model.num_vertices, 3), np.float32))
    pre.flow = np.full_like(pre.flow, np.nan)
    cfg = replace(RefineConfig(), solve_rigid_steps=2, solve_steps=2)
    clip = ClipTensors(pre, coarse, torch.device("cpu"), cfg)
    topo = HeadTopology(model, clip.shape, cfg.landmark_k)
    with pytest.raises(ClipError, match=r"^The onset solve diverged .*unusable\.$"):
        solve_onset_motion(model, topo, clip, cfg)
