"""The MicroExp sidebar panel in the 3D View: clip, settings, Reconstruct, progress and Cancel."""

from __future__ import annotations

import bpy
from bpy.types import Panel

from ..preferences import server_settings


class MICROEXP_PT_reconstruct(Panel):
    bl_label = "Micro-expressions"
    bl_idname = "MICROEXP_PT_reconstruct"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MicroExp"

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = context.scene.microexp
        state = context.window_manager.microexp_job
        col = layout.column()
        col.enabled = not state.running
        col.prop(settings, "clip")
        col.prop(settings, "use_frame_range")
        if settings.use_frame_range:
            row = col.row(align=True)
            row.prop(settings, "frame_first")
            row.prop(settings, "frame_last")
        col.prop(settings, "flow")
        col.prop(settings, "stages")
        if settings.stages == "full":
            col.prop(settings, "checkpoint")
        col.prop(settings, "frame_start")
        col.prop(settings, "target", expand=True)
        if settings.target == "UPDATE":
            col.prop(settings, "target_root")
        if state.running:
            layout.progress(factor=state.progress, type="BAR", text=state.text or state.stage)
            layout.operator("microexp.cancel_job", icon="CANCEL")
        else:
            layout.operator("microexp.run_job", icon="PLAY")
            if state.last_message:
                layout.label(text=state.last_message)
        srv = server_settings(context)
        if not srv.python or not srv.server_dir:
            layout.label(text="Set the server in the add-on's preferences.", icon="ERROR")
        layout.separator()
        layout.operator("microexp.import_take", icon="IMPORT")


classes = (MICROEXP_PT_reconstruct,)
