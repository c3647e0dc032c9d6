"""The small example split packaged with glus (``glus/assets/example``: real SA-V masks, see its README).

The keyword ``example`` names it where a split folder (``valid_u``) or a prediction folder (``pred``) is asked for,
so ``glus evaluate`` runs offline from a fresh install. A folder that really is called ``example`` in the working
directory wins.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from glus.errors import GLUSError

logger = logging.getLogger(__name__)

__all__ = ["EXAMPLE", "example_dir", "resolve_input"]

#: The keyword that names the packaged example split or its predictions.
EXAMPLE = "example"


def example_dir() -> Path:
    """Folder of the packaged example (``valid_u/`` = a MeViS-format split, ``pred/`` = predictions)."""
    return Path(str(resources.files("glus").joinpath("assets", "example")))


def resolve_input(value: str | Path, part: str) -> Path:
    """A user path, or the packaged example's ``part`` (``"valid_u"`` / ``"pred"``) for the keyword ``example``."""
    path = Path(value)
    if str(value) == EXAMPLE and not path.exists():
        packaged = example_dir() / part
        if not packaged.is_dir():
            raise GLUSError("the packaged example is missing (reinstall glus)", packaged)
        logger.info("using the packaged example %s: %s", part, packaged)
        return packaged
    return path
