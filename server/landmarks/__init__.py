"""Facial landmarks: MediaPipe's 478-point mesh tracked through a clip, and 68 iBUG points (FAN or a fixed map)."""

from server.landmarks.mapping import MP_TO_68, mp_to_68
from server.landmarks.mediapipe_tracker import MediaPipeTracker, TrackResult, assemble_track, fill_missing

__all__ = ["MP_TO_68", "mp_to_68", "MediaPipeTracker", "TrackResult", "assemble_track", "fill_missing"]
