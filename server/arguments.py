"""Argument types shared by the command-line tools (argparse refuses a bad value before any work)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(minimum: int) -> Callable[[str], int]:
    """argparse type: a whole number of `minimum` or more; anything else is refused in one line."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number of {minimum} or more, not {text!r}")
        return value

    return parse


def positive_fps(text: str) -> float:
    """argparse type for --fps: a positive, finite number of frames per second."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of frames per second, not {text!r}")
    return value
