"""Argument types shared by the command-line tools (argparse refuses a bad value before any work)."""

from __future__ import annotations

import argparse
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
