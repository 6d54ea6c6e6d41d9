"""Job folders, server discovery and progress bookkeeping for the add-on (stdlib only, no bpy).

A job folder per run under the cache folder holds job.json (a JobSpec), server.log and the take.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .protocol import PROTOCOL_VERSION, JobSpec, ProtocolError, decode_event

JOB_NAME = "job.json"
TAKE_DIR_NAME = "take"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
FLAME_MODEL_FILES = ("generic_model.pkl", "flame2023_Open.pkl")
FLAME_EMBEDDING_FILES = ("landmark_embedding.npy", "mediapipe_landmark_embedding.npz")


class JobSetupError(Exception):
    """A job cannot be prepared (settings, folders, server); the message is one sentence for the user."""


# -- server discovery ----------------------------------------------------------------------------


def find_server_dir(package_dir: str | os.PathLike[str]) -> Path | None:
    """The checkout holding ``server/`` when the add-on runs from the repository (its parent), else None."""
    parent = Path(package_dir).resolve().parent
    return parent if (parent / "server" / "__init__.py").is_file() else None


def venv_python(server_dir: str | os.PathLike[str]) -> Path:
    """Where the server folder's own virtualenv keeps its interpreter."""
    base = Path(server_dir) / ".venv"
    return base / "Scripts" / "python.exe" if sys.platform == "win32" else base / "bin" / "python"


def default_server_python(server_dir: str | os.PathLike[str] | None) -> Path | None:
    if not server_dir:
        return None
    py = venv_python(server_dir)
    return py if py.is_file() else None


def server_problem(python: str, server_dir: str) -> str | None:
    """One sentence saying why the server cannot be started with these settings, or None if it can."""
    if not server_dir:
        return "No server folder is set; point the add-on's preferences at the checkout that contains server/."
    folder = Path(server_dir)
    if not (folder / "server").is_dir():
        return f"The server folder {folder} has no server/ package; choose the checkout that contains it."
    if not python:
        return "No server interpreter is set; choose the Python of the server's .venv in the add-on's preferences."
    if not Path(python).is_file():
        return f"The server interpreter {python} does not exist; run ./microexp setup or choose another Python."
    return None


def server_command(python: str | os.PathLike[str], job_json: str | os.PathLike[str]) -> list[str]:
    """The argv that runs one job: ``<python> -m server run <job.json>`` (cwd = the server folder)."""
    return [str(python), "-m", "server", "run", str(job_json)]


def check_server(python: str, server_dir: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``<python> -m server hello`` and return its hello event; raises JobSetupError with the problem."""
    problem = server_problem(python, server_dir)
    if problem:
        raise JobSetupError(problem)
    try:
        proc = subprocess.run([python, "-m", "server", "hello"], cwd=server_dir, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise JobSetupError(f"The server did not answer within {timeout:.0f} s.") from None
    except OSError as exc:
        raise JobSetupError(f"Cannot start {python} ({exc.strerror or exc}).") from None
    hello: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    for line in proc.stdout.splitlines():
        if not line.strip():
            continue
        try:
            event = decode_event(line)
        except ProtocolError:
            continue
        if event["type"] == "hello":
            hello = event
        elif event["type"] == "error":
            error = event
    if hello is None:
        if error is not None:
            raise JobSetupError(str(error.get("message", "The server reported an error.")))
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        missing = re.fullmatch(r"ModuleNotFoundError: No module named '([\w.]+)'", last.strip())
        if missing:
            raise JobSetupError(f"The server's Python {python} lacks the module '{missing.group(1)}'; run "
                                f"./microexp setup in the server folder, or choose the Python of its .venv.")
        raise JobSetupError(f"The server did not say hello (exit code {proc.returncode}): {last[:200]}")
    if int(hello.get("protocol", -1)) != PROTOCOL_VERSION:
        raise JobSetupError(f"The server speaks protocol {hello.get('protocol')}, this add-on speaks "
                            f"{PROTOCOL_VERSION}; update one of them.")
    return hello


def describe_hello(hello: dict[str, Any]) -> str:
    """One line for the UI: server version, torch and device."""
    return (f"Server {hello.get('server_version', '?')} · torch {hello.get('torch', '?')} · "
            f"device {hello.get('device', '?')} · Python {hello.get('python', '?')}")


# -- head model ----------------------------------------------------------------------------------


def flame_folder_problem(folder: str) -> str | None:
    """A light check that a folder looks like the user's FLAME files; None if it does.

    The full validation is the server's; this only catches the wrong folder before a job starts.
    """
    if not folder:
        return "No FLAME folder is set."
    path = Path(folder)
    if path.is_file() and path.name in FLAME_MODEL_FILES:
        path = path.parent
    if not path.is_dir():
        return f"The FLAME folder {path} does not exist."
    if not any((path / name).is_file() for name in FLAME_MODEL_FILES):
        return f"The FLAME folder {path} holds neither {' nor '.join(FLAME_MODEL_FILES)}."
    missing = [name for name in FLAME_EMBEDDING_FILES if not (path / name).is_file()]
    if missing:
        return f"The FLAME folder {path} lacks {' and '.join(missing)}."
    return None


# -- job folders ---------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """A per-user cache folder when the preferences name none."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "blender_microexp"


def clip_problem(clip: str) -> str | None:
    if not clip:
        return "Choose a video clip first."
    path = Path(clip)
    if not path.is_file():
        return f"The clip {path} does not exist."
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        return f"The clip {path.name} is not a video file this add-on knows ({', '.join(VIDEO_EXTENSIONS)})."
    return None


def checkpoint_problem(checkpoint: str) -> str | None:
    """Why a checkpoint path from the panel cannot be used (None when it is a file; the server reads it)."""
    path = Path(checkpoint)
    if not path.is_file():
        return f"The checkpoint {path} does not exist; choose a file written by 'microexp train', or clear the field."
    return None


def prepare_job(cache_dir: str | os.PathLike[str], spec_fields: dict[str, Any]) -> tuple[Path, Path, JobSpec]:
    """Make a fresh job folder and write job.json into it; returns (job_dir, job_json, spec).

    ``spec_fields`` are JobSpec fields except ``output`` (the job folder's ``take/``).
    """
    base = Path(cache_dir) / "jobs"
    stem = Path(str(spec_fields.get("clip", "clip"))).stem or "clip"
    job_dir = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{stem}-{uuid.uuid4().hex[:6]}"
    try:
        job_dir.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise JobSetupError(f"Cannot create the job folder {job_dir} ({exc.strerror or exc}).") from None
    try:
        spec = JobSpec(output=str(job_dir / TAKE_DIR_NAME), **spec_fields)
        JobSpec.from_dict(json.loads(spec.to_json()))  # the server will refuse what this refuses
        job_json = spec.write(job_dir / JOB_NAME)
    except (ProtocolError, TypeError) as exc:
        raise JobSetupError(f"The job settings are invalid: {exc}") from None
    except OSError as exc:
        raise JobSetupError(f"Cannot write {job_dir / JOB_NAME} ({exc.strerror or exc}).") from None
    return job_dir, job_json, spec


# -- progress ------------------------------------------------------------------------------------


@dataclass
class JobProgress:
    """What the panel shows, folded from the event stream."""

    stage: str = "starting"
    stage_index: int = 0
    stage_count: int = 1
    done: int = 0
    total: int = 0
    eta_s: float | None = None
    warnings: int = 0
    last_warning: str = ""

    def update(self, event: dict[str, Any]) -> None:
        """Fold one event in; fields of the wrong type are ignored (a server's slip must not stop the job's UI)."""
        kind = event.get("type")
        if kind == "stage":
            self.stage = str(event.get("name", self.stage))
            self.stage_count = max(1, _count(event.get("count"), self.stage_count))
            self.stage_index = min(max(0, _count(event.get("index"), 0)), self.stage_count - 1)
            self.done, self.total, self.eta_s = 0, 0, None
        elif kind == "progress":
            self.stage = str(event.get("stage", self.stage))
            self.done = _count(event.get("done"), 0)
            self.total = _count(event.get("total"), 0)
            eta = event.get("eta_s")
            self.eta_s = float(eta) if isinstance(eta, (int, float)) and not isinstance(eta, bool) else None
        elif kind == "warning":
            self.warnings += 1
            self.last_warning = str(event.get("message", ""))

    @property
    def stage_fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    @property
    def factor(self) -> float:
        """Overall progress in [0, 1]: finished stages plus the running stage's fraction."""
        return min(1.0, (self.stage_index + self.stage_fraction) / self.stage_count)

    def text(self) -> str:
        parts = [f"{self.stage} {100 * self.stage_fraction:.0f}%"]
        if self.eta_s is not None:
            parts.append(f"{format_duration(self.eta_s)} left")
        return " · ".join(parts)


def _count(value: Any, default: int) -> int:
    """A protocol count as an int; `default` when it is missing or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return default
    return int(value)


def format_duration(seconds: float) -> str:
    s = max(0, int(round(seconds)))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"
