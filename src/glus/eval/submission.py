"""``glus submit``: check a prediction folder against a split and write the zip an evaluation server expects.

Checks, for every expression and every frame of the split: the PNG exists, is 8-bit single-channel
grayscale, holds only the values 0 and 255, and has the size of the video's frames (when the split tells it;
otherwise all frames of a video must agree). Everything wrong is reported, and no zip is written until the
folder is complete. ``convert=True`` re-encodes readable masks of another kind (0/1 values, palette, 1- or
16-bit) as 8-bit 0/255 PNGs inside the zip instead of rejecting them; missing files and wrong sizes stay errors.

Zip layouts:

* MeViS (``valid``, CodaLab): ``<video>/<exp_id>/<frame>.png`` at the root of the zip;
* Ref-YouTube-VOS (``valid``, CodaLab): ``Annotations/<video>/<exp_id>/<frame>.png``.

Files in the folder that the split does not list (other videos, hidden files) are left out and counted.
The zip is written to a temporary file beside the destination and moved into place when complete.
"""

from __future__ import annotations

import logging
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from glus.data.formats import load_dataset
from glus.data.records import Dataset
from glus.errors import GLUSError
from glus.fileio import atomic_path
from glus.eval.predictions import PredictionError, decode_mask_png

logger = logging.getLogger(__name__)

__all__ = ["ZIP_PREFIX", "SubmissionCheck", "check_submission", "make_submission", "write_submission_zip"]

#: Folder inside the zip that the server expects the predictions under.
ZIP_PREFIX = {"mevis": "", "refytvos": "Annotations/"}


@dataclass
class SubmissionCheck:
    """Outcome of :func:`check_submission`.

    Attributes:
        files: ``(path on disk, name in the zip)`` for every frame, in split order.
        problems: one line per thing that is wrong (empty when the folder can be submitted).
        convert: names in the zip whose PNG must be re-encoded as 8-bit 0/255 (``convert=True`` only).
        extra: files under the prediction folder that the split does not list (left out).
        expressions: number of expressions checked.
    """

    files: list[tuple[Path, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    convert: set[str] = field(default_factory=set)
    extra: int = 0
    expressions: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def _png_kind(data: bytes) -> tuple[int, int] | None:
    """``(bit depth, colour type)`` from a PNG header, or None if the bytes are not a PNG."""
    if len(data) < 29 or not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        return None
    depth, color = struct.unpack(">BB", data[24:26])
    return depth, color


def _check_frame(path: Path, expected_hw: tuple[int, int] | None, convert: bool) -> tuple[str | None, bool,
                                                                                        tuple[int, int] | None]:
    """``(problem, needs conversion, size)`` of one predicted frame."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing", False, None
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})", False, None
    kind = _png_kind(data)
    if kind is None:
        return "not a PNG file", False, None
    try:
        box = decode_mask_png(data)
    except PredictionError as exc:
        return exc.reason, False, None
    if expected_hw is not None and box.shape != expected_hw:
        return (f"size {box.shape[1]}x{box.shape[0]}, expected {expected_hw[1]}x{expected_hw[0]} (width x height)",
                False, box.shape)
    problems = []
    if kind != (8, 0):
        depth, color = kind
        what = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}.get(color, f"type {color}")
        problems.append(f"{depth}-bit {what} PNG, expected 8-bit grayscale")
    bad = np.setdiff1d(np.unique(box.values), [0, 255]) if box.values.size else np.zeros(0)
    if bad.size:
        problems.append(f"values other than 0 and 255 (e.g. {int(bad[0])})")
    if problems and not convert:
        return "; ".join(problems), False, box.shape
    return None, bool(problems), box.shape


def check_submission(dataset: Dataset, pred_dir: str | Path, *, convert: bool = False,
                     progress: Callable[[int], None] | None = None) -> SubmissionCheck:
    """Check that ``pred_dir`` holds a valid mask for every expression and frame of ``dataset``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise GLUSError("prediction folder not found", pred_dir)
    check = SubmissionCheck()
    prefix = ZIP_PREFIX.get(dataset.name, "")
    listed: set[Path] = set()
    for video in dataset.videos.values():
        expected = dataset.frame_size(video.video_id)
        for expression in video.expressions.values():
            check.expressions += 1
            exp_dir = pred_dir / video.video_id / expression.exp_id
            where = f"{video.video_id}/{expression.exp_id}"
            if not exp_dir.is_dir():
                check.problems.append(f"{where}/: missing folder ({len(video.frame_names)} frames)")
                if progress:
                    progress(1)
                continue
            missing = []
            for name in video.frame_names:
                path = exp_dir / f"{name}.png"
                listed.add(path)
                problem, needs_conversion, size = _check_frame(path, expected, convert)
                if expected is None and size is not None:
                    expected = size  # no size in the split: the first frame of the video sets it
                if problem == "missing":
                    missing.append(name)
                elif problem is not None:
                    check.problems.append(f"{where}/{name}.png: {problem}")
                arcname = f"{prefix}{video.video_id}/{expression.exp_id}/{name}.png"
                check.files.append((path, arcname))
                if needs_conversion:
                    check.convert.add(arcname)
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                check.problems.append(f"{where}/: {len(missing)} of {len(video.frame_names)} frames missing "
                                      f"({shown})")
            if progress:
                progress(1)
    check.extra = sum(1 for p in pred_dir.rglob("*") if p.is_file() and p not in listed)
    return check


def _as_gray_0_255(path: Path) -> bytes:
    image = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise GLUSError("cannot read the mask PNG", path)
    if image.ndim == 3:
        image = image.max(axis=2)
    ok, encoded = cv2.imencode(".png", np.where(image != 0, 255, 0).astype(np.uint8))
    if not ok:
        raise GLUSError("cannot re-encode the mask PNG", path)
    return encoded.tobytes()


def write_submission_zip(check: SubmissionCheck, out_zip: str | Path) -> Path:
    """Write the checked files into ``out_zip`` (atomically). The check must have found no problem."""
    if not check.ok:
        raise GLUSError(f"{len(check.problems)} problems in the predictions; nothing written", out_zip)
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_zip) as tmp:
        # PNGs are compressed already: storing them keeps the zip as small and is much faster.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for path, arcname in check.files:
                if arcname in check.convert:
                    zf.writestr(arcname, _as_gray_0_255(path))
                else:
                    zf.write(path, arcname)
    return out_zip


def make_submission(dataset: str, split_dir: str | Path, pred_dir: str | Path, out_zip: str | Path, *,
                    split: str | None = None, convert: bool = False, progress: Callable[[int], None] | None = None,
                    on_start: Callable[[int], None] | None = None) -> SubmissionCheck:
    """Check ``pred_dir`` against a split and, when nothing is wrong, write the server's zip ``out_zip``.

    Args:
        dataset: ``mevis`` or ``refytvos`` (:data:`ZIP_PREFIX`); split_dir / split: as
            :func:`glus.data.formats.load_dataset` takes them.
        convert: re-encode readable masks of another kind (see the module docstring).
        progress: called with 1 per expression checked; on_start: called once with the number of expressions.

    Returns:
        The check; ``check.ok`` is False (and nothing was written) when the folder cannot be submitted.
    """
    split_data = load_dataset(dataset, split_dir, split)
    out_zip = Path(out_zip)
    if out_zip.suffix.lower() != ".zip":
        raise GLUSError("the output must be a .zip file", out_zip)
    if on_start is not None:
        on_start(split_data.num_expressions)
    check = check_submission(split_data, pred_dir, convert=convert, progress=progress)
    if check.ok:
        write_submission_zip(check, out_zip)
    return check
