"""Cancel the running reconstruction (the run operator's timer does the stopping)."""

from __future__ import annotations

import bpy
from bpy.types import Operator


class MICROEXP_OT_cancel_job(Operator):
    """Stop the running reconstruction; nothing is imported"""

    bl_idname = "microexp.cancel_job"
    bl_label = "Cancel"
    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context: bpy.types.Context) -> bool:
        state = context.window_manager.microexp_job
        return bool(state.running and not state.cancel_requested)

    def execute(self, context: bpy.types.Context) -> set[str]:
        context.window_manager.microexp_job.cancel_requested = True
        return {"FINISHED"}


classes = (MICROEXP_OT_cancel_job,)
