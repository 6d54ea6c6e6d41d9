"""`./microexp demo`: make a clip with known truth, reconstruct it, write demo/ and print the errors.

demo/ holds clip.mp4 and clip.truth.npz (the made clip and its ground truth), take.json + take.npz,
preview.mp4 (the mesh over the frames) and demo.blend (the rig, imported by the add-on's own code).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_blend(take_dir: Path, blend_path: Path) -> None:
    """Import the take through the add-on in Blender-as-a-module, in its own process (the server never imports bpy)."""
    from .errors import OutputError

    cmd = [sys.executable, str(ROOT / "tools" / "take_to_blend.py"), str(take_dir), str(blend_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OutputError(f"Writing {blend_path.name} failed: {tail[0]}")


def main_demo(argv: list[str]) -> int:
    from .errors import Cancelled, MicroexpError
    from .events import CancelFlag, TerminalReporter
    from .metrics import face_mask_for, micro_motion_error, vertex_error_mm
    from .pipeline import ReconstructOptions, reconstruct
    from .synth import make_clip

    p = argparse.ArgumentParser(prog="microexp demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "demo"))
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default="full", choices=["coarse", "solve", "dem", "full"])
    p.add_argument("--no-blend", action="store_true", help="skip demo.blend")
    args = p.parse_args(argv)

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"error: Cannot create the demo folder {out} ({exc.strerror or exc}).", file=sys.stderr)
        return 1
    clip = out / "clip.mp4"
    print(f"making {clip} ({args.frames} frames at {args.fps:g} fps) with scripted micro-expressions ...",
          file=sys.stderr)
    cancel = CancelFlag()
    cancel.install_signal_handlers()
    try:
        truth_path = make_clip(clip, fps=args.fps, frames=args.frames, seed=args.seed)
        result = reconstruct(clip, out, ReconstructOptions(stages=args.stages), reporter=TerminalReporter(),
                             cancel=cancel)
        if not args.no_blend:
            write_blend(out, out / "demo.blend")
    except Cancelled:
        print("\nCancelled.", file=sys.stderr)
        return 130
    except MicroexpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    from blender_microexp.core.take import read_take

    take = read_take(out)
    truth = np.load(truth_path, allow_pickle=False)
    pred, gt = take["vertices"], truth["vertices"]
    mask = face_mask_for(take)
    onset = int(truth["onset_frame"]) if "onset_frame" in truth.files else 0
    coarse = result.coarse_vertices
    rows = [
        ("landmark reprojection error (% inter-ocular)", f"{100 * take.header['metrics']['landmark_error_iod']:.2f}"),
        ("mean vertex error, coarse fit (mm)", f"{vertex_error_mm(coarse, gt, mask):.2f}"),
        ("mean vertex error, final (mm)", f"{vertex_error_mm(pred, gt, mask):.2f}"),
        ("micro-motion error, coarse fit", f"{micro_motion_error(coarse, gt, onset, mask):.3f}"),
        (f"micro-motion error, final ({args.stages})", f"{micro_motion_error(pred, gt, onset, mask):.3f}"),
        ("detail shape keys", str(take.header["metrics"]["detail_components"])),
        ("reconstruction time (s)", f"{result.timings['total']:.1f}"),
    ]
    print("\n| demo: errors against ground truth | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    listing = ", ".join(sorted(f.name for f in out.iterdir() if not f.name.startswith(".")))
    print(f"\nwrote {os.path.relpath(out)}/: {listing}")
    return 0
