"""Binary masks on disk and in annotation files: COCO RLE (through pycocotools) and 8-bit / palette PNGs.

Conventions shared by every function here:

* a mask is a ``bool`` array of shape ``(H, W)``;
* an RLE is a COCO dict ``{"size": [H, W], "counts": ...}`` whose counts are a compressed string (``str`` as
  JSON stores it, ``bytes`` as pycocotools returns it and pickles keep it) or an uncompressed list of run
  lengths (YouTube-VIS style);
* a "where" string (``"mask_dict.json: annotation '3', frame 12"``) is put at the front of error messages so
  that a :class:`~glus.errors.GLUSError` names the file and the entry that is wrong.

Written PNGs are 8-bit grayscale with values 0 / 255 (the submission format of MeViS and Ref-YouTube-VOS) and
appear atomically: the image goes to a temporary file in the destination folder first, then ``os.replace``.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as cocomask

from glus.errors import GLUSError
from glus.fileio import atomic_write_bytes

# pycocotools (<= 2.0.11) builds its output with numpy's pre-2.0 ``copy=False`` protocol and numpy 2 warns
# on every decode; the result is correct, so that one message is silenced.
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                        category=DeprecationWarning, module="pycocotools")

__all__ = ["decode_rle", "decode_rle_stack", "encode_rle", "rle_size", "read_mask_png", "write_mask_png"]


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def rle_size(rle: Any, where: str = "") -> tuple[int, int]:
    """Return ``(H, W)`` of a COCO RLE dict after checking its shape; raise :class:`GLUSError` if malformed."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise GLUSError(f"{_prefix(where)}expected a COCO RLE object with 'size' and 'counts', got "
                        f"{type(rle).__name__}")
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)):
        raise GLUSError(f"{_prefix(where)}RLE 'size' must be [height, width] of non-negative integers, "
                        f"got {size!r}")
    return int(size[0]), int(size[1])


def decode_rle(rle: dict | Sequence[dict], expected_hw: tuple[int, int] | None = None,
               where: str = "") -> np.ndarray:
    """Decode one COCO RLE (or the union of a list of them) into a ``bool`` mask of shape ``(H, W)``.

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes | list[int]}``; a list of such dicts (several
            polygons / parts of one object, as some VIS files store a frame) decodes to their union.
        expected_hw: the frame size ``(H, W)``; an RLE of another size raises :class:`GLUSError`.
        where: file and entry, put at the front of error messages.

    Returns:
        ``(H, W)`` bool array (C-contiguous).
    """
    if isinstance(rle, (list, tuple)) and not isinstance(rle, dict):
        if not rle:
            if expected_hw is None:
                raise GLUSError(f"{_prefix(where)}empty RLE list and no frame size to build an empty mask")
            return np.zeros(expected_hw, dtype=bool)
        out = None
        for part in rle:
            m = decode_rle(part, expected_hw, where)
            if out is None:
                out = m.copy()
            elif m.shape != out.shape:
                raise GLUSError(f"{_prefix(where)}RLE parts of one mask disagree in size: {out.shape} vs {m.shape}")
            else:
                out |= m
        return out
    h, w = rle_size(rle, where)
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise GLUSError(f"{_prefix(where)}RLE size {h}x{w} disagrees with the frame size "
                        f"{expected_hw[0]}x{expected_hw[1]} (height x width)")
    counts = rle["counts"]
    try:
        if isinstance(counts, list):
            # Uncompressed run lengths: they must add up to H*W, which pycocotools does not check.
            if sum(counts) != h * w or any((not isinstance(c, int)) or c < 0 for c in counts):
                raise GLUSError(f"{_prefix(where)}uncompressed RLE counts do not cover {h}x{w} pixels")
            coco = cocomask.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        elif isinstance(counts, str):
            coco = {"size": [h, w], "counts": counts.encode("ascii")}
        elif isinstance(counts, bytes):
            coco = {"size": [h, w], "counts": counts}
        else:
            raise GLUSError(f"{_prefix(where)}RLE 'counts' must be a string, bytes or a list of integers, got "
                            f"{type(counts).__name__}")
        mask = cocomask.decode(coco)
    except GLUSError:
        raise
    except (UnicodeEncodeError, ValueError, TypeError, OverflowError) as exc:
        raise GLUSError(f"{_prefix(where)}cannot decode RLE: {exc}") from None
    if mask.shape != (h, w):
        raise GLUSError(f"{_prefix(where)}RLE decodes to {mask.shape}, not its declared size {h}x{w}")
    return np.ascontiguousarray(mask.astype(bool))


def decode_rle_stack(rles: Sequence[dict | None], expected_hw: tuple[int, int], where: str = "") -> np.ndarray:
    """Decode several RLEs (``None`` = empty) of one frame into a ``(N, H, W)`` bool stack."""
    out = np.zeros((len(rles), *expected_hw), dtype=bool)
    for i, rle in enumerate(rles):
        if rle is not None:
            out[i] = decode_rle(rle, expected_hw, where)
    return out


def encode_rle(mask: np.ndarray) -> dict:
    """Encode a ``(H, W)`` mask (any dtype; non-zero = foreground) as ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a (H, W) mask, got shape {mask.shape}")
    rle = cocomask.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def read_mask_png(path: str | Path, *, indices: bool = False,
                  expected_hw: tuple[int, int] | None = None, where: str = "") -> np.ndarray:
    """Read a single-channel PNG mask.

    Args:
        path: an 8-bit grayscale (``L``), 1-bit or palette (``P``) PNG.
        indices: return the raw ``(H, W)`` ``uint8`` values (palette indices = object ids in DAVIS /
            YouTube-VOS annotations) instead of the ``bool`` foreground ``value > 0``.
        expected_hw: the frame size ``(H, W)``; a PNG of another size raises :class:`GLUSError`.
        where: entry described in error messages (the file name itself is always included).

    Returns:
        ``(H, W)`` ``bool`` (default) or ``uint8`` (``indices=True``).
    """
    path = Path(path)
    what = f" ({where})" if where else ""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "1", "I;16", "I"):
                raise GLUSError(f"expected a single-channel (palette or grayscale) mask PNG, got mode "
                                f"{im.mode}{what}", path)
            arr = np.array(im)
    except FileNotFoundError:
        raise GLUSError(f"mask PNG not found{what}", path) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise GLUSError(f"cannot read mask PNG{what}: {exc}", path) from None
    if expected_hw is not None and arr.shape != tuple(expected_hw):
        raise GLUSError(f"mask size {arr.shape[0]}x{arr.shape[1]} disagrees with the frame size "
                        f"{expected_hw[0]}x{expected_hw[1]} (height x width){what}", path)
    if indices:
        if arr.dtype != np.uint8:
            if arr.dtype == bool:
                return arr.astype(np.uint8)
            if arr.max(initial=0) > 255:
                raise GLUSError(f"mask values exceed 255; object ids must be 8-bit{what}", path)
            return arr.astype(np.uint8)
        return arr
    return arr > 0


def write_mask_png(path: str | Path, mask: np.ndarray) -> None:
    """Write a ``(H, W)`` mask (non-zero = foreground) as an 8-bit grayscale 0/255 PNG, atomically.

    Parent folders are created. The PNG is written to a temporary file beside ``path`` and moved into place
    with ``os.replace``, so a reader never sees a half-written file.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"write_mask_png expects a (H, W) mask, got shape {mask.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.where(mask != 0, 255, 0).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
