"""`python -m server COMMAND`: the command line and the protocol entry point.

Commands: run JOB.json (NDJSON protocol), hello, reconstruct, make-clip, demo, bench, train.
In `run` mode stdout is reserved for protocol events; everything else goes to stderr (server.log).
"""

from __future__ import annotations

import argparse
import platform
import sys
import traceback
from pathlib import Path
from typing import Any

from blender_microexp.core.protocol import FLOW_CHOICES, PROTOCOL_VERSION, STAGE_CHOICES, JobSpec, ProtocolError

from . import __version__
from .arguments import positive_fps
from .errors import Cancelled, MicroexpError

EXIT_OK, EXIT_ERROR, EXIT_CANCELLED = 0, 1, 130


def hello_fields() -> dict[str, Any]:
    """What this server runs with: versions and the compute device."""
    import cv2
    import torch

    try:
        import mediapipe

        mp_version = mediapipe.__version__
    except Exception as exc:  # a broken mediapipe install is worth reporting, not crashing on
        mp_version = f"unavailable ({exc.__class__.__name__})"
    device = "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "protocol": PROTOCOL_VERSION,
        "server_version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "mediapipe": mp_version,
        "opencv": cv2.__version__,
        "tvl1": hasattr(cv2, "optflow"),
    }


def parse_frames(text: str | None) -> tuple[int, int] | None:
    """'A:B' -> (A, B), half-open source-frame range."""
    if not text:
        return None
    try:
        a, b = text.split(":")
        start, stop = int(a or 0), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frames wants START:STOP (e.g. 0:120), not {text!r}") from None
    if start < 0 or stop <= start:
        raise argparse.ArgumentTypeError(f"--frames {text}: STOP must be greater than START and both >= 0")
    return start, stop


def cmd_hello(_args: argparse.Namespace) -> int:
    from blender_microexp.core.protocol import encode_event

    print(encode_event("hello", **hello_fields()), flush=True)
    return EXIT_OK


def _options_from(spec: JobSpec | argparse.Namespace) -> Any:
    from .pipeline import ReconstructOptions

    return ReconstructOptions(
        model=spec.model, frames=spec.frames, flow=spec.flow, stages=spec.stages,
        cache_dir=spec.cache_dir, checkpoint=spec.checkpoint, device=spec.device,
        time_budget_s=spec.time_budget_s, preview=not getattr(spec, "no_preview", False),
        fps=getattr(spec, "fps", None),  # the command line's only: job files (the add-on's protocol) carry none
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Protocol mode: job.json in, NDJSON events out (docs/protocol.md)."""
    from .events import CancelFlag, ProtocolReporter

    rep = ProtocolReporter.take_over_stdout()
    cancel = CancelFlag()
    cancel.install_signal_handlers()
    cancel.watch_stdin(sys.stdin)
    log_path = str(Path(args.job).resolve().parent / "server.log")
    try:
        rep.emit("hello", **hello_fields())
        spec = JobSpec.read(args.job)
        from .pipeline import reconstruct

        result = reconstruct(spec.clip, spec.output, _options_from(spec), reporter=rep, cancel=cancel)
        rep.emit("done", take=str(result.take_dir / "take.json"))
        return EXIT_OK
    except Cancelled:
        rep.emit("cancelled")
        return EXIT_CANCELLED
    except (MicroexpError, ProtocolError) as exc:
        if exc.__cause__ is not None:  # what the one sentence leaves out, for the log only
            print(f"{exc}\n  caused by {exc.__cause__.__class__.__name__}: {exc.__cause__}", file=sys.stderr)
        rep.emit("error", code=getattr(exc, "code", "job"), message=str(exc), log=log_path)
        return EXIT_ERROR
    except Exception:
        traceback.print_exc(file=sys.stderr)  # the details go to the log only
        rep.emit("error", code="internal", message=f"The server failed unexpectedly; the details are in {log_path}.",
                 log=log_path)
        return EXIT_ERROR


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .events import CancelFlag, TerminalReporter
    from .pipeline import reconstruct

    cancel = CancelFlag()
    cancel.install_signal_handlers()
    rep = TerminalReporter()
    try:
        result = reconstruct(args.clip, args.output, _options_from(args), reporter=rep, cancel=cancel)
    except Cancelled:
        print("\nCancelled; no take was written.", file=sys.stderr)
        return EXIT_CANCELLED
    except MicroexpError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_ERROR
    m = result.header["metrics"]
    print(f"\nwrote {result.take_dir / 'take.json'} ({result.header['head_model']['id']}, "
          f"{len(result.header['head_model']['expression_names'])} expression keys, "
          f"{m['detail_components']} detail keys; landmark error {100 * m['landmark_error_iod']:.2f}% IOD; "
          f"{result.timings['total']:.1f} s)", file=sys.stderr)
    return EXIT_OK


def cmd_passthrough(name: str, argv: list[str]) -> int:
    if name == "make-clip":
        from .synth import main_make_clip

        return int(main_make_clip(argv) or 0)
    if name == "train":
        from .train import main_train

        return int(main_train(argv) or 0)
    if name == "bench":
        from .bench import main_bench

        return int(main_bench(argv) or 0)
    if name == "demo":
        from .demo import main_demo

        return int(main_demo(argv) or 0)
    raise AssertionError(name)


PASSTHROUGH = {  # commands with their own argparse (main() hands them their arguments); listed here for --help
    "make-clip": "make a clip with scripted micro-expressions and its ground truth",
    "train": "train the refinement networks on a folder of clips into a checkpoint",
    "bench": "stage timings, peak memory and accuracy tables",
    "demo": "make a clip, reconstruct it and write demo/ (take, preview, demo.blend)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="microexp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("hello", help="print the hello event (versions, device)")
    r = sub.add_parser("run", help="protocol mode: run a job file, events on stdout")
    r.add_argument("job")
    rc = sub.add_parser("reconstruct", help="reconstruct a clip into a take")
    rc.add_argument("clip")
    rc.add_argument("-o", "--output", required=True, help="output folder for take.json, take.npz, preview.mp4")
    rc.add_argument("--model", default="builtin", help="'builtin' or your FLAME files (folder or .pkl)")
    rc.add_argument("--frames", type=parse_frames, default=None, help="source frames START:STOP")
    rc.add_argument("--fps", type=positive_fps, default=None,
                    help="the clip's frame rate, overriding the container's: for image folders (30 otherwise) and "
                         "streams that carry none or a wrong one (default: the container's, checked against the "
                         "frames' timestamps)")
    rc.add_argument("--flow", choices=FLOW_CHOICES, default="fast")
    rc.add_argument("--stages", choices=STAGE_CHOICES, default="full")
    rc.add_argument("--cache-dir", default=None)
    rc.add_argument("--checkpoint", default=None, help="a checkpoint from `train` to start the refinement from")
    rc.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    rc.add_argument("--time-budget", dest="time_budget_s", type=float, default=None,
                    help="most seconds for the networks' per-clip optimisation loop (default 45; it stops "
                         "earlier after its 150 steps; the onset solve's fixed steps in two passes, ~22 s per 100 "
                         "frames of the built-in head, come on top)")
    rc.add_argument("--no-preview", action="store_true")
    for name, text in PASSTHROUGH.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        return cmd_passthrough(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    handlers = {"hello": cmd_hello, "run": cmd_run, "reconstruct": cmd_reconstruct}
    return handlers[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["main", "hello_fields", "parse_frames"]
