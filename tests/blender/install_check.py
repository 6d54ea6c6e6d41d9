"""Installs the built extension zip into a scratch user folder and checks it is enabled and works.

Run in a fresh interpreter: BLENDER_USER_RESOURCES must be set before bpy is imported.
Usage: BLENDER_USER_RESOURCES=<tmp> python tests/blender/install_check.py <zip>
"""

from __future__ import annotations

import sys

import bpy


def main(zip_path: str) -> int:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    module = "bl_ext.user_default.blender_microexp"
    assert result == {"FINISHED"}, result
    assert module in bpy.context.preferences.addons, "the extension is installed but not enabled"
    assert "run_job" in dir(bpy.ops.microexp) and hasattr(bpy.types.Scene, "microexp")
    prefs = bpy.context.preferences.addons[module].preferences
    assert prefs.head_model == "BUILTIN"  # preferences found by __package__ under bl_ext
    installed = sys.modules[module]
    assert "/extensions/user_default/blender_microexp/" in str(installed.__file__).replace("\\", "/")
    print(f"OK {module} on bpy {bpy.app.version_string}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
