"""Reconstruct: send the clip to the server, show progress, import the take when it is done."""

from __future__ import annotations

import time
import traceback
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
    bl_options = {"UNDO"}  # one undo step; not REGISTER: Repeat Last would run the blocking execute()

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
        # The status bar shows the latest report: the outcome first, then its warnings stay in sight.
        if outcome.status == "FINISHED":
            self.report({"INFO"}, outcome.message)
        else:
            self.report({"ERROR"} if outcome.status == "ERROR" else {"WARNING"}, outcome.message)
        for warning in outcome.warnings:
            self.report({"WARNING"}, warning)
        return {"FINISHED"} if outcome.status == "FINISHED" else {"CANCELLED"}

    def _pump(self, context: bpy.types.Context) -> Outcome | None:
        """One pump of the job; an unexpected error stops the server and ends the job in one sentence instead of
        leaving it marked running with its timer firing."""
        assert self._controller is not None
        try:
            return self._controller.pump(context)
        except Exception:
            traceback.print_exc()
            self._controller.abandon(context)
            outcome = Outcome("ERROR", "The job stopped on an unexpected error; nothing was imported (details in the "
                                       "system console).")
            context.window_manager.microexp_job.last_message = outcome.message
            return outcome

    def invoke(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        if not self._start(context):
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context: bpy.types.Context, event: bpy.types.Event) -> set[str]:
        assert self._controller is not None
        esc = event.type == "ESC" and event.value == "PRESS" and _over_3d_view(context, event) \
            and not context.screen.is_animation_playing
        if esc:  # over the 3D View, when ESC is not stopping playback: it cancels the job (and stops there)
            context.window_manager.microexp_job.cancel_requested = True
        elif event.type != "TIMER":
            return {"PASS_THROUGH"}
        outcome = self._pump(context)
        _redraw_panels(context)
        if outcome is None:
            return {"RUNNING_MODAL"} if esc else {"PASS_THROUGH"}  # other operators' timers go on to them
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return self._report(outcome)

    def cancel(self, context: bpy.types.Context) -> None:
        # Blender ends modal operators this way when the window closes or another file loads.
        if self._controller is not None and self._controller.outcome is None:
            self._controller.abandon(context)
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None

    def execute(self, context: bpy.types.Context) -> set[str]:
        """Blocking run for scripts and background mode: the same controller, pumped in a loop."""
        if not self._start(context):
            return {"CANCELLED"}
        assert self._controller is not None
        while (outcome := self._pump(context)) is None:
            time.sleep(TIMER_S)
        return self._report(outcome)


def _over_3d_view(context: bpy.types.Context, event: bpy.types.Event) -> bool:
    screen = getattr(context, "screen", None)
    if screen is None:
        return False
    return any(area.type == "VIEW_3D" and area.x <= event.mouse_x < area.x + area.width
               and area.y <= event.mouse_y < area.y + area.height for area in screen.areas)


def _redraw_panels(context: bpy.types.Context) -> None:
    screen = getattr(context, "screen", None)
    if screen is None:
        return
    for area in screen.areas:
        if area.type == "VIEW_3D":
            area.tag_redraw()


classes = (MICROEXP_OT_run_job,)
