"""User-facing errors.

A :class:`GLUSError` is a problem with the user's input (a file, a flag, a checkpoint): the CLI prints its
message on one line, without a traceback, and exits with status 2. Messages name the file and the problem.

A :class:`ParameterError` is one that names parameters of the library function it comes from (``max_batch must be
>= 1``); the command line rewrites those names as its flags (``--max-batch must be >= 1``), so library messages
never speak of flags the caller did not type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class GLUSError(Exception):
    """An error caused by user input; its message is one line naming the file (if any) and the problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class ParameterError(GLUSError):
    """A :class:`GLUSError` about the value of named parameters.

    ``template`` writes each parameter as a field, ``"{max_batch} must be >= 1, got 0"``; the message names it plainly
    (``max_batch must be >= 1, got 0``) and :meth:`named` gives the same error with the names a front end uses.
    Values shown in the message are put into the template already formatted (no other ``{name}`` fields).
    """

    def __init__(self, template: str, path: str | Path | None = None, names: Mapping[str, str] | None = None) -> None:
        self.template = template
        super().__init__(_fill(template, names or {}), path)

    def named(self, names: Mapping[str, str]) -> ParameterError:
        """This error with the parameters in ``names`` (``{"max_batch": "--max-batch"}``) called by those names."""
        return ParameterError(self.template, self.path, names)


def _fill(template: str, names: Mapping[str, str]) -> str:
    return _FIELD.sub(lambda m: names.get(m[1], m[1]), template)
