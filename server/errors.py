"""Errors a user can cause, each carrying one sentence for them, and the cancellation signal."""

from __future__ import annotations


class MicroexpError(Exception):
    """Base for failures with a user-facing one-sentence message; `code` names the kind for the protocol
    (docs/protocol.md). One that names no more specific kind is the server's own failure."""

    code = "internal"


class ClipError(MicroexpError):
    """The clip is missing, unreadable, empty, or shows no face."""

    code = "clip"


class OutputError(MicroexpError):
    """The output folder cannot be created or written."""

    code = "output"


class InternalError(MicroexpError):
    """The server's own failure that it can still say in one sentence, e.g. a reconstruction that diverged to NaN."""

    code = "internal"


class Cancelled(Exception):
    """The job was cancelled (stdin message, SIGINT or SIGTERM); nothing is written after this."""
