"""Add-on preferences: the server's folder and interpreter, the head model and the cache folder."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy.types import AddonPreferences

from .core import jobs

PACKAGE_DIR = Path(__file__).resolve().parent


class MICROEXP_AP_preferences(AddonPreferences):
    bl_idname = __package__  # installed extensions load as bl_ext.<repo>.blender_microexp

    server_dir: StringProperty(  # type: ignore[valid-type]
        name="Server Folder", subtype="DIR_PATH",
        description="The blender_microexp checkout that contains server/ (empty: found next to the add-on)")
    server_python: StringProperty(  # type: ignore[valid-type]
        name="Server Python", subtype="FILE_PATH",
        description="The interpreter with torch that runs the server (empty: the server folder's .venv)")
    head_model: EnumProperty(  # type: ignore[valid-type]
        name="Head Model",
        items=[("BUILTIN", "Built-in", "The project's own FLAME-format head (no download, no licence)"),
               ("FLAME", "FLAME Files", "Your own FLAME 2020 / 2023 Open files")],
        default="BUILTIN")
    flame_dir: StringProperty(  # type: ignore[valid-type]
        name="FLAME Folder", subtype="DIR_PATH",
        description="Holds generic_model.pkl or flame2023_Open.pkl, landmark_embedding.npy and "
                    "mediapipe_landmark_embedding.npz")
    cache_dir: StringProperty(  # type: ignore[valid-type]
        name="Cache Folder", subtype="DIR_PATH", description="Where job folders and takes go (empty: per-user cache)")
    server_status: StringProperty(default="")  # type: ignore[valid-type]

    def draw(self, context: bpy.types.Context) -> None:
        layout = self.layout
        settings = server_settings(context)
        col = layout.column()
        col.prop(self, "server_dir")
        if not self.server_dir:
            col.label(text=f"Auto: {settings.server_dir or 'not found next to the add-on'}", icon="INFO")
        col.prop(self, "server_python")
        if not self.server_python:
            col.label(text=f"Auto: {settings.python or 'no .venv in the server folder'}", icon="INFO")
        row = col.row()
        row.operator("microexp.check_server", icon="PLUGIN")
        if self.server_status:
            col.label(text=self.server_status)
        col.separator()
        col.prop(self, "head_model", expand=True)
        if self.head_model == "FLAME":
            col.prop(self, "flame_dir")
            problem = jobs.flame_folder_problem(bpy.path.abspath(self.flame_dir))
            col.label(text=problem or "FLAME files found.", icon="ERROR" if problem else "CHECKMARK")
        col.separator()
        col.prop(self, "cache_dir")
        if not self.cache_dir:
            col.label(text=f"Auto: {jobs.default_cache_dir()}", icon="INFO")


@dataclass
class ServerSettings:
    """The preferences with every default resolved."""

    server_dir: str
    python: str
    model: str
    cache_dir: str
    model_problem: str | None


def addon_preferences(context: Any) -> Any:
    """This add-on's preferences, or None when it was registered without Blender's add-on manager."""
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def server_settings(context: Any) -> ServerSettings:
    prefs = addon_preferences(context)
    server_dir = bpy.path.abspath(prefs.server_dir) if prefs and prefs.server_dir else ""
    if not server_dir:
        found = jobs.find_server_dir(PACKAGE_DIR)
        server_dir = str(found) if found else ""
    python = bpy.path.abspath(prefs.server_python) if prefs and prefs.server_python else ""
    if not python:
        found_py = jobs.default_server_python(server_dir) if server_dir else None
        python = str(found_py) if found_py else ""
    model, problem = "builtin", None
    if prefs is not None and prefs.head_model == "FLAME":
        model = bpy.path.abspath(prefs.flame_dir)
        problem = jobs.flame_folder_problem(model)
    cache = bpy.path.abspath(prefs.cache_dir) if prefs and prefs.cache_dir else str(jobs.default_cache_dir())
    return ServerSettings(server_dir=server_dir, python=python, model=model, cache_dir=cache, model_problem=problem)


def python_hint() -> str:
    return r".venv\Scripts\python.exe" if sys.platform == "win32" else ".venv/bin/python"


classes = (MICROEXP_AP_preferences,)
