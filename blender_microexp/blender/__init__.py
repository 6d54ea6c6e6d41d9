"""Blender helpers without UI: the take importer, job control and the version compatibility layer."""
