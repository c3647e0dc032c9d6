"""Checks and conversions shared by the readers of ``meta_expressions``-style annotation files.

Every helper raises :class:`GLUSError` with a one-line message naming the file and the entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glus.data.records import describe
from glus.errors import GLUSError

IMAGE_EXT = ".jpg"


def videos_of(meta: Any, path: Path) -> dict[str, Any]:
    """The ``"videos"`` mapping of a meta_expressions file."""
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise GLUSError("expected a JSON object with a \"videos\" object", path)
    return meta["videos"]


def video_dict(vid: str, vdata: Any, path: Path) -> dict:
    if not isinstance(vdata, dict):
        raise GLUSError(f"video '{vid}': expected an object, got {describe(vdata)}", path)
    return vdata


def frame_order(vid: str, frames: Any, path: Path) -> tuple[list[str], list[int] | None]:
    """Sorted frame names of a video and, when the file lists them in another order, their file positions.

    Returns:
        ``(names, positions)``: ``names`` sorted as strings (what the official loaders do); ``positions[i]``
        is the index of ``names[i]`` in the file's list (the index into per-frame mask lists), ``None`` when
        the file order is already sorted.
    """
    if frames is None:
        raise GLUSError(f"video '{vid}' has no \"frames\" list", path)
    if not isinstance(frames, list) or not frames:
        raise GLUSError(f"video '{vid}': \"frames\" must be a non-empty list of frame names, got "
                        f"{describe(frames)}", path)
    names = []
    for f in frames:
        if isinstance(f, bool) or not isinstance(f, (str, int)) or str(f) == "":
            raise GLUSError(f"video '{vid}': bad frame name {describe(f)}", path)
        names.append(str(f))
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise GLUSError(f"video '{vid}': frame '{dup}' is listed twice", path)
    order = sorted(range(len(names)), key=names.__getitem__)
    if order == list(range(len(names))):
        return names, None
    return [names[i] for i in order], order


def id_list(value: Any, field: str, where: str, path: Path) -> tuple:
    """An ``obj_id`` / ``anno_id`` field: a list of ints or strings (a single id is accepted as a list of one)."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, (str, int)) and not isinstance(v, bool)
                                               for v in value):
        raise GLUSError(f"{where}: \"{field}\" must be a list of ids, got {describe(value)}", path)
    return tuple(value)


def text_of(edata: dict, field: str, where: str, path: Path) -> str:
    text = edata.get(field)
    if not isinstance(text, str):
        raise GLUSError(f"{where}: missing or non-string \"{field}\" (the expression text)", path)
    return text


def size_of(vdata: dict, vid: str, path: Path) -> tuple[int | None, int | None]:
    """Optional per-video ``height`` / ``width`` (both or neither)."""
    h, w = vdata.get("height"), vdata.get("width")
    if h is None and w is None:
        return None, None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        raise GLUSError(f"video '{vid}': \"height\" and \"width\" must be positive integers, got "
                        f"{describe(h)} and {describe(w)}", path)
    return h, w


def frame_paths(image_root: Path, vid: str, names: list[str], ext: str = IMAGE_EXT) -> list[Path]:
    folder = image_root / vid
    return [folder / f"{n}{ext}" for n in names]
