"""User-facing errors.

A :class:`GlusError` is a problem with the user's input (a file, a flag, a checkpoint): the CLI prints its
message on one line, without a traceback, and exits with status 2. Messages name the file and the problem.
"""

from __future__ import annotations

from pathlib import Path


class GlusError(Exception):
    """An error caused by user input; its message is one line naming the file (if any) and the problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{path}: {message}" if path is not None else message)
