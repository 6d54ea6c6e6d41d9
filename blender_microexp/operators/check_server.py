"""Check server: run `<python> -m server hello` and report versions and device, or the problem."""

from __future__ import annotations

import bpy
from bpy.types import Operator

from ..core import jobs
from ..preferences import addon_preferences, server_settings


class MICROEXP_OT_check_server(Operator):
    """Start the server once and report what it runs with"""

    bl_idname = "microexp.check_server"
    bl_label = "Check Server"
    bl_options = {"REGISTER"}

    def execute(self, context: bpy.types.Context) -> set[str]:
        settings = server_settings(context)
        prefs = addon_preferences(context)
        try:
            hello = jobs.check_server(settings.python, settings.server_dir)
        except jobs.JobSetupError as exc:
            if prefs is not None:
                prefs.server_status = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        line = jobs.describe_hello(hello)
        if prefs is not None:
            prefs.server_status = line
        self.report({"INFO"}, line)
        return {"FINISHED"}


classes = (MICROEXP_OT_check_server,)
