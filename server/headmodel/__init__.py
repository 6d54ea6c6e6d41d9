"""FLAME-format head models: one torch layer (LBS, landmarks) over the user's FLAME files or the built-in head."""

from __future__ import annotations

from .builtin import build_builtin_head
from .data import HeadModelData, HeadModelError
from .flame import load_flame
from .layer import HeadModel, HeadOutput
from .loader import load_head_model
from .regions import REGION_NAMES

__all__ = [
    "HeadModelData",
    "HeadModel",
    "HeadOutput",
    "HeadModelError",
    "load_head_model",
    "REGION_NAMES",
    "build_builtin_head",
    "load_flame",
]
