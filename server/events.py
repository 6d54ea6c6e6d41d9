"""Where the server reports to: the NDJSON protocol on the real stdout, or a terminal progress bar.

In protocol mode the process's fd 1 is duplicated for protocol lines and then pointed at stderr, so
whatever a library prints (MediaPipe, OpenCV, torch) lands in server.log and never corrupts the
event stream. Cancellation comes as a `{"type": "cancel"}` line on stdin, SIGINT or SIGTERM; all
three set one flag that every stage polls.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from typing import IO, Any

from blender_microexp.core.protocol import encode_event

from .errors import Cancelled


class CancelFlag:
    """Set from a signal handler or the stdin reader thread; polled by the stages."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            self.set(signal.Signals(signum).name)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        if hasattr(signal, "SIGBREAK"):  # Windows: CTRL_BREAK_EVENT from the add-on
            signal.signal(signal.SIGBREAK, handler)

    def watch_stdin(self, stream: IO[str]) -> threading.Thread:
        """Read cancel messages from stdin; a closed stdin (the add-on died) also cancels."""

        def reader() -> None:
            for line in stream:
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(msg, dict) and msg.get("type") == "cancel":
                    self.set("cancel message")
                    return
            self.set("stdin closed")

        thread = threading.Thread(target=reader, name="cancel-reader", daemon=True)
        thread.start()
        return thread


class Reporter:
    """Stage and progress reporting; the base class is silent (library use and tests)."""

    def __init__(self) -> None:
        self.stage_name = ""
        self.stage_started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def stage(self, name: str, index: int, count: int) -> None:
        now = time.perf_counter()
        if self.stage_name:
            self.timings[self.stage_name] = self.timings.get(self.stage_name, 0.0) + now - self.stage_started
        self.stage_name, self.stage_started = name, now
        self._stage(name, index, count)

    def finish(self) -> None:
        self.stage("", 0, 0)

    def progress(self, stage: str, done: int, total: int) -> None:
        self._progress(stage, done, total)

    def warning(self, message: str) -> None:
        self._warning(message)

    def _stage(self, name: str, index: int, count: int) -> None:
        pass

    def _progress(self, stage: str, done: int, total: int) -> None:
        pass

    def _warning(self, message: str) -> None:
        pass


class ProtocolReporter(Reporter):
    """Writes protocol events to a private duplicate of the original stdout."""

    def __init__(self, stream: IO[str], min_interval_s: float = 0.1) -> None:
        super().__init__()
        self.stream = stream
        self.min_interval_s = min_interval_s
        self._last_progress = 0.0
        self._lock = threading.Lock()
        self._progress_started: dict[str, tuple[float, int]] = {}

    @classmethod
    def take_over_stdout(cls) -> ProtocolReporter:
        """Keep fd 1 for the protocol and send everything else written to fd 1 to stderr."""
        sys.stdout.flush()
        proto_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(os.fdopen(proto_fd, "w", encoding="utf-8", buffering=1))

    def emit(self, kind: str, **fields: Any) -> None:
        with self._lock:
            self.stream.write(encode_event(kind, **fields) + "\n")
            self.stream.flush()

    def _stage(self, name: str, index: int, count: int) -> None:
        if name:
            self.emit("stage", name=name, index=index, count=count)

    def _progress(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        started = self._progress_started.setdefault(stage, (now, done))
        if done < total and now - self._last_progress < self.min_interval_s:
            return
        self._last_progress = now
        eta = None
        elapsed = now - started[0]
        if done > started[1] and elapsed > 0:
            eta = round(elapsed / (done - started[1]) * (total - done), 1)
        self.emit("progress", stage=stage, done=done, total=total, eta_s=eta)

    def _warning(self, message: str) -> None:
        self.emit("warning", message=message)


class TerminalReporter(Reporter):
    """A one-line progress bar on stderr for people at a shell."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream or sys.stderr
        self._last = 0.0
        self._tty = self.stream.isatty()

    def _stage(self, name: str, index: int, count: int) -> None:
        if self._tty:
            self.stream.write("\n")
        if name:
            self.stream.write(f"[{index + 1}/{count}] {name}\n")
        self.stream.flush()

    def _progress(self, stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self._last < (0.1 if self._tty else 5.0):
            return
        self._last = now
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = f"  {stage:<12} [{bar}] {done}/{total}"
        self.stream.write(("\r" + line) if self._tty else (line + "\n"))
        self.stream.flush()

    def _warning(self, message: str) -> None:
        self.stream.write(f"\nwarning: {message}\n")
        self.stream.flush()
