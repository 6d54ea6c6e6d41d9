"""Check server: run `<python> -m server hello` and report versions and device, or the problem."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import bpy
from bpy.types import Operator

from ..core import jobs
from ..preferences import addon_preferences, server_settings

POLL_S = 0.2


def _check(python: str, server_dir: str) -> tuple[bool, str]:
    """(ok, one line): the server's versions and device, or why it cannot run."""
    try:
        return True, jobs.describe_hello(jobs.check_server(python, server_dir))
    except jobs.JobSetupError as exc:
        return False, str(exc)


def _show(context: Any, line: str) -> None:
    prefs = addon_preferences(context)
    if prefs is not None:
        prefs.server_status = line
    for window in getattr(context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type == "PREFERENCES":
                area.tag_redraw()


def start_check(context: Any, python: str, server_dir: str) -> Callable[[], float | None]:
    """Run the check on a thread (loading torch takes seconds); returns the timer function that writes its answer
    into the status line once it is there (it returns None then, the seconds to the next poll before)."""
    _show(context, "Checking the server…")
    answer: list[tuple[bool, str]] = []
    thread = threading.Thread(target=lambda: answer.append(_check(python, server_dir)), daemon=True)
    thread.start()

    def poll() -> float | None:
        if thread.is_alive():
            return POLL_S
        _show(bpy.context, answer[0][1] if answer else "The server check stopped without an answer.")
        return None

    return poll


class MICROEXP_OT_check_server(Operator):
    """Start the server once and report what it runs with"""

    bl_idname = "microexp.check_server"
    bl_label = "Check Server"
    bl_options = {"INTERNAL"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = server_settings(context)
        problem = jobs.server_problem(settings.python, settings.server_dir)
        if problem is None and not bpy.app.background:  # the UI stays responsive; the status line answers
            bpy.app.timers.register(start_check(context, settings.python, settings.server_dir),
                                    first_interval=POLL_S)
            self.report({"INFO"}, "Checking the server…")
            return {"FINISHED"}
        ok, line = (False, problem) if problem else _check(settings.python, settings.server_dir)
        _show(context, line)
        self.report({"INFO"} if ok else {"ERROR"}, line)
        return {"FINISHED"} if ok else {"CANCELLED"}


classes = (MICROEXP_OT_check_server,)
