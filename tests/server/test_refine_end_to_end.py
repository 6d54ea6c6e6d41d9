"""End to end on a made clip with ground truth (server/synth.py): the refinement against the coarse fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from server.pipeline import ReconstructOptions, reconstruct
    from server.synth import make_clip

    folder = tmp_path_factory.mktemp("e2e")
    truth_path = make_clip(folder / "clip.mp4", frames=40, width=320, height=240, seed=1)
    cache = folder / "cache"
    coarse_run = reconstruct(folder / "clip.mp4", folder / "coarse",
                             ReconstructOptions(stages="coarse", preview=False, cache_dir=str(cache)))
    # A fixed number of steps and no wall-clock or plateau stop: the result must not depend on the machine's load
    # (a time budget cut the optimisation short in a busy full-suite run and made this flaky).
    fixed = {"iterations": 60, "patience": 10_000}
    result = reconstruct(folder / "clip.mp4", folder / "take",
                         ReconstructOptions(stages="full", preview=False, time_budget_s=1e9, cache_dir=str(cache),
                                            refine_overrides=fixed))
    take = np.load(Path(result.take_dir) / "take.npz")
    coarse_take = np.load(Path(coarse_run.take_dir) / "take.npz")
    truth = np.load(truth_path)
    return {"take": {k: take[k] for k in take.files}, "truth": {k: truth[k] for k in truth.files},
            "coarse_vertices": result.coarse_vertices, "coarse_translation": coarse_take["translation"],
            "refine_report": result.header["metrics"]["refine"]}


def micro_errors(made: dict[str, Any]) -> tuple[float, float]:
    from server.metrics import face_mask_for, micro_motion_error

    truth = made["truth"]
    onset, mask = int(truth["onset_frame"]), face_mask_for(truth)
    refined = micro_motion_error(made["take"]["vertices"], truth["vertices"], onset, mask)
    coarse = micro_motion_error(made["coarse_vertices"], truth["vertices"], onset, mask)
    return refined, coarse


def test_refinement_does_not_add_micro_motion_error(made: dict[str, Any]) -> None:
    refined, coarse = micro_errors(made)
    assert refined <= 1.1 * coarse, (refined, coarse)


def test_refinement_lowers_micro_motion_error_below_the_coarse_fit(made: dict[str, Any]) -> None:
    """Measured 0.953 vs 6.640 (−86 %) with the fixed 60 steps: mostly the onset-relative flow solve, which removes
    the landmark fit's spurious motion (docs/model.md). The margin asserted is the issue's −25 % and then some."""
    refined, coarse = micro_errors(made)
    assert refined <= 0.5 * coarse, (refined, coarse)


def test_refinement_removes_rigid_jitter(made: dict[str, Any]) -> None:
    """The take's frame-to-frame translation in the image plane (x, y: what the flow sees best) is closer to the
    truth's than the coarse fit's."""
    truth_steps = np.diff(made["truth"]["translation"], axis=0)[:, :2]

    def step_error(translation: np.ndarray) -> float:
        return float(np.abs(np.diff(translation, axis=0)[:, :2] - truth_steps).mean())

    refined, coarse = step_error(made["take"]["translation"]), step_error(made["coarse_translation"])
    assert refined < 0.8 * coarse, (refined, coarse)


def test_the_solve_reads_the_flow_again_after_its_first_pass(made: dict[str, Any]) -> None:
    """A textured clip gets the solve's second pass: the anchored flow re-estimated on crops warped by the first
    pass's mesh (`ClipTensors.warp_anchored`), which the second pass then fits at least as well."""
    solve = made["refine_report"]["onset_solve"]
    first, second = solve["passes"]
    assert second["reflow_seconds"] > 0
    assert second["steps"] < first["steps"]  # the rigid-only stage runs in the first pass only
    assert second["losses"]["data_final"] <= first["losses"]["data_final"] * 1.05, (first["losses"], second["losses"])
    assert 0 < second["refit_support"] < 1
