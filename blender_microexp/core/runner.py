"""Runs the server as a child process and turns its stdout into protocol events (stdlib only, no bpy).

The reader thread only queues raw lines; everything else happens in ``poll()`` on the caller's
thread (Blender's main thread, pumped by a timer), so no Blender data is touched off-thread.
stderr goes to a file (``server.log``), never a pipe that could fill up and stall the server.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from .protocol import ProtocolError, decode_event

LOG_NAME = "server.log"
TERMINAL_EVENTS = ("done", "error", "cancelled")

# Seconds after cancel() at which each harsher step is taken (stdin message at 0).
INTERRUPT_AFTER_S = 1.0
TERMINATE_AFTER_S = 2.0
KILL_AFTER_S = 2.5
# How long to wait for the last stdout lines once the process has exited.
DRAIN_GRACE_S = 0.5
# How long a server may take to exit after its terminal event before it is killed.
DONE_EXIT_WAIT_S = 2.0

_EOF = object()
_ACTIVE: set[ServerJob] = set()


class RunnerError(Exception):
    """The server could not be started; the message is one sentence for the user."""


class ServerJob:
    """One server process: start it, drain its events, cancel it.

    command: the full argv, e.g. ``[python, "-m", "server", "run", job_json]``; job_dir: where
    ``server.log`` goes; cwd: the server folder.
    """

    def __init__(self, command: Sequence[str], job_dir: str | os.PathLike[str], cwd: str | os.PathLike[str],
                 env: dict[str, str] | None = None) -> None:
        self.command = [str(c) for c in command]
        self.job_dir = Path(job_dir)
        self.log_path = self.job_dir / LOG_NAME
        self._lines: queue.Queue[object] = queue.Queue()
        self._finished = False
        self._cancel_started: float | None = None
        self._cancel_step = 0
        self._exited_at: float | None = None
        self._eof = False
        try:
            self.job_dir.mkdir(parents=True, exist_ok=True)
            self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - owned for the process lifetime
        except OSError as exc:
            raise RunnerError(f"Cannot write the job folder {self.job_dir} ({exc.strerror or exc}).") from None
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        else:
            # Own session = own process group, so cancel reaches the server's children too.
            kwargs["start_new_session"] = True
        try:
            self._proc = subprocess.Popen(
                self.command, cwd=str(cwd), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._log, bufsize=1, text=True, encoding="utf-8", errors="replace", **kwargs)
        except OSError as exc:
            self._log.close()
            raise RunnerError(f"Cannot start the server with {self.command[0]} in {cwd} "
                              f"({exc.strerror or exc}).") from None
        self._reader = threading.Thread(target=self._read, name="microexp-server-reader", daemon=True)
        self._reader.start()
        _ACTIVE.add(self)

    # -- state ---------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return int(self._proc.pid)

    @property
    def alive(self) -> bool:
        """True while the server process runs."""
        return self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    @property
    def finished(self) -> bool:
        """True once a terminal event (done, error, cancelled) has been handed out by poll()."""
        return self._finished

    @property
    def cancelling(self) -> bool:
        return self._cancel_started is not None

    # -- reading -------------------------------------------------------------------------------

    def _read(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            for line in stdout:
                self._lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(_EOF)

    def poll(self) -> list[dict[str, Any]]:
        """Drain what the server has said since the last call; never blocks.

        Returns protocol events in order. Exactly one terminal event (done, error or cancelled) is
        ever returned; after it the list is always empty. A line that is not a protocol event ends
        the job with an error event naming the log; so does an exit without ``done``.
        """
        if self._finished:
            return []
        self._escalate_cancel()
        events: list[dict[str, Any]] = []
        while True:
            try:
                item = self._lines.get_nowait()
            except queue.Empty:
                break
            if item is _EOF:
                self._eof = True
                break
            line = str(item)
            if not line.strip():
                continue
            try:
                event = decode_event(line)
            except ProtocolError as exc:
                events.append(self._error("protocol", f"{str(exc).rstrip('.')}; see {self.log_path}."))
                self._abandon()
                return self._finish(events)
            events.append(event)
            if event["type"] in TERMINAL_EVENTS:
                if event["type"] == "error" and not event.get("log"):
                    event["log"] = str(self.log_path)
                return self._finish(events)
        code = self._proc.poll()
        if code is not None:
            now = time.monotonic()
            if self._exited_at is None:
                self._exited_at = now
            # Output still in the pipe after exit is read on the next call; give it a moment.
            if self._eof or now - self._exited_at > DRAIN_GRACE_S:
                if self._cancel_started is not None:
                    events.append({"type": "cancelled"})
                else:
                    events.append(self._error(
                        "crash", f"The server stopped unexpectedly (exit code {code}); see {self.log_path}."))
                return self._finish(events)
        return events

    def _error(self, code: str, message: str) -> dict[str, Any]:
        return {"type": "error", "code": code, "message": message, "log": str(self.log_path)}

    def _finish(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._finished = True
        if events and events[-1]["type"] in ("error", "cancelled") and self.alive:
            self._abandon()
        try:
            # After `done` the server only has to exit; a server that hangs there is not left behind.
            self._proc.wait(timeout=DONE_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self._kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)
        self._reap()
        return events

    # -- stopping ------------------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the server to stop; poll() escalates to SIGINT, terminate and kill if it does not."""
        if self._cancel_started is not None or self._finished:
            return
        self._cancel_started = time.monotonic()
        self._cancel_step = 0
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write('{"type": "cancel"}\n')
            self._proc.stdin.flush()
        except (OSError, ValueError):
            pass  # already gone: the escalation below (or the exit) settles it
        self._escalate_cancel()

    def _escalate_cancel(self) -> None:
        if self._cancel_started is None or not self.alive:
            return
        elapsed = time.monotonic() - self._cancel_started
        steps = ((INTERRUPT_AFTER_S, self._interrupt), (TERMINATE_AFTER_S, self._terminate),
                 (KILL_AFTER_S, self._kill))
        while self._cancel_step < len(steps) and elapsed >= steps[self._cancel_step][0]:
            steps[self._cancel_step][1]()
            self._cancel_step += 1

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(OSError):  # the group may be gone already
            os.killpg(self._proc.pid, sig)  # type: ignore[attr-defined,unused-ignore]

    def _interrupt(self) -> None:
        if sys.platform == "win32":
            self._proc.send_signal(signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined,unused-ignore]
        else:
            self._signal_group(signal.SIGINT)

    def _terminate(self) -> None:
        if sys.platform == "win32":
            self._proc.terminate()
        else:
            self._signal_group(signal.SIGTERM)

    def _kill(self) -> None:
        if sys.platform == "win32":
            self._proc.kill()
        else:
            self._signal_group(signal.SIGKILL)

    def _abandon(self) -> None:
        """A job we no longer trust: stop it at once."""
        self._kill()

    def _reap(self) -> None:
        if not self.alive:
            if sys.platform != "win32":
                # The leader is gone; anything it started is swept with the group.
                self._signal_group(signal.SIGKILL)
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
            self._log.close()
            _ACTIVE.discard(self)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Cancel and wait (blocking) until the process is gone; used when Blender unloads the add-on."""
        self.cancel()
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline:
            self._escalate_cancel()
            time.sleep(0.05)
        if self.alive:
            self._kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1.0)
        self._finished = True
        self._reap()

    def wait_finished(self, timeout: float, interval: float = 0.05) -> list[dict[str, Any]]:
        """Poll until a terminal event or the timeout; returns every event seen (for scripts and tests)."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not self._finished and time.monotonic() < deadline:
            events.extend(self.poll())
            if not self._finished:
                time.sleep(interval)
        return events


def active_jobs() -> list[ServerJob]:
    """Jobs whose process may still run."""
    return list(_ACTIVE)


def shutdown_all(timeout: float = 3.0) -> int:
    """Cancel every running job and wait for their processes; returns how many there were."""
    jobs = active_jobs()
    for job in jobs:
        job.cancel()
    for job in jobs:
        job.shutdown(timeout=timeout)
    return len(jobs)
