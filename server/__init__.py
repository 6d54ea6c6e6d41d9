"""The blender_microexp reconstruction server: clip in, take out (run as `python -m server`)."""

__version__ = "0.1.0"
