"""Fake `python -m server`: speaks the protocol and misbehaves on purpose (MICROEXP_FAKE_MODE).

Modes: ok (writes a fixture take), crash, garbage, error, slow (ignores cancel and SIGINT, has a
child process), polite (stops on the stdin cancel message).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from blender_microexp.core.protocol import PROTOCOL_VERSION, JobSpec, encode_event  # noqa: E402


def emit(kind: str, **fields: object) -> None:
    sys.stdout.write(encode_event(kind, **fields) + "\n")
    sys.stdout.flush()


def hello() -> None:
    emit("hello", protocol=PROTOCOL_VERSION, server_version="fake-0", python=sys.version.split()[0], torch="none",
         device="cpu", mediapipe="none", opencv="none")


def load_fixtures() -> Any:
    spec = importlib.util.spec_from_file_location("microexp_fixtures", ROOT / "tests" / "core" / "fixtures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    mode = os.environ.get("MICROEXP_FAKE_MODE", "ok")
    if sys.argv[1:2] == ["hello"]:
        hello()
        return 0
    job = JobSpec.read(sys.argv[2])
    job_dir = Path(sys.argv[2]).parent
    hello()
    emit("stage", name="preprocess", index=0, count=2)
    if mode == "crash":
        print("Traceback (most recent call last):\nRuntimeError: boom", file=sys.stderr)
        return 3
    if mode == "garbage":
        print("loading weights... 100%", flush=True)
        time.sleep(30)
        return 0
    if mode == "error":
        emit("error", code="clip", message="The clip shows no face in any frame.", log=str(job_dir / "server.log"))
        return 1
    if mode in ("slow", "polite"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        (job_dir / "child.pid").write_text(str(child.pid))
        stop = threading.Event()
        if mode == "slow":
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            def watch() -> None:
                for line in sys.stdin:
                    if json.loads(line).get("type") == "cancel":
                        stop.set()
            threading.Thread(target=watch, daemon=True).start()
        for i in range(600):
            if stop.is_set():
                child.kill()
                emit("cancelled")
                return 0
            emit("progress", stage="preprocess", done=i, total=600, eta_s=600 - i)
            time.sleep(0.1)
        return 0
    frames = int(os.environ.get("MICROEXP_FAKE_FRAMES", "8"))
    for i in range(frames):
        emit("progress", stage="preprocess", done=i + 1, total=frames, eta_s=0.1 * (frames - i))
    emit("stage", name="fit", index=1, count=2)
    emit("warning", message="This is a fake server.")
    load_fixtures().make_fixture_take(job.output, T=frames, V=150, E=4, K=2, P=36, clip=job.clip)
    emit("done", take=str(Path(job.output)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
