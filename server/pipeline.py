"""The reconstruction pipeline: clip → preprocessing → coarse fit → refinement → take (+ preview).

Stages report through a Reporter and poll a cancel callable; nothing is written until the take is
complete, and the take itself is written atomically, so a cancelled or failed run leaves no take.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blender_microexp.core.take import FILE_MODE, TakeError, TakeWriteError

from . import __version__
from .cache import remove_stale_temporaries
from .errors import Cancelled, InternalError, OutputError
from .events import Reporter


@dataclass
class ReconstructOptions:
    """What one reconstruction does (the CLI's flags and the job file's fields)."""

    model: str = "builtin"
    """'builtin' or the user's FLAME files (a folder, or generic_model.pkl / flame2023_Open.pkl)."""
    frames: tuple[int, int] | None = None
    """Half-open source-frame range [start, stop)."""
    fps: float | None = None
    """The clip's frame rate, overriding the container's (for image folders and streams that carry none or a wrong
    one); None: the container's, checked against the frames' timestamps."""
    flow: str = "fast"
    """Optical flow: 'tvl1' (the paper's, slow) or 'fast' (DIS)."""
    stages: str = "full"
    """How far to go: 'coarse' (landmark fit), 'solve' (+ the onset-relative flow solve, no networks), 'dem'
    (+ dynamic-encoded module), 'full' (+ mesh deformation)."""
    cache_dir: str | None = None
    checkpoint: str | None = None
    """A trained checkpoint to start the refinement from (then fine-tuned on the clip)."""
    device: str = "auto"
    time_budget_s: float | None = None
    """Upper bound on the networks' per-clip optimisation loop (the onset solve's fixed steps come on top)."""
    preview: bool = True
    """Write preview.mp4: the fitted mesh drawn over the source frames."""
    max_detail: int = 16
    refine_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReconstructResult:
    take_dir: Path
    header: dict[str, Any]
    timings: dict[str, float]
    coarse_vertices: np.ndarray
    """(T, V, 3) the coarse fit's meshes, for comparing stages without a second run."""


STAGES = ("preprocess", "fit", "refine", "write")
PREVIEW_NAME = "preview.mp4"


def _check_output_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the output folder {out_dir} ({exc.strerror or exc}).") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"The output folder {out_dir} is not writable.")


def _write_preview(clip: str, out: Path, pre: Any, arrays: dict[str, np.ndarray], rep: Reporter,
                   cancel: Callable[[], bool]) -> Path | None:
    """The preview under a temporary name in `out`, or None (with a warning) when OpenCV cannot write an mp4."""
    from .preview import write_preview

    final = out / PREVIEW_NAME
    try:
        fd, name = tempfile.mkstemp(prefix=".preview-", suffix=".mp4", dir=out)
        os.close(fd)
        os.chmod(name, FILE_MODE)  # mkstemp's files are private; the preview is shared like the take
        if write_preview(clip, Path(name), pre, arrays, cancel=cancel):
            return Path(name)
    except OSError as exc:
        raise OutputError(f"Could not write {final} ({exc.strerror or exc}).") from None
    rep.warning(f"OpenCV cannot write mp4 video here, so no {PREVIEW_NAME} was written.")
    return None


def _place_preview(out: Path, preview: Path | None) -> None:
    """Once the take is written: its preview into place, or an older take's preview removed when there is none."""
    try:
        if preview is not None:
            os.replace(preview, out / PREVIEW_NAME)
        else:
            (out / PREVIEW_NAME).unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"The take was written but {out / PREVIEW_NAME} could not be ({exc.strerror or exc}).") \
            from None


def load_model(spec: str, pre: Any = None) -> Any:
    """The head model for a clip: the user's FLAME files, or the built-in head built for this subject."""
    if spec == "builtin":
        from .fit import builtin_head_for_clip

        return builtin_head_for_clip(pre)
    from .headmodel import HeadModel, load_head_model

    return HeadModel(load_head_model(spec))


def reconstruct(clip: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                options: ReconstructOptions | None = None, reporter: Reporter | None = None,
                cancel: Callable[[], bool] | None = None) -> ReconstructResult:
    """Run the whole reconstruction and write DIR/take.json, DIR/take.npz (and DIR/preview.mp4)."""
    from .fit import fit_coarse
    from .preprocess import preprocess
    from .take import build_take_arrays, head_model_header, now_iso, write_take

    opts = options or ReconstructOptions()
    rep = reporter or Reporter()
    is_cancelled = cancel or (lambda: False)

    def check() -> None:
        if is_cancelled():
            raise Cancelled("cancelled")

    out = Path(out_dir)
    _check_output_dir(out)
    for pattern in (".take-*.part", ".preview-*.mp4"):  # what a killed run left in this folder
        remove_stale_temporaries(out, pattern)
    n_stages = 3 if opts.stages == "coarse" else 4
    t_start = time.perf_counter()
    checkpoint = opts.checkpoint
    if checkpoint is not None and opts.stages in ("coarse", "solve"):  # neither runs the networks it holds
        rep.warning(f"The checkpoint {checkpoint} is not used: the '{opts.stages}' stage runs no networks.")
        checkpoint = None

    # A wrong FLAME path or checkpoint should fail before minutes of preprocessing. With FLAME files the checkpoint's
    # head-model dims are checked here too; the built-in head is made for the clip, so for it they are checked when
    # the refinement loads the checkpoint.
    flame_model = None if opts.model == "builtin" else load_model(opts.model)
    if checkpoint is not None:
        from .models.checkpoint import load_checkpoint
        from .refine import RefineConfig, check_checkpoint_fits, model_dims

        ckpt = load_checkpoint(checkpoint, None if flame_model is None else model_dims(flame_model))
        check_checkpoint_fits(ckpt, checkpoint, RefineConfig(**opts.refine_overrides))

    rep.stage("preprocess", 0, n_stages)
    pre = preprocess(str(clip), frames=opts.frames, flow=opts.flow, cache_dir=opts.cache_dir,
                     progress=rep.progress, cancel=is_cancelled, fps=opts.fps)
    for w in getattr(pre, "warnings", []):
        rep.warning(w)
    check()

    rep.stage("fit", 1, n_stages)
    model = flame_model if flame_model is not None else load_model("builtin", pre)
    coarse = fit_coarse(model, pre, progress=rep.progress, cancel=is_cancelled)
    check()

    expression, pose, translation = coarse.expression, coarse.pose, coarse.translation
    displacement = None
    refine_report: dict[str, Any] = {}
    if opts.stages != "coarse":
        from .refine import RefineConfig, refine

        rep.stage("refine", 2, n_stages)
        cfg = RefineConfig(**opts.refine_overrides)
        if opts.time_budget_s is not None:
            cfg.time_budget_s = opts.time_budget_s
        if opts.device != "auto":
            cfg.device = opts.device
        refined = refine(model, pre, coarse, stages=opts.stages, config=cfg, progress=rep.progress,
                         cancel=is_cancelled, checkpoint=checkpoint)
        expression, pose, translation = refined.expression, refined.pose, refined.translation
        displacement = refined.displacement
        refine_report = dict(refined.report)
        check()

    rep.stage("write", n_stages - 1, n_stages)
    arrays, detail_info = build_take_arrays(model, pre, coarse.shape, expression, pose, translation,
                                            coarse.camera, displacement, max_detail=opts.max_detail)
    check()
    preview = None  # a temporary name, moved into place only once the take is written
    try:
        if opts.preview:
            preview = _write_preview(str(clip), out, pre, arrays, rep, is_cancelled)
            check()
        rep.finish()
        timings = dict(getattr(pre, "timings", {}))
        timings.update({f"stage_{k}": round(v, 3) for k, v in rep.timings.items()})
        timings["total"] = round(time.perf_counter() - t_start, 3)
        header: dict[str, Any] = {
            "head_model": head_model_header(model),
            "fps": float(pre.fps),
            "fps_estimated": bool(getattr(pre, "fps_estimated", False)),
            "frame_start": int(pre.frame_numbers[0]),
            "source": {
                "path": str(Path(clip).resolve()),
                "image_size": [int(x) for x in pre.image_size],
                "downscale": float(getattr(pre, "downscale", 1.0)),
            },
            "settings": {
                "model": opts.model, "frames": list(opts.frames) if opts.frames else None, "flow": opts.flow,
                "stages": opts.stages, "checkpoint": checkpoint,
            },
            "stages": opts.stages,
            "landmark_source": getattr(pre, "lmk68_source", "mediapipe-map"),
            "timings": timings,
            "metrics": {
                "landmark_error_iod": float(coarse.landmark_error_iod),
                "frames_without_face": int((~np.asarray(pre.face_found, bool)).sum()),
                **detail_info,
                "refine": refine_report,
            },
            "server_version": __version__,
            "created": now_iso(),
        }
        try:
            write_take(out, header, arrays, where="The reconstructed take")
        except TakeWriteError as exc:  # the folder or the disk refused it
            raise OutputError(str(exc)) from None
        except TakeError as exc:  # the take itself is wrong (NaN from a diverged fit, a bad shape): nothing written
            raise InternalError(f"{str(exc).rstrip('.')}, so it was not written.") from None
        _place_preview(out, preview)
        preview = None
    finally:
        if preview is not None:
            preview.unlink(missing_ok=True)
    return ReconstructResult(take_dir=out, header=header, timings=timings, coarse_vertices=coarse.vertices)


__all__ = ["ReconstructOptions", "ReconstructResult", "reconstruct", "load_model"]
