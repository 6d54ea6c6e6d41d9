"""Self-supervised training of the refinement networks over a folder of clips -> a checkpoint `refine` can load."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from server.arguments import whole_number
from server.errors import Cancelled, ClipError, MicroexpError, OutputError
from server.events import CancelFlag
from server.models.checkpoint import load_checkpoint, load_weights, save_checkpoint
from server.refine import (
    ARCH_FIELDS,
    ClipObjective,
    CoarseFitLike,
    MicroExpNets,
    PreprocessedLike,
    RefineConfig,
    config_from_dict,
    model_dims,
    prepare_clip,
    resolve_device,
)

if TYPE_CHECKING:
    from server.headmodel import HeadModel

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
Prepare = Callable[[Path], tuple[PreprocessedLike, CoarseFitLike]]


@dataclass
class TrainConfig:
    """Settings of `train` (the paper's recipe, §V-B, where it applies)."""

    steps: int = 1000
    """Optimisation steps (each a batch of clips)."""
    lr: float = 1e-4
    """Adam learning rate (paper: 1e-4)."""
    batch_clips: int = 4
    """Clips per step (paper: batch size 4)."""
    frames: int = 8
    """Frames per clip sample (paper: 8 frames from onset to offset; without labelled onsets an 8-frame window
    is drawn uniformly within the clip, its first frame the onset)."""
    stages: str | None = None
    """'dem' trains the dynamic-encoded module only; 'full' both networks; None: a resumed checkpoint's stages,
    else 'full'."""
    device: str = "auto"
    """'auto' (CUDA when present), 'cpu' or 'cuda'."""
    save_every: int = 100
    """Write the checkpoint every this many steps (and at the end)."""
    seed: int = 0
    """Seed of the initialisation and the sampling."""
    model: RefineConfig = field(default_factory=lambda: RefineConfig(dem_scope="window"))
    """Architecture and loss weights, shared with `refine` (stored in the checkpoint). Training always runs the DEM
    in window scope (`dem_scope="window"`, whatever this says): each step sees an 8-frame window, not a clip."""


def list_clips(clips_dir: str | Path) -> list[Path]:
    """Video files directly inside `clips_dir`, sorted; ClipError if there are none."""
    folder = Path(clips_dir)
    if not folder.is_dir():
        raise ClipError(f"The clips folder '{folder}' does not exist.")
    clips = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not clips:
        raise ClipError(f"The clips folder '{folder}' contains no video files ({', '.join(VIDEO_SUFFIXES)}).")
    return clips


def check_checkpoint_path(path: str | Path) -> None:
    """Refuse a checkpoint path that cannot be written (OutputError, one sentence) before any clip is prepared."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"The checkpoint path {target} is a folder; name a file, e.g. {target / 'refine.pt'}.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the folder {target.parent} ({exc.strerror or exc}).") from None
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise OutputError(f"The folder {target.parent} is not writable, so the checkpoint cannot be written there.")


def default_model(spec: str = "builtin") -> HeadModel:
    """The head model named by `spec` ('builtin' or a FLAME path)."""
    from server.headmodel import HeadModel, load_head_model

    return HeadModel(load_head_model(spec))


def default_prepare(model: HeadModel, cancel: Callable[[], bool] | None = None) -> Prepare:
    """Preprocessing and coarse fit of one clip with the project's own stages (imported lazily); both poll
    `cancel`."""

    def prepare(clip: Path) -> tuple[PreprocessedLike, CoarseFitLike]:
        from server.fit import fit_coarse
        from server.preprocess import preprocess

        pre = preprocess(str(clip), cancel=cancel)
        return pre, fit_coarse(model, pre, None, cancel=cancel)

    return prepare


def train(
    clips_dir: str | Path, out_checkpoint: str | Path, config: TrainConfig | None = None, *,
    resume: str | Path | None = None, model: HeadModel | None = None, prepare: Prepare | None = None,
    progress: Callable[[str, int, int], None] | None = None, cancel: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the refinement networks on every clip of `clips_dir` and write `out_checkpoint`.

    Each clip is preprocessed and coarse-fitted once (`prepare`, default: the project's stages) and kept in
    memory; each step draws `batch_clips` clips, an `frames`-frame window of each, and minimises the same
    self-supervised losses as per-clip refinement. `resume` continues from a checkpoint (its architecture, weights,
    optimizer state and step). Returns a report dict (steps, losses, timings, skipped clips).
    When `cancel()` turns true, the steps taken since the last save are saved (atomically) and Cancelled is raised
    with one sentence saying what the checkpoint holds.
    """
    cfg = config or TrainConfig()
    if cfg.stages not in (None, "dem", "full"):
        raise ValueError(f"Unknown training stages '{cfg.stages}': use 'dem' or 'full'.")
    t0 = time.perf_counter()
    say = log or (lambda msg: None)
    device = resolve_device(cfg.device)
    clips = list_clips(clips_dir)
    check_checkpoint_path(out_checkpoint)
    head = model if model is not None else default_model()
    head = head.to(device)
    dims = model_dims(head)
    model_cfg = config_from_dict({"dem_scope": "window"}, cfg.model)
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume, dims)
        saved = ckpt.get("config", {})
        model_cfg = config_from_dict({k: saved[k] for k in ARCH_FIELDS if k in saved}, model_cfg)
    stages = cfg.stages
    if stages is None:  # go on with what the resumed checkpoint trained
        resumed = None if ckpt is None else ckpt.get("stages")
        stages = resumed if resumed in ("dem", "full") else "full"
        cfg = replace(cfg, stages=stages)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        nets = MicroExpNets(int(head.num_expression), model_cfg).to(device)
    params = [p for group in nets.parameter_groups(stages).values() for p in group]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    step = 0
    if ckpt is not None:
        load_weights(nets, ckpt, str(resume))
        kept = ckpt.get("stages") == stages and "optimizer" in ckpt
        if kept:
            optimizer.load_state_dict(ckpt["optimizer"])
        step = int(ckpt.get("step", 0))
        if ckpt.get("stages") != stages:
            say(f"The checkpoint was trained with stages '{ckpt.get('stages')}'; training goes on with "
                f"'{stages}', so its optimizer state is not kept.")
        say(f"resuming {resume} at step {step} with stages '{stages}', up to step {step + cfg.steps}; optimizer "
            f"state {'kept' if kept else 'not kept'}")

    run = prepare or default_prepare(head, cancel)
    objectives: list[ClipObjective] = []
    skipped: list[str] = []
    not_started = "Training was cancelled while the clips were prepared; nothing was written."
    for i, clip in enumerate(clips):
        if cancel is not None and cancel():
            raise Cancelled(not_started)
        t_clip = time.perf_counter()
        try:
            pre, coarse = run(clip)
            tensors, topo, _ = prepare_clip(head, pre, coarse, model_cfg, device, cancel=cancel)
        except Cancelled:
            raise Cancelled(not_started) from None
        except MicroexpError as exc:  # one bad clip must not end a long run
            skipped.append(f"{clip.name}: {exc}")
            say(f"skipping {clip.name}: {exc}")
            continue
        objectives.append(ClipObjective(head, topo, tensors, nets, model_cfg))
        say(f"prepared {clip.name} ({i + 1}/{len(clips)}): {tensors.n_frames} frames in "
            f"{time.perf_counter() - t_clip:.1f} s")
        if progress is not None:
            progress("prepare", i + 1, len(clips))
    if not objectives:
        raise ClipError(f"None of the {len(clips)} clips in '{clips_dir}' could be prepared for training.")
    t_prep = time.perf_counter()

    gen = np.random.default_rng(cfg.seed + step)
    history: list[float] = []
    target = step + cfg.steps
    first, saved = step, step
    nets.train()
    while step < target:
        if cancel is not None and cancel():
            if step == first:
                raise Cancelled("Training was cancelled before its first step; nothing was written.")
            if saved != step:
                _save(out_checkpoint, nets, optimizer, step, cfg, model_cfg, dims)
            raise Cancelled(f"Training was cancelled after step {step}, which {out_checkpoint} holds.")
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.batch_clips):
            obj = objectives[int(gen.integers(len(objectives)))]
            n = min(max(cfg.frames, 2), obj.clip.n_frames)
            start = int(gen.integers(0, obj.clip.n_frames - n + 1))
            loss = obj.losses(start, start + n, stages)["total"] / cfg.batch_clips
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        step += 1
        history.append(total)
        if progress is not None:
            progress("train", step, target)
        if step % cfg.save_every == 0 or step == target:
            _save(out_checkpoint, nets, optimizer, step, cfg, model_cfg, dims)
            saved = step
            say(f"step {step}: loss {np.mean(history[-cfg.save_every:]):.5f}")
    t_end = time.perf_counter()
    return {
        "steps": step,
        "clips": len(objectives),
        "skipped": skipped,
        "loss_first": history[0] if history else None,
        "loss_last": history[-1] if history else None,
        "checkpoint": str(out_checkpoint),
        "timings": {"prepare_s": t_prep - t0, "train_s": t_end - t_prep,
                    "seconds_per_step": (t_end - t_prep) / max(len(history), 1)},
    }


def _save(path: str | Path, nets: MicroExpNets, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig,
          model_cfg: RefineConfig, dims: dict[str, Any]) -> None:
    train_cfg = asdict(cfg)
    train_cfg.pop("model")
    save_checkpoint(path, {
        "nets": nets.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "stages": cfg.stages,
        "config": asdict(model_cfg),
        "train_config": train_cfg,
        "dims": dims,
    })


def main_train(argv: Sequence[str] | None = None) -> int:
    """CLI: `train --clips DIR [--out ckpt.pt] [--resume ckpt.pt] [--steps N] [--device cpu|cuda] [--head-model
    SPEC] [--stages dem|full]`. Returns the exit status; a user error prints one sentence on stderr."""
    parser = argparse.ArgumentParser(prog="microexp train", description=__doc__)
    parser.add_argument("--clips", required=True, help="folder of video clips")
    parser.add_argument("--out", default=None, help="checkpoint to write (default: CLIPS/microexp-refine.pt)")
    parser.add_argument("--resume", default=None, help="checkpoint to continue from")
    parser.add_argument("--steps", type=whole_number(1), default=TrainConfig.steps,
                        help=f"optimisation steps (default {TrainConfig.steps}); with --resume they are added to the "
                             "checkpoint's")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--head-model", default="builtin", help="'builtin' or a FLAME folder/file")
    parser.add_argument("--stages", default=None, choices=["dem", "full"],
                        help="networks to train (default: the --resume checkpoint's stages, else full)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    out = Path(args.out) if args.out else Path(args.clips) / "microexp-refine.pt"
    cfg = TrainConfig(steps=args.steps, device=args.device, stages=args.stages)
    cancel = CancelFlag()  # Ctrl-C (SIGINT) or SIGTERM: the loop saves its last steps and stops
    cancel.install_signal_handlers()
    try:
        list_clips(args.clips)  # fail on a wrong folder or output before building the head model
        check_checkpoint_path(out)
        report = train(args.clips, out, cfg, resume=args.resume, model=default_model(args.head_model),
                       cancel=cancel, log=lambda msg: print(msg, file=sys.stderr))
    except MicroexpError as exc:
        print(str(exc), file=sys.stderr)
        return 1  # as `reconstruct` and `make-clip` (2 is argparse's, for a wrong command line)
    except Cancelled as exc:
        print(str(exc), file=sys.stderr)
        return 130  # as `reconstruct`
    loss = "" if report["loss_last"] is None else f", loss {report['loss_last']:.5f} at the last step"
    print(f"wrote {report['checkpoint']} after {report['steps']} steps on {report['clips']} clips{loss}",
          file=sys.stderr)
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} of {report['clips'] + len(report['skipped'])} clips:",
              file=sys.stderr)
        for entry in report["skipped"]:
            print(f"  {entry}", file=sys.stderr)
    return 0
