"""Errors a user can cause, each carrying one sentence for them, and the cancellation signal."""

from __future__ import annotations


class MicroexpError(Exception):
    """Base for failures with a user-facing one-sentence message; `code` names the kind for the protocol."""

    code = "error"


class ClipError(MicroexpError):
    """The clip is missing, unreadable, empty, or shows no face."""

    code = "clip"


class OutputError(MicroexpError):
    """The output folder cannot be created or written."""

    code = "output"


class Cancelled(Exception):
    """The job was cancelled (stdin message, SIGINT or SIGTERM); nothing is written after this."""
