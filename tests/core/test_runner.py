"""core.runner and core.jobs against fake servers: events, crashes, garbage, cancel, no orphans."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from blender_microexp.core import jobs, runner
from blender_microexp.core.protocol import JobSpec

FAKE_DIR = Path(__file__).resolve().parents[1] / "blender" / "fake_servers"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _start(tmp_path: Path, mode: str, frames: int = 6) -> runner.ServerJob:
    job_dir, job_json, _spec = jobs.prepare_job(tmp_path / "cache", {"clip": str(tmp_path / "clip.mp4")})
    env = {**os.environ, "MICROEXP_FAKE_MODE": mode, "MICROEXP_FAKE_FRAMES": str(frames)}
    return runner.ServerJob(jobs.server_command(sys.executable, job_json), job_dir, FAKE_DIR, env=env)


def test_prepare_job_writes_a_valid_spec(tmp_path: Path) -> None:
    job_dir, job_json, spec = jobs.prepare_job(tmp_path, {"clip": "/x/face.mp4", "frames": (2, 9), "flow": "tvl1",
                                                          "stages": "coarse"})
    assert job_json == job_dir / "job.json" and job_dir.parent == tmp_path / "jobs"
    again = JobSpec.read(job_json)
    assert again.frames == (2, 9) and again.output == str(job_dir / "take") and again.stages == "coarse"
    with pytest.raises(jobs.JobSetupError, match="Unknown flow"):
        jobs.prepare_job(tmp_path, {"clip": "/x/face.mp4", "flow": "magic"})


def test_successful_job_streams_events_and_writes_a_take(tmp_path: Path) -> None:
    job = _start(tmp_path, "ok")
    events = job.wait_finished(timeout=30)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "hello" and kinds[-1] == "done" and "progress" in kinds and "warning" in kinds
    assert (Path(events[-1]["take"]) / "take.json").is_file()
    assert job.finished and job.poll() == []
    progress = jobs.JobProgress()
    for e in events:
        progress.update(e)
    assert progress.stage == "fit" and progress.stage_index == 1 and progress.warnings == 1
    assert progress.factor == pytest.approx(0.5)
    assert job not in runner.active_jobs()


def test_progress_ignores_fields_of_the_wrong_type() -> None:
    """A server's slip (a count that is not a number) must not raise in the panel's pump."""
    progress = jobs.JobProgress()
    progress.update({"type": "stage", "name": "fit", "index": "one", "count": None})
    progress.update({"type": "progress", "stage": "fit", "done": "3", "total": 10.0, "eta_s": "soon"})
    assert (progress.stage, progress.stage_index, progress.stage_count) == ("fit", 0, 1)
    assert (progress.done, progress.total, progress.eta_s) == (0, 10, None)
    progress.update({"type": "stage", "name": "refine", "index": 2, "count": 4})
    progress.update({"type": "progress", "stage": "refine", "done": 5, "total": 10, "eta_s": 7})
    assert progress.factor == pytest.approx((2 + 0.5) / 4) and progress.text() == "refine 50% · 7 s left"


def test_crashing_server_gives_one_error_naming_the_log(tmp_path: Path) -> None:
    job = _start(tmp_path, "crash")
    events = job.wait_finished(timeout=30)
    assert events[-1]["type"] == "error"
    assert "exit code 3" in events[-1]["message"] and str(job.log_path) in events[-1]["message"]
    assert "RuntimeError: boom" in job.log_path.read_text()
    assert sum(e["type"] == "error" for e in events) == 1


def test_garbage_line_is_an_error_and_stops_the_server(tmp_path: Path) -> None:
    job = _start(tmp_path, "garbage")
    events = job.wait_finished(timeout=30)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "protocol"
    assert "loading weights" in events[-1]["message"] and str(job.log_path) in events[-1]["message"]
    deadline = time.monotonic() + 3
    while job.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not job.alive


def test_server_error_event_is_passed_on(tmp_path: Path) -> None:
    events = _start(tmp_path, "error").wait_finished(timeout=30)
    assert events[-1] == {"type": "error", "code": "clip", "message": "The clip shows no face in any frame.",
                          "log": events[-1]["log"]}


@pytest.mark.parametrize("mode", ["slow", "polite"])
def test_cancel_ends_the_server_and_its_children(tmp_path: Path, mode: str) -> None:
    job = _start(tmp_path, mode)
    child_pid_file = job.job_dir / "child.pid"
    deadline = time.monotonic() + 20
    while not child_pid_file.exists() and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    child_pid = int(child_pid_file.read_text())
    t0 = time.monotonic()
    job.cancel()
    events = job.wait_finished(timeout=10)
    took = time.monotonic() - t0
    assert events[-1]["type"] == "cancelled"
    assert took < 3.5
    time.sleep(0.2)
    assert not job.alive and not _pid_alive(job.pid) and not _pid_alive(child_pid)


def test_shutdown_all_leaves_no_process(tmp_path: Path) -> None:
    job = _start(tmp_path, "slow")
    time.sleep(0.5)
    assert runner.shutdown_all(timeout=3.0) >= 1
    assert not job.alive and runner.active_jobs() == []


def test_missing_interpreter_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(runner.RunnerError, match="Cannot start the server"):
        runner.ServerJob([str(tmp_path / "nope" / "python"), "-m", "server"], tmp_path / "job", tmp_path)


def test_check_server_reads_hello(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hello = jobs.check_server(sys.executable, str(FAKE_DIR))
    assert hello["server_version"] == "fake-0" and "device cpu" in jobs.describe_hello(hello)
    with pytest.raises(jobs.JobSetupError, match="has no server/ package"):
        jobs.check_server(sys.executable, str(tmp_path))
    with pytest.raises(jobs.JobSetupError, match="does not exist"):
        jobs.check_server(str(tmp_path / "python"), str(FAKE_DIR))


def test_check_server_names_a_module_the_interpreter_lacks(tmp_path: Path) -> None:
    """The common set-up mistake (the system Python instead of the server's .venv) gets a fix, not a traceback."""
    package = tmp_path / "server"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("import microexp_module_nobody_has\n")
    with pytest.raises(jobs.JobSetupError) as err:
        jobs.check_server(sys.executable, str(tmp_path))
    assert str(err.value) == (f"The server's Python {sys.executable} lacks the module 'microexp_module_nobody_has'; "
                              "run ./microexp setup in the server folder, or choose the Python of its .venv.")


def test_flame_folder_check(tmp_path: Path) -> None:
    assert "does not exist" in (jobs.flame_folder_problem(str(tmp_path / "x")) or "")
    assert "neither" in (jobs.flame_folder_problem(str(tmp_path)) or "")
    (tmp_path / "generic_model.pkl").write_bytes(b"")
    assert "lacks landmark_embedding.npy and mediapipe" in (jobs.flame_folder_problem(str(tmp_path)) or "")
    (tmp_path / "landmark_embedding.npy").write_bytes(b"")
    (tmp_path / "mediapipe_landmark_embedding.npz").write_bytes(b"")
    assert jobs.flame_folder_problem(str(tmp_path)) is None
    assert jobs.flame_folder_problem(str(tmp_path / "generic_model.pkl")) is None


def test_server_discovery(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "__init__.py").write_text("")
    pkg = tmp_path / "blender_microexp"
    pkg.mkdir()
    assert jobs.find_server_dir(pkg) == tmp_path.resolve()
    assert jobs.default_server_python(tmp_path) is None
    assert jobs.find_server_dir(pkg / "core") is None
    assert json.loads(json.dumps(jobs.server_command("py", "j.json"))) == ["py", "-m", "server", "run", "j.json"]
