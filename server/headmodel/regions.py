"""The eight facial regions of the paper (§IV-B) as per-vertex labels: names and label constants."""

from __future__ import annotations

REGION_NAMES: tuple[str, ...] = (
    "left_eye",
    "right_eye",
    "nose",
    "mouth",
    "left_cheek",
    "right_cheek",
    "forehead",
    "chin",
)
"""Label k (1..8) of a vertex names REGION_NAMES[k - 1]; label 0 means no region. "Left" is the subject's left."""

NO_REGION = 0


def region_label(name: str) -> int:
    """The integer label (1..8) of a region name."""
    return REGION_NAMES.index(name) + 1
