"""`./microexp bench`: stage timings, peak memory and accuracy, printed as tables for the README.

Parts (``--part``):
  server  ms/frame per stage on a 100-frame 640×360 made clip, peak memory, the coarse fit's errors
          against ground truth on made clips, and the landmark error on real footage (../shared).
  model   the micro-motion error on made clips for coarse / + DEM / full and the ablations, with the
          per-clip refinement time per 100 frames.
Medians are over the clips of one run; the machine is shared, so compare rows of one run only.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from server.arguments import whole_number

ROOT = Path(__file__).resolve().parents[1]
REAL_CLIP = ROOT.parent / "shared" / "clips" / "single_face.mp4"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_line() -> str:
    device = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads, torch {torch.__version__}, {device}")


def table(title: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def bench_server(work: Path, frames: int, clips: int) -> str:
    from .fit import builtin_head_for_clip, fit_coarse
    from .flow import flow as compute_flow
    from .metrics import face_mask_for, micro_motion_error, vertex_error_mm
    from .preprocess import preprocess
    from .synth import make_clip

    out: list[str] = []
    clip = work / "bench.mp4"
    truth_path = make_clip(clip, fps=30, frames=frames, width=640, height=360, seed=0)
    t0 = time.perf_counter()
    pre = preprocess(str(clip), flow="fast", cache_dir=str(work / "cache-fast"))
    t_pre = time.perf_counter() - t0
    n = len(pre.frame_numbers)
    pairs = min(20, n - 1)
    tv = []
    for i in range(pairs):
        s = time.perf_counter()
        compute_flow(pre.crops[i], pre.crops[i + 1], "tvl1")
        tv.append(time.perf_counter() - s)
    t0 = time.perf_counter()
    model = builtin_head_for_clip(pre)
    fit = fit_coarse(model, pre)
    t_fit = time.perf_counter() - t0
    ms = {k: 1000.0 * v / n for k, v in pre.timings.items()}
    rows = [
        ("decode + MediaPipe landmarks", f"{ms.get('decode_landmarks', float('nan')):.1f}"),
        ("stable crop (224×224)", f"{ms.get('crop', float('nan')):.1f}"),
        ("optical flow, fast (DIS)", f"{ms.get('flow', float('nan')):.1f}"),
        (f"optical flow, TV-L1 (median of {pairs} pairs)", f"{1000.0 * statistics.median(tv):.1f}"),
        ("coarse fit (built-in head, incl. building it)", f"{1000.0 * t_fit / n:.1f}"),
        ("**preprocessing + fit, fast flow**", f"**{1000.0 * (t_pre + t_fit) / n:.1f}**"),
    ]
    out.append(table(f"Stage timings, {n}-frame 640×360 clip (ms/frame; target: preprocessing + fit ≤ 60)",
                     ("stage", "ms/frame"), rows))

    acc_rows = []
    truths = [(clip, truth_path, pre, fit, model)]
    for seed in range(1, clips):
        c = work / f"acc{seed}.mp4"
        tp = make_clip(c, fps=30, frames=frames, width=640, height=360, seed=seed)
        p = preprocess(str(c), flow="fast", cache_dir=str(work / "cache-fast"))
        m = builtin_head_for_clip(p)
        truths.append((c, tp, p, fit_coarse(m, p), m))
    for c, tp, _p, f, m in truths:
        truth = np.load(tp, allow_pickle=False)
        mask = face_mask_for({"expression_basis": m.data.exprdirs})
        onset = int(truth["onset_frame"])
        acc_rows.append((c.name, f"{100 * f.landmark_error_iod:.2f}",
                         f"{vertex_error_mm(f.vertices, truth['vertices'], mask):.2f}",
                         f"{micro_motion_error(f.vertices, truth['vertices'], onset, mask):.3f}"))
    out.append(table("Coarse fit against ground truth on made clips",
                     ("clip", "landmark error (% IOD)", "vertex error (mm)", "micro-motion error"), acc_rows))

    if REAL_CLIP.is_file():
        t0 = time.perf_counter()
        rp = preprocess(str(REAL_CLIP), flow="fast", cache_dir=str(work / "cache-real"))
        rm = builtin_head_for_clip(rp)
        rf = fit_coarse(rm, rp)
        dt = time.perf_counter() - t0
        out.append(table("Real footage (../shared/clips/single_face.mp4, 72 frames; target ≤ 1.5% IOD)",
                         ("landmark reprojection error (% IOD)", "worst frame (% IOD)", "ms/frame (pre + fit)"),
                         [(f"{100 * rf.landmark_error_iod:.2f}", f"{100 * float(np.max(rf.per_frame_error)):.2f}",
                           f"{1000 * dt / len(rp.frame_numbers):.1f}")]))
    else:
        out.append(f"(real-footage row skipped: {REAL_CLIP} is absent)\n")
    out.append(f"Peak memory (RSS) of the benchmark process: {peak_rss_mib():.0f} MiB\n")
    return "\n".join(out)


VARIANTS: list[tuple[str, str, str, dict[str, Any]]] = [  # (--variants name, table row, stages, RefineConfig flags)
    ("coarse", "coarse fit only", "coarse", {}),
    ("solve", "onset-relative flow solve (no networks)", "solve", {}),
    ("dem", "+ dynamic-encoded module", "dem", {}),
    ("full", "full (+ mesh deformation)", "full", {}),
    ("no-motion-features", "full without motion features", "full", {"use_motion_features": False}),
    ("no-landmark-features", "full without landmark features", "full", {"use_landmark_features": False}),
    ("no-geometry-features", "full without geometry features", "full", {"use_geometry_features": False}),
    ("no-geometric-losses", "full without geometric losses", "full", {"use_geometric_losses": False}),
]
VARIANT_NAMES = [v[0] for v in VARIANTS]


def select_variants(names: list[str] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(table row, stages, flags) of the variants `names` (VARIANT_NAMES; None: all), in the table's order."""
    unknown = sorted(set(names or []) - set(VARIANT_NAMES))
    if unknown or names == []:
        raise ValueError(f"Unknown model variants {unknown or names}: name one or more of {', '.join(VARIANT_NAMES)}.")
    return [(row, stages, flags) for name, row, stages, flags in VARIANTS if names is None or name in names]


def bench_model(work: Path, frames: int, clips: int, variants: list[str] | None, local_motion: bool = False) -> str:
    """The model table on `clips` made clips (seeds 100, 101, ...); `local_motion`: the clips' events also move
    the skin around a random face point (`make_clip(local_motion=True)`), motion outside the expression basis."""
    from .fit import builtin_head_for_clip, fit_coarse
    from .metrics import face_mask_for, micro_motion_error
    from .preprocess import preprocess
    from .refine import RefineConfig, refine
    from .synth import make_clip
    from .take import detail_basis, evaluate_vertices

    chosen = select_variants(variants)
    errors: dict[str, list[float]] = {name: [] for name, _, _ in chosen}
    times: dict[str, list[float]] = {name: [] for name, _, _ in chosen}
    for seed in range(clips):
        clip = work / f"model{seed}{'-local' if local_motion else ''}.mp4"
        tp = make_clip(clip, fps=30, frames=frames, width=640, height=360, seed=100 + seed,
                       amplitude_mm=(0.3, 3.0), local_motion=local_motion)
        truth = np.load(tp, allow_pickle=False)
        pre = preprocess(str(clip), flow="fast", cache_dir=str(work / "cache-model"))
        model = builtin_head_for_clip(pre)
        coarse = fit_coarse(model, pre)
        mask = face_mask_for({"expression_basis": model.data.exprdirs})
        onset = int(truth["onset_frame"])
        for name, stages, flags in chosen:
            t0 = time.perf_counter()
            if stages == "coarse":
                verts = coarse.vertices
            else:
                cfg = replace(RefineConfig(), **flags)
                r = refine(model, pre, coarse, stages=stages, config=cfg)
                basis = detail_basis(r.displacement)
                offsets = basis.reconstruct() if basis.basis.shape[0] else None
                verts = evaluate_vertices(model, coarse.shape, r.expression, r.pose, offsets)
            times[name].append(time.perf_counter() - t0)
            errors[name].append(micro_motion_error(verts, truth["vertices"], onset, mask))
            print(f"  clip {seed}: {name}: micro-motion error {errors[name][-1]:.3f} "
                  f"({times[name][-1]:.1f} s)", file=sys.stderr, flush=True)
    base = statistics.median(errors[chosen[0][0]]) if chosen[0][1] == "coarse" else float("nan")
    rows = []
    for name, stages, _ in chosen:
        med = statistics.median(errors[name])
        rel = "—" if stages == "coarse" else f"{100 * (med - base) / base:+.0f}%"
        per100 = statistics.median(times[name]) * 100.0 / frames if stages != "coarse" else float("nan")
        rows.append((name, f"{med:.3f}", rel, "—" if stages == "coarse" else f"{per100:.1f}"))
    local = (", each event also moving the skin around a random face point (Gaussian, σ 8–15 mm, random 3D "
             "direction, the event's peak): motion outside the expression basis") if local_motion else ""
    return table(f"Micro-motion error on {clips} made clips ({frames} frames, AU amplitudes 0.3–3 mm, head jitter, "
                 f"noise{local}; median over clips; lower is better)",
                 ("variant", "micro-motion error", "vs coarse", "refine s / 100 frames"), rows)


def unwritable(out: Path) -> str | None:
    """Why the tables could not be written to `out`, in one sentence, or None."""
    if out.is_dir():
        return f"--out {out} is a folder; name a markdown file."
    if not out.parent.is_dir():
        return f"The folder {out.parent} for --out does not exist."
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        return f"--out {out} is not writable."
    return None


def main_bench(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="microexp bench", description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["server", "model", "all"], default="all")
    p.add_argument("--frames", type=whole_number(2), default=100, help="frames per made clip (2 or more)")
    p.add_argument("--clips", type=whole_number(1), default=3, help="made clips for the accuracy tables (1 or more)")
    p.add_argument("--variants", nargs="+", choices=VARIANT_NAMES, default=None, metavar="NAME",
                   help=f"model variants to run (default all): {', '.join(VARIANT_NAMES)}")
    p.add_argument("--local-motion", action="store_true",
                   help="model part: made clips whose events also move the skin outside the expression basis")
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    problem = unwritable(Path(args.out)) if args.out else None
    if problem:  # before minutes of work, not after them
        print(f"error: {problem}", file=sys.stderr)
        return 1
    parts = []
    with tempfile.TemporaryDirectory(prefix="microexp-bench-") as tmp:
        work = Path(tmp)
        if args.part in ("server", "all"):
            parts.append(bench_server(work, args.frames, args.clips))
        if args.part in ("model", "all"):
            parts.append(bench_model(work, args.frames, args.clips, args.variants, args.local_motion))
    text = f"_Machine: {machine_line()}_\n\n" + "\n".join(parts)
    print(text)
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"error: the tables above could not be written to {args.out} ({exc.strerror or exc}).",
                  file=sys.stderr)
            return 1
    return 0
