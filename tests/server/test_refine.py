"""Per-clip refinement on a tiny synthetic head: micro-motion recovered from flow, contract, cancel, errors."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from server.errors import Cancelled, ClipError
from server.headmodel import HeadModel
from server.models.toy import ToyCoarseFit, ToyPreprocessed, bump_offsets, make_toy_clip, toy_head_data
from server.onset_solve import solve_step_count
from server.refine import RefineConfig, Refined, prepare_clip, refine, solve_progress_steps

T = 12

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy() -> tuple[HeadModel, ToyPreprocessed, ToyCoarseFit, np.ndarray]:
    model = HeadModel(toy_head_data())
    truth = bump_offsets(model, T, region=4, amplitude=0.003)  # a 3 mm lift of the mouth tile
    pre, coarse = make_toy_clip(model, truth)
    return model, pre, coarse, truth


def micro_motion_error(model: HeadModel, result: Refined | None, coarse: Any, truth: np.ndarray) -> float:
    """Mean per-vertex error of the onset-relative displacement over the face / mean true displacement."""
    n = truth.shape[0]
    zeros = torch.zeros
    with torch.no_grad():
        psi = torch.from_numpy(result.expression if result else coarse.expression)
        disp = torch.from_numpy(result.displacement) if result else None
        got = model(zeros(n, model.num_shape), psi, zeros(n, model.num_joints, 3), disp).vertices.numpy()
        want = model(zeros(n, model.num_shape), torch.from_numpy(coarse.expression), zeros(n, model.num_joints, 3),
                     torch.from_numpy(truth)).vertices.numpy()
    face = model.regions.numpy() > 0
    rel_got, rel_want = got - got[:1], want - want[:1]
    err = np.linalg.norm(rel_got - rel_want, axis=-1)[:, face].mean()
    return float(err / np.linalg.norm(rel_want, axis=-1)[:, face].mean())


FAST = RefineConfig(iterations=60, time_budget_s=120.0, patience=1000, full_batch_frames=T, seed=0)


def test_full_refinement_recovers_flow_driven_micro_motion(toy: Any) -> None:
    model, pre, coarse, truth = toy
    calls: list[tuple[str, int, int]] = []
    result = refine(model, pre, coarse, "full", FAST, progress=lambda s, d, t: calls.append((s, d, t)))
    assert result.displacement.shape == (T, model.num_vertices, 3)
    assert result.expression.shape == coarse.expression.shape
    np.testing.assert_array_equal(result.pose[:, 1:], coarse.pose[:, 1:])  # only the rigid part is corrected
    # The toy's coarse rigid pose is exact: the flow-driven corrections stay tiny.
    assert np.abs(result.pose[:, 0] - coarse.pose[:, 0]).max() < 5e-3
    assert np.abs(result.translation - coarse.translation).max() < 1e-3
    baseline = micro_motion_error(model, None, coarse, truth)
    assert baseline == pytest.approx(1.0)  # the coarse fit misses the bump entirely
    refined = micro_motion_error(model, result, coarse, truth)
    assert refined < 0.7 * baseline, refined
    # Little at the onset (attention ~0.5 there); the anchored flow constrains only motion relative to it, so a
    # common offset of all frames is left to the priors: 0.32 mm measured against the 3 mm bump.
    assert np.abs(result.displacement[0]).max() < 5e-4
    rep = result.report
    assert rep["loss_final"]["flow"] < 0.5 * rep["loss_initial"]["flow"]
    solve = solve_progress_steps(FAST)  # the onset solve's steps (all passes) come first in the same stage
    assert rep["iterations"] == 60 and calls[-1] == ("refine", solve + 60, solve + 60)
    assert ("refine", solve, solve + 60) in calls and calls.index(("refine", solve, solve + 60)) < len(calls) - 60
    # The toy's crops are blank (its flow is given): nothing to warp, so the solve has one pass, and its
    # progress jumps over the second one.
    assert len(rep["onset_solve"]["passes"]) == 1 and rep["onset_solve"]["steps"] == solve_step_count(FAST)
    assert set(rep["timings"]) >= {"setup_s", "optimise_s", "inference_s", "total_s", "seconds_per_iteration"}


def test_anchored_flow_term_recovers_micro_motion(toy: Any) -> None:
    """The onset-anchored term alone (adjacent term off) drives the recovery; the toy's crops are blank, so its
    anchored flow falls back to the accumulated adjacent flow."""
    model, pre, coarse, truth = toy
    cfg = replace(FAST, w_anchor_flow=1.0, w_flow=0.0)
    result = refine(model, pre, coarse, "full", cfg)
    rep = result.report
    assert rep["loss_final"]["anchor_flow"] < 0.5 * rep["loss_initial"]["anchor_flow"]
    assert micro_motion_error(model, result, coarse, truth) < 0.7


def test_dem_stage_refines_expression_only(toy: Any) -> None:
    model, pre, coarse, _ = toy
    result = refine(model, pre, coarse, "dem", replace(FAST, iterations=5))
    start = refine(model, pre, coarse, "solve", FAST)  # the DEM's starting point: the onset solve's estimate
    moved = np.abs(result.expression - start.expression).max()
    assert moved > 1e-3, moved  # five DEM steps move it (0.036 measured on the toy)
    assert (result.displacement == 0).all()
    assert result.expression.dtype == np.float32 and result.expression.shape == (T, model.num_expression)
    assert np.isfinite(result.expression).all()
    assert result.report["stages"] == "dem" and result.report["max_displacement_mm"] == 0.0


def test_the_expression_prior_smooths_the_solved_estimate(toy: Any) -> None:
    """`expr_prior_smooth_frames` smooths whatever per-frame estimate the networks start from: the solve's."""
    from scipy.ndimage import gaussian_filter1d

    model, pre, coarse, _ = toy
    clip, _, report = prepare_clip(model, pre, coarse, replace(FAST, expr_prior_smooth_frames=2.0),
                                   torch.device("cpu"))
    assert report is not None  # the onset solve ran and replaced the coarse estimate
    solved = clip.expression.numpy()
    expected = gaussian_filter1d(solved, 2.0, axis=0, mode="nearest")
    assert np.abs(expected - solved).max() > 1e-4  # the solved estimate moves, so smoothing changes it
    np.testing.assert_allclose(clip.expression_prior.numpy(), expected, atol=1e-6)


def test_zero_iterations_returns_the_networks_starting_point(toy: Any) -> None:
    """Zero-initialised networks output their base: the coarse fit without the onset solve, the solve's estimate
    with it (the toy's bump is not in its expression basis, so the solve may move ψ only a little)."""
    model, pre, coarse, _ = toy
    plain = refine(model, pre, coarse, "full", replace(FAST, iterations=0, onset_solve=False))
    np.testing.assert_allclose(plain.expression, coarse.expression, atol=1e-6)
    assert np.abs(plain.displacement).max() == 0 and plain.report["onset_solve"] is None
    solved = refine(model, pre, coarse, "full", replace(FAST, iterations=0))
    assert np.abs(solved.displacement).max() == 0
    np.testing.assert_allclose(solved.expression[0], coarse.expression[0], atol=1e-6)  # frame 0: the reference
    assert solved.report["onset_solve"]["steps"] == solve_step_count(FAST)
    # Stage 'solve' is exactly that starting point, whatever the iteration budget, and says so in its report.
    only = refine(model, pre, coarse, "solve", replace(FAST, iterations=50))
    np.testing.assert_array_equal(only.expression, solved.expression)
    np.testing.assert_array_equal(only.pose, solved.pose)
    np.testing.assert_array_equal(only.translation, solved.translation)
    assert np.abs(only.displacement).max() == 0
    assert only.report["stages"] == "solve" and only.report["iterations"] == 0


def test_the_solve_stage_ignores_a_checkpoint(toy: Any, tmp_path: Path) -> None:
    """'solve' runs no networks: a trained checkpoint's would move its result, so it is not loaded."""
    from server.models.checkpoint import save_checkpoint
    from server.refine import MicroExpNets, model_dims

    model, pre, coarse, _ = toy
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        nets = MicroExpNets(model.num_expression, FAST)
        with torch.no_grad():
            for param in nets.parameters():
                param.add_(0.05 * torch.randn_like(param))  # trained: no longer the identity
    path = tmp_path / "trained.pt"
    save_checkpoint(path, {"nets": nets.state_dict(), "step": 7, "config": asdict(FAST), "dims": model_dims(model)})
    plain = refine(model, pre, coarse, "solve", FAST)
    given = refine(model, pre, coarse, "solve", FAST, checkpoint=path)
    np.testing.assert_array_equal(given.expression, plain.expression)
    assert given.report["checkpoint"] is None and given.report["checkpoint_step"] is None


def test_rigid_jitter_is_removed_by_the_flow(toy: Any) -> None:
    model, pre, coarse, _ = toy
    rng = np.random.default_rng(0)
    jitter = np.zeros_like(coarse.translation)
    jitter[1:] = rng.normal(0, 0.0015, (T - 1, 3))  # 1.5 mm per frame, like a landmark fit's noise
    noisy = replace(coarse, translation=coarse.translation + jitter.astype(np.float32))
    result = refine(model, pre, noisy, "dem", replace(FAST, iterations=150, w_landmark=0.0))
    before = np.abs(jitter - jitter.mean(0))[:, :2].mean()
    err = result.translation - coarse.translation
    after = np.abs(err - err.mean(0))[:, :2].mean()  # x/y: what the image shows best
    assert after < 0.5 * before, (after, before)


def test_cancel_and_time_budget(toy: Any) -> None:
    model, pre, coarse, _ = toy
    with pytest.raises(Cancelled):
        refine(model, pre, coarse, "dem", FAST, cancel=lambda: True)
    quick = refine(model, pre, coarse, "dem", replace(FAST, iterations=10_000, time_budget_s=0.5))
    assert quick.report["stopped_by"] == "time" and quick.report["iterations"] < 10_000


def test_a_rerun_gives_the_same_result_where_the_time_cap_does_not_bind(toy: Any) -> None:
    """The step-size schedule depends on the step count alone unless the first steps' pace says the cap would bind,
    so the same clip and settings give the same take however busy the machine is."""
    model, pre, coarse, _ = toy
    cfg = replace(FAST, iterations=12, onset_solve=False)
    first, second = refine(model, pre, coarse, "full", cfg), refine(model, pre, coarse, "full", cfg)
    assert first.report["iterations"] == 12 and first.report["stopped_by"] == "iterations"
    np.testing.assert_array_equal(first.expression, second.expression)
    np.testing.assert_array_equal(first.displacement, second.displacement)


def test_plateau_stops_early(toy: Any) -> None:
    model, pre, coarse, _ = toy
    result = refine(model, pre, coarse, "dem", replace(FAST, iterations=500, patience=3, lr=1e-9))
    assert result.report["stopped_by"] == "plateau" and result.report["iterations"] < 50


def test_bad_inputs_fail_with_one_sentence(toy: Any) -> None:
    model, pre, coarse, _ = toy
    with pytest.raises(ValueError, match="Unknown refinement stages"):
        refine(model, pre, coarse, "everything")
    short = replace(pre, flow=pre.flow[:-2])
    with pytest.raises(ClipError, match="does not fit"):
        refine(model, short, coarse, "dem", FAST)
    wrong = replace(coarse, expression=np.zeros((T, 2), np.float32))
    with pytest.raises(ClipError, match="expression components"):
        refine(model, pre, wrong, "dem", FAST)


def test_anchored_pairs_follow_the_dem_windows_and_cross_fade() -> None:
    from server.refine import ClipTensors

    model = HeadModel(toy_head_data())
    pre, coarse = make_toy_clip(model, bump_offsets(model, 30, region=4, amplitude=0.003))
    cfg = RefineConfig(w_anchor_flow=1.0, window=16, overlap=4)
    clip = ClipTensors(pre, coarse, torch.device("cpu"), cfg)
    anchors = sorted(set(clip.pair_anchor.tolist()))
    assert anchors == [0, 12, 14]  # window_starts(30, 16, 4): the last window ends at the last frame
    per_frame = torch.zeros(30).index_add(0, clip.pair_frame, clip.pair_weight)
    torch.testing.assert_close(per_frame[1:], torch.ones(29))  # blended weights sum to one, as the DEM's
    assert clip.anchored.dtype == torch.float16 and clip.anchored.shape[1:] == (2, 112, 112)
    # Accumulated fallback (blank crops): the anchored map a -> t is the sum of the adjacent flows.
    k = int(((clip.pair_anchor == 12) & (clip.pair_frame == 20)).nonzero()[0, 0])
    want = torch.nn.functional.adaptive_avg_pool2d(clip.flow[12:20].sum(0, keepdim=True), 112)[0]
    torch.testing.assert_close(clip.anchored[k].float(), want, atol=2e-3, rtol=1e-2)


def test_expression_priors_reach_every_frame_of_the_clip(toy: Any) -> None:
    """With `expression_priors_on='clip'` a step's expression prior covers the frames outside its run too: the DEM's
    weights are shared, so a step also moves those frames, and this is what pulls them back (docs/model.md)."""
    from server.refine import ClipObjective, build_nets, prepare_clip

    model, pre, coarse, _ = toy
    cfg = replace(FAST, onset_solve=False, w_expr=0.0, w_sparse=0.0, w_temporal_expr=0.0)
    device = torch.device("cpu")
    nets, cfg, _ = build_nets(model, cfg, None, device)
    clip, topo, _ = prepare_clip(model, pre, coarse, cfg, device)
    with torch.no_grad():  # move the DEM off its base: ψ now differs from the prior on every frame
        for p in nets.dem.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        psi = nets.dem(clip.flow_small, clip.expression)
    gap = (psi - clip.expression_prior).pow(2).sum(-1)  # (T,)
    assert float(gap[4:].min()) > 0
    for where, want in (("clip", gap.mean()), ("batch", gap[:4].mean())):
        objective = ClipObjective(model, topo, clip, nets, replace(cfg, expression_priors_on=where))
        terms = objective.losses(0, 4, "dem")
        torch.testing.assert_close(terms["expr_coarse"].detach(), cfg.w_expr_coarse * want)
