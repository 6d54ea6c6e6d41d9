"""Import a take (take.json) as an animated rig; also File > Import > Micro-expression take."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, IntProperty, StringProperty
from bpy.types import Operator
from bpy_extras.io_utils import ImportHelper

from ..blender import importer


class MICROEXP_OT_import_take(Operator, ImportHelper):
    """Import a micro-expression take as a head rig with shape keys and keyframes"""

    bl_idname = "microexp.import_take"
    bl_label = "Import Take"
    bl_options = {"REGISTER", "UNDO", "PRESET"}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})  # type: ignore[valid-type]
    frame_start: IntProperty(  # type: ignore[valid-type]
        name="Start Frame", description="Scene frame of the take's first frame", default=1, min=0)
    push_to_nla: BoolProperty(  # type: ignore[valid-type]
        name="Push to NLA", default=True,
        description="Put the take's action on an NLA track so other animation can be layered over it")

    def execute(self, context: bpy.types.Context) -> set[str]:
        try:
            result = importer.import_take(context, self.filepath, frame_start=self.frame_start,
                                          push_to_nla=self.push_to_nla)
        except importer.ImportTakeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for warning in result.warnings:
            self.report({"WARNING"}, warning)
        verb = "Updated" if result.replaced else "Imported"
        self.report({"INFO"}, f"{verb} {result.collection.name}.")
        return {"FINISHED"}


def menu_import(self: bpy.types.Menu, _context: bpy.types.Context) -> None:
    self.layout.operator(MICROEXP_OT_import_take.bl_idname, text="Micro-expression take (.json)")


classes = (MICROEXP_OT_import_take,)
