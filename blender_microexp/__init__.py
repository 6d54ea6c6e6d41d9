"""blender_microexp: video of a face to an editable facial animation rig (the Blender extension).

bpy is imported only inside register()/unregister() so that ``blender_microexp.core`` imports
anywhere (the server and the tests use it without Blender). Relative imports only: an installed
extension is the package ``bl_ext.<repo>.blender_microexp``.
"""

from __future__ import annotations

from typing import Any

_classes: tuple[Any, ...] = ()


def _all_classes() -> tuple[Any, ...]:
    from . import preferences, properties
    from .operators import cancel_job, check_server, import_take, run_job
    from .ui import panel

    return (*properties.classes, *preferences.classes, *run_job.classes, *cancel_job.classes,
            *import_take.classes, *check_server.classes, *panel.classes)


def _on_load_pre(*_args: Any) -> None:
    """Another .blend is loading: its window manager replaces ours, so stop every running job now."""
    from .core import runner

    runner.shutdown_all()


def register() -> None:
    global _classes
    import bpy

    from . import properties
    from .operators import import_take

    _classes = _all_classes()
    for cls in _classes:
        bpy.utils.register_class(cls)
    properties.register_properties()
    bpy.types.TOPBAR_MT_file_import.append(import_take.menu_import)
    handler = bpy.app.handlers.persistent(_on_load_pre)
    bpy.app.handlers.load_pre.append(handler)


def unregister() -> None:
    global _classes
    import bpy

    from . import properties
    from .core import runner
    from .operators import import_take

    # Disabling the add-on must not leave a server running with nobody listening.
    runner.shutdown_all()
    for handler in list(bpy.app.handlers.load_pre):
        if getattr(handler, "__name__", "") == _on_load_pre.__name__ and \
                getattr(handler, "__module__", "") == __name__:
            bpy.app.handlers.load_pre.remove(handler)
    bpy.types.TOPBAR_MT_file_import.remove(import_take.menu_import)
    properties.unregister_properties()
    for cls in reversed(_classes):
        bpy.utils.unregister_class(cls)
    _classes = ()
