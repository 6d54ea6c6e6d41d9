"""`python -m server run job.json`: the event stream, its errors, and cancellation (a real subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from blender_microexp.core.protocol import JobSpec, decode_event

ROOT = Path(__file__).resolve().parents[2]


def start_server(job: Path, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "server", "run", str(job)], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=log.open("w"), text=True, start_new_session=True,
    )


def run_job(tmp_path: Path, **fields) -> tuple[int, list[dict]]:
    job = tmp_path / "job.json"
    JobSpec(**fields).write(job)
    proc = start_server(job, tmp_path / "server.log")
    out, _ = proc.communicate(timeout=300)
    events = [decode_event(line) for line in out.splitlines() if line.strip()]  # every line must be an event
    return proc.returncode, events


def test_hello_reports_versions_and_device():
    out = subprocess.run([sys.executable, "-m", "server", "hello"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    event = decode_event(out.strip().splitlines()[-1])
    assert event["type"] == "hello" and event["protocol"] == 1
    assert event["torch"].startswith("2.13")
    assert event["device"] == "cpu" or event["device"].startswith("cuda")
    assert event["tvl1"] is True


def test_missing_clip_ends_in_one_error_event_and_no_take(tmp_path):
    code, events = run_job(tmp_path, clip=str(tmp_path / "nope.mp4"), output=str(tmp_path / "out"))
    assert code == 1
    assert [e["type"] for e in events] == ["hello", "stage", "error"]
    err = events[-1]
    assert "nope.mp4" in err["message"] and err["message"].count(". ") == 0
    assert err["log"].endswith("server.log")
    assert not (tmp_path / "out" / "take.json").exists()


def test_not_a_flame_file_is_named_before_any_preprocessing(tmp_path):
    bogus = tmp_path / "generic_model.pkl"
    bogus.write_text("this is not a FLAME model")
    code, events = run_job(tmp_path, clip=str(tmp_path / "whatever.mp4"), output=str(tmp_path / "out"),
                           model=str(bogus))
    assert code == 1 and events[-1]["type"] == "error" and events[-1]["code"] == "head_model"
    assert "generic_model.pkl" in events[-1]["message"]
    assert not any(e["type"] == "stage" for e in events)


def test_an_unreadable_checkpoint_is_named_before_any_preprocessing(tmp_path):
    bogus = tmp_path / "refine.pt"
    bogus.write_text("this is not a checkpoint")
    code, events = run_job(tmp_path, clip=str(tmp_path / "whatever.mp4"), output=str(tmp_path / "out"),
                           checkpoint=str(bogus))
    assert code == 1 and events[-1]["type"] == "error" and events[-1]["code"] == "checkpoint"
    assert events[-1]["message"] == (f"The checkpoint '{bogus}' cannot be read: it is not a torch file written by "
                                     "'microexp train', or it is damaged.")
    assert not any(e["type"] == "stage" for e in events)


def test_unwritable_output_folder(tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new folders even to root
        target = Path("/proc/microexp-no-such-dir/out")
        code, events = run_job(tmp_path, clip=str(tmp_path / "c.mp4"), output=str(target))
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "out"
        try:
            code, events = run_job(tmp_path, clip=str(tmp_path / "c.mp4"), output=str(target))
        finally:
            locked.chmod(0o700)
    assert code == 1 and events[-1]["code"] == "output"
    assert str(target) in events[-1]["message"] and not target.exists()


def test_output_path_that_is_a_file_is_refused(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should go")
    code, events = run_job(tmp_path, clip=str(tmp_path / "c.mp4"), output=str(blocker))
    assert code == 1 and events[-1]["code"] == "output"
    assert "Cannot create the output folder" in events[-1]["message"]


def test_bad_job_file(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"clip": "x"}))
    proc = start_server(job, tmp_path / "server.log")
    out, _ = proc.communicate(timeout=120)
    events = [decode_event(line) for line in out.splitlines()]
    assert proc.returncode == 1 and events[-1]["type"] == "error" and "output" in events[-1]["message"]


@pytest.mark.parametrize("how", ["stdin", "sigint", "sigterm"])
def test_cancel_stops_within_a_second_and_leaves_no_take(tmp_path, made_clip, how):
    job = tmp_path / "job.json"
    out_dir = tmp_path / "out"
    JobSpec(clip=str(made_clip), output=str(out_dir), cache_dir=str(tmp_path / "cache")).write(job)
    proc = start_server(job, tmp_path / "server.log")
    assert proc.stdout is not None and proc.stdin is not None
    seen = []
    for line in proc.stdout:  # wait until real work is under way
        seen.append(decode_event(line))
        if seen[-1]["type"] == "progress":
            break
    assert seen[-1]["type"] == "progress", seen
    t0 = time.perf_counter()
    if how == "stdin":
        proc.stdin.write(json.dumps({"type": "cancel"}) + "\n")
        proc.stdin.flush()
    else:
        proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    elapsed = time.perf_counter() - t0
    events = [decode_event(line) for line in rest.splitlines()]
    assert events and events[-1]["type"] == "cancelled"
    assert proc.returncode == 130
    assert elapsed < 1.5, f"took {elapsed:.2f} s to stop"
    assert not (out_dir / "take.json").exists() and not (out_dir / "take.npz").exists()
    assert not list(out_dir.glob(".take-*")) and not (out_dir / "preview.mp4").exists()


def run_in_process(tmp_path, monkeypatch, failure: BaseException) -> dict:
    """cmd_run with reconstruct raising `failure`; returns the last event."""
    import argparse
    import io

    import server.cli
    import server.events
    import server.pipeline

    events = io.StringIO()
    monkeypatch.setattr(server.events.ProtocolReporter, "take_over_stdout",
                        classmethod(lambda cls: cls(events)))
    monkeypatch.setattr(server.events.CancelFlag, "install_signal_handlers", lambda self: None)
    monkeypatch.setattr(server.events.CancelFlag, "watch_stdin", lambda self, stream: None)

    def broken(*_args, **_kwargs):
        raise failure

    monkeypatch.setattr(server.pipeline, "reconstruct", broken)
    job = tmp_path / "job.json"
    JobSpec(clip=str(tmp_path / "c.mp4"), output=str(tmp_path / "out")).write(job)
    assert server.cli.cmd_run(argparse.Namespace(job=str(job))) == 1
    return decode_event(events.getvalue().splitlines()[-1])


def test_an_unexpected_failure_is_one_fixed_sentence_with_the_details_in_the_log(tmp_path, monkeypatch, capsys):
    error = run_in_process(tmp_path, monkeypatch, RuntimeError("shape mismatch in layer 3\nsecond line of detail"))
    log = str(tmp_path / "server.log")
    assert error == {"type": "error", "code": "internal", "log": log,
                     "message": f"The server failed unexpectedly; the details are in {log}."}
    logged = capsys.readouterr().err
    assert "RuntimeError: shape mismatch in layer 3" in logged and "Traceback" in logged


def test_a_checkpoint_whose_weights_do_not_fit_is_named_before_any_preprocessing(tmp_path):
    import torch

    from server.models.checkpoint import save_checkpoint

    ckpt = tmp_path / "refine.pt"
    save_checkpoint(ckpt, {"nets": {"dem.extra": torch.zeros(2)}, "config": {}, "dims": {"n_expression": 4}})
    code, events = run_job(tmp_path, clip=str(tmp_path / "whatever.mp4"), output=str(tmp_path / "out"),
                           checkpoint=str(ckpt))
    assert code == 1 and events[-1]["type"] == "error" and events[-1]["code"] == "checkpoint"
    message = events[-1]["message"]
    assert message.startswith(f"The checkpoint '{ckpt}' does not fit this model's networks: ")
    assert "belong to no layer (first 'dem.extra')" in message and "\n" not in message
    assert not any(e["type"] == "stage" for e in events)


def test_a_user_error_s_cause_goes_to_the_log_only(tmp_path, monkeypatch, capsys):
    from server.headmodel import HeadModelError

    failure = HeadModelError("/m/generic_model.pkl is truncated or corrupt, so it cannot be read.")
    failure.__cause__ = EOFError("Ran out of input")
    error = run_in_process(tmp_path, monkeypatch, failure)
    assert error["code"] == "head_model" and error["message"] == str(failure)
    assert "caused by EOFError: Ran out of input" in capsys.readouterr().err


def test_help_lists_every_command(capsys):
    from server.cli import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()
              if line.startswith("    ") and not line.startswith("     ")}  # not a wrapped help text
    assert listed == {"hello", "run", "reconstruct", "make-clip", "train", "bench", "demo"}
