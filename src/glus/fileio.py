"""Atomic file writes shared by every layer (masks, predictions, results, checkpoints).

A file is written to a temporary file in the same folder and moved into place with ``os.replace``, so an
interrupted run leaves either the old file or the complete new one, never a truncated file. Files are not
fsync'ed: atomicity covers crashes of the process, not power loss, which keeps thousands of small writes cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from glus.errors import GLUSError


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files with mode 0600; outputs get the usual 0666 & ~umask instead, like open() would give.
FILE_MODE = 0o666 & ~_current_umask()


def usual_permissions(folder: str | Path) -> None:
    """Give a written tree the modes ``mkdir`` / ``open`` would give: temporary files and folders are created
    owner-only by ``mkstemp`` / ``mkdtemp``, here and inside the libraries that write files (transformers)."""
    folder = Path(folder)
    dir_mode = FILE_MODE | ((FILE_MODE & 0o444) >> 2)  # x wherever r is granted
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, dir_mode if path.is_dir() else FILE_MODE)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it replaces ``path``, on error it is removed.

    For libraries that write to a path themselves (safetensors, PyAV, Pillow).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename != tmp:
            raise
        # A refused write of the temporary file (a full disk) is the file the caller asked for to the user.
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = None) -> None:
    """Serialise ``obj`` as UTF-8 JSON and write it atomically (non-ASCII text is kept readable)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def read_json(path: str | Path, what: str = "JSON file", *, unreadable: str | None = None) -> Any:
    """Load a whole (small) JSON file; a missing file or invalid JSON is a one-line :class:`GLUSError`.

    Args:
        what: what the file is, for the messages (``"config.json"``, ``"key-frame file"``).
        unreadable: the message for a file that is there but not readable JSON, with ``{detail}`` for what is wrong
            (default: the detail alone, e.g. ``invalid JSON at line 1 column 2: ...``).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise GLUSError(f"{what} not found", path) from None
    except IsADirectoryError:
        detail = f"{what} is a folder, not a JSON file"
    except json.JSONDecodeError as exc:
        detail = f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    except UnicodeDecodeError as exc:
        detail = f"invalid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except OSError as exc:
        detail = f"cannot read the {what} ({exc.strerror or exc})"
    raise GLUSError(detail if unreadable is None else unreadable.replace("{detail}", detail), path)


def read_json_object(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """:func:`read_json` for files that must hold a JSON object."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise GLUSError(f"{what}: expected a JSON object", path)
    return data
