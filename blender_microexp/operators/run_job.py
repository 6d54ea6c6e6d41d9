"""Reconstruct: send the clip to the server, show progress, import the take when it is done."""

from __future__ import annotations

import time
from typing import Any

import bpy
from bpy.types import Operator

from ..blender.jobs import JobController, Outcome
from ..core.jobs import JobSetupError

TIMER_S = 0.1


class MICROEXP_OT_run_job(Operator):
    """Reconstruct the clip's facial animation with the server and import it as a rig"""

    bl_idname = "microexp.run_job"
    bl_label = "Reconstruct"
    bl_options = {"REGISTER", "UNDO"}

    _controller: JobController | None = None
    _timer: Any = None

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        return not context.window_manager.microexp_job.running

    def _start(self, context: bpy.types.Context) -> bool:
        try:
            self._controller = JobController.start(context)
        except JobSetupError as exc:
            self.report({"ERROR"}, str(exc))
            return False
        return True

    def _report(self, outcome: Outcome) -> set[str]:
        for warning in outcome.warnings:
            self.report({"WARNING"}, warning)
        if outcome.status == "FINISHED":
            self.report({"INFO"}, outcome.message)
            return {"FINISHED"}
        self.report({"ERROR"} if outcome.status == "ERROR" else {"WARNING"}, outcome.message)
        return {"CANCELLED"}

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if not self._start(context):
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        assert self._controller is not None
        if event.type == "ESC" and event.value == "PRESS":
            context.window_manager.microexp_job.cancel_requested = True
        if event.type not in ("TIMER", "ESC"):
            return {"PASS_THROUGH"}
        outcome = self._controller.pump(context)
        _redraw_panels(context)
        if outcome is None:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        return self._report(outcome)

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender ends modal operators this way when the window closes or another file loads.
        if self._controller is not None and self._controller.outcome is None:
            self._controller.abandon(context)
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)

    def execute(self, context: bpy.types.Context) -> set[str]:
        """Blocking run for scripts and background mode: the same controller, pumped in a loop."""
        if not self._start(context):
            return {"CANCELLED"}
        assert self._controller is not None
        while (outcome := self._controller.pump(context)) is None:
            time.sleep(TIMER_S)
        return self._report(outcome)


def _redraw_panels(context: bpy.types.Context) -> None:
    screen = getattr(context, "screen", None)
    if screen is None:
        return
    for area in screen.areas:
        if area.type == "VIEW_3D":
            area.tag_redraw()


classes = (MICROEXP_OT_run_job,)
