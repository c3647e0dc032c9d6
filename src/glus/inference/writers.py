"""Write predicted masks to disk: per-frame PNGs, COCO-RLE JSON, ``expressions.json``.

Layouts:

* dataset runs (the benchmarks' submission layout): ``<out>/<video>/<exp_id>/<frame>.png``;
* ``glus segment`` on one video: ``<out>/<i>/<frame>.png`` for the ``i``-th expression, plus
  ``<out>/expressions.json`` mapping ``"<i>"`` to the expression text.

PNGs are 8-bit single-channel with values 0 (background) and 255 (object), what the MeViS and Ref-YouTube-VOS
servers expect. Every file is written atomically (a temporary file in the same folder, then ``os.replace``),
so an interrupted run leaves either the old file or the complete new one, never a truncated file. Files are not
fsync'ed: atomicity covers crashes of the process, not power loss, which keeps thousands of small writes cheap.

Resumable dataset runs: :func:`write_expression_masks` writes all PNGs of one expression and then an atomic
``.done`` marker listing the frame names. :func:`is_expression_done` is true only when that marker exists, lists
exactly the requested frames, and every PNG is present, so a rerun skips finished expressions and redoes
partial ones (including ones finished with a different frame selection). The marker is a hidden file inside the
expression folder; submission tools should take ``*.png`` only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from glus.data.masks import encode_rle, write_mask_png
from glus.errors import GLUSError
from glus.fileio import FILE_MODE, atomic_write_bytes, atomic_write_json, read_json

logger = logging.getLogger(__name__)

DONE_MARKER = ".done"


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) if needed and check that files can be created in it.

    Call this before any expensive work so that a bad output folder fails in a second, not after an hour.

    Raises:
        GLUSError: the path is a file, cannot be created, or is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GLUSError("output path exists and is not a folder", path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GLUSError(f"cannot create output folder ({exc.strerror or exc})", path) from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".glus-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise GLUSError(f"output folder is not writable ({exc.strerror or exc})", path) from None
    return path


def publish_folder(stage: str | Path, out: str | Path) -> None:
    """Move every entry of the finished ``stage`` folder into ``out`` (same file system), replacing what is there.

    Files move with one ``os.replace`` each; a folder that exists is first renamed aside and removed only after
    the new one is in place, so each entry is either the old one or the new one, never a mix.
    """
    stage, out = Path(stage), Path(out)
    for entry in sorted(stage.iterdir()):
        target = out / entry.name
        if entry.is_dir() and target.is_dir():
            old = Path(tempfile.mkdtemp(dir=out, prefix=f".{entry.name}.old-"))
            os.replace(target, old / entry.name)
            os.replace(entry, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(entry, target)


# ---- PNG masks (encoded by glus.data.masks.write_mask_png: 8-bit 0/255, atomic) -----------------------------
def expression_dir(out_dir: str | Path, video: str, exp_id: str | int) -> Path:
    """``<out>/<video>/<exp_id>``: the benchmark layout of one expression's PNGs."""
    return Path(out_dir) / str(video) / str(exp_id)


def segment_dir(out_dir: str | Path, index: int) -> Path:
    """``<out>/<i>``: the PNG folder of the ``index``-th expression of ``glus segment``."""
    return Path(out_dir) / str(index)


def is_expression_done(exp_dir: str | Path, frame_names: Sequence[str]) -> bool:
    """True when ``exp_dir`` holds a complete, finished set of PNGs for exactly ``frame_names``."""
    exp_dir = Path(exp_dir)
    try:
        recorded = read_json(exp_dir / DONE_MARKER, "done marker")
    except GLUSError:  # missing, or cut short by a crash: not done
        return False
    if not isinstance(recorded, dict) or recorded.get("frames") != list(frame_names):
        return False
    return all((exp_dir / f"{name}.png").is_file() for name in frame_names)


def write_expression_masks(exp_dir: str | Path, frame_names: Sequence[str], masks: Iterable[Any]) -> int:
    """Write ``<exp_dir>/<frame>.png`` for every frame, then mark the expression done.

    Masks are consumed one at a time (a generator works: the whole video is never held in memory). Any
    previous marker is removed first, so an interrupted call leaves the expression "not done".

    Args:
        exp_dir: the expression's folder (created if missing).
        frame_names: one name per mask, in order.
        masks: iterable of ``(H, W)`` masks (non-zero = object), as many as ``frame_names``, all of one size.

    Returns:
        The number of PNGs written.
    """
    exp_dir = Path(exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / DONE_MARKER).unlink(missing_ok=True)
    names = list(frame_names)
    shape: tuple[int, ...] | None = None
    count = 0
    for mask in masks:
        if count >= len(names):
            raise ValueError(f"{exp_dir}: more masks than the {len(names)} frame names")
        array = np.asarray(mask)
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            raise ValueError(f"{exp_dir}: mask for frame {names[count]} has shape {array.shape}, "
                             f"earlier masks {shape}")
        write_mask_png(exp_dir / f"{names[count]}.png", array)
        count += 1
    if count != len(names):
        raise ValueError(f"{exp_dir}: got {count} masks for {len(names)} frame names")
    atomic_write_json(exp_dir / DONE_MARKER, {"frames": names})
    return count


class PngMaskSink:
    """A :class:`~glus.inference.results.MaskSink` writing each prediction as a PNG the moment it arrives.

    Frames may arrive in any order (key-frame passes run backwards); an expression's ``.done`` marker is
    written once all its frames are on disk, so an interrupted run leaves it "not done" and a rerun redoes it.

    Args:
        exp_dirs: the folder of each expression (index = expression index).
        frame_names: the video's frame names (PNG names), one per frame index.
        on_done: optional callback ``(expression_index)`` after an expression's marker is written.
    """

    def __init__(self, exp_dirs: Sequence[str | Path], frame_names: Sequence[str],
                 on_done: Callable[[int], None] | None = None) -> None:
        self.exp_dirs = [Path(d) for d in exp_dirs]
        self.frame_names = list(frame_names)
        self.on_done = on_done
        self._written: list[set[int]] = [set() for _ in self.exp_dirs]
        for d in self.exp_dirs:
            d.mkdir(parents=True, exist_ok=True)
            (d / DONE_MARKER).unlink(missing_ok=True)

    def put(self, expression_index: int, frame_index: int, prediction: Any) -> None:
        exp_dir = self.exp_dirs[expression_index]
        write_mask_png(exp_dir / f"{self.frame_names[frame_index]}.png", prediction.mask)
        written = self._written[expression_index]
        written.add(frame_index)
        if len(written) == len(self.frame_names):
            atomic_write_json(exp_dir / DONE_MARKER, {"frames": self.frame_names})
            if self.on_done is not None:
                self.on_done(expression_index)

    def done(self, expression_index: int) -> bool:
        return len(self._written[expression_index]) == len(self.frame_names)


# ---- COCO RLE (encoded by glus.data.masks.encode_rle) ------------------------------------------------------
def _is_rle(value: Any) -> bool:
    return isinstance(value, Mapping) and "counts" in value and "size" in value


def write_rle_json(path: str | Path, results: Mapping[str, Mapping[str, Any]]) -> None:
    """Write ``{"<exp>": {"<frame>": rle}}`` atomically.

    Args:
        path: the JSON file to write.
        results: per expression, per frame name, either an ``(H, W)`` mask (non-zero = object) or an RLE
            from :func:`glus.data.masks.encode_rle`.
    """
    out: dict[str, dict[str, Any]] = {}
    for exp, frames in results.items():
        out[str(exp)] = {str(name): (dict(value) if _is_rle(value) else encode_rle(value))
                         for name, value in frames.items()}
    atomic_write_json(path, out)


def write_expressions_json(path: str | Path, expressions: Sequence[str] | Mapping[str, Any]) -> None:
    """Write the expression texts atomically: a list becomes ``{"0": text0, "1": text1, ...}``.

    The keys are the names of the mask folders (``<out>/<i>/``), so the JSON says which folder holds which
    expression. A mapping (e.g. ``{video: {exp_id: text}}``) is written as given.
    """
    if isinstance(expressions, Mapping):
        data: Mapping[str, Any] = {str(k): v for k, v in expressions.items()}
    elif isinstance(expressions, str):
        raise TypeError("expressions must be a sequence of strings, not one string")
    else:
        data = {str(i): str(text) for i, text in enumerate(expressions)}
    atomic_write_json(path, data, indent=2)


__all__ = [
    "DONE_MARKER", "FILE_MODE", "PngMaskSink", "atomic_write_bytes", "atomic_write_json", "ensure_writable_dir", "expression_dir",
    "is_expression_done", "publish_folder", "segment_dir", "write_expression_masks", "write_expressions_json", "write_rle_json",
]
