"""Read predicted mask PNGs as the official evaluators do (``cv2.imread(path, cv2.IMREAD_GRAYSCALE)``), fast.

Evaluation reads one PNG per expression and frame, and OpenCV's decoder (libpng on zlib) is the slowest step
of the whole metric. The masks written by mask writers (OpenCV, glus) are 8-bit grayscale, non-interlaced
PNGs whose rows use the "None" or "Sub" filter; for those the decoded bytes are fully determined by the
DEFLATE stream, so :func:`decode_mask_png` inflates it with libdeflate (the ``deflate`` package) and undoes
the row filters with numpy on the rows and columns that hold anything, returning a :class:`BoxMask`. Every
other PNG (palette, 16-bit, alpha, interlaced, "Up" / "Average" / "Paeth" rows, colour-management chunks) and
every file that is not a well-formed PNG goes to ``cv2.imdecode(..., IMREAD_GRAYSCALE)``, so the result is
always what the official code would have read. ``tests/test_metrics.py`` holds the two paths equal.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import deflate
import numpy as np

from glus.eval.metrics import BoxMask

__all__ = ["PredictionError", "decode_mask_png", "read_mask_prediction"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that do not change the decoded gray values; anything else (gAMA, sBIT, tRNS, iCCP, ...) sends the
# file to OpenCV, which knows what it does with them.
_NEUTRAL_CHUNKS = {b"IHDR", b"IDAT", b"IEND", b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"}
_CRITICAL = {b"IHDR", b"IDAT", b"IEND"}


class PredictionError(Exception):
    """A predicted mask that cannot be used; ``reason`` is a short phrase for the result's ``missing`` list."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _row_prefix_sums(rows: np.ndarray) -> np.ndarray:
    """Running sums (mod 256) along each row of a uint8 ``(h, w)`` array.

    Accumulating along axis 0 of the transposed copy adds whole contiguous rows at a time, which numpy
    vectorises; ``cumsum(axis=1)`` walks byte by byte and is twice as slow.
    """
    columns = np.ascontiguousarray(rows.T)
    np.add.accumulate(columns, axis=0, out=columns)
    return columns.T


def _fast_gray8(data: bytes) -> BoxMask | None:
    """Decode an 8-bit grayscale None/Sub-filtered PNG; ``None`` when the file needs the general decoder."""
    if not data.startswith(_SIGNATURE) or len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height, depth, color, compression, filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if (depth, color, compression, filt, interlace) != (8, 0, 0, 0, 0) or width == 0 or height == 0:
        return None
    idat = []
    previous = b""
    pos = 8
    end = len(data)
    while pos + 8 <= end:
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind not in _NEUTRAL_CHUNKS or pos + 12 + length > end:
            return None
        if kind in _CRITICAL and deflate.crc32(data[pos + 4:pos + 8 + length]) != struct.unpack(
                ">I", data[pos + 8 + length:pos + 12 + length])[0]:
            return None  # libpng rejects a critical chunk with a bad CRC: leave the verdict to OpenCV
        if kind == b"IDAT":
            if idat and previous != b"IDAT":
                return None  # IDAT chunks must be consecutive; libpng refuses the file otherwise
            idat.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        previous = kind
        pos += 12 + length
    else:
        return None  # no IEND: truncated; let OpenCV decide what it makes of it
    stride = width + 1
    try:
        raw = deflate.zlib_decompress(b"".join(idat), height * stride)
    except deflate.DeflateError:
        return None
    if len(raw) != height * stride:
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride)
    filters = rows[:, 0]
    if filters.max() > 1:
        return None
    body = rows[:, 1:]
    busy = np.flatnonzero(np.bitwise_or.reduce(body, axis=1))
    if busy.size == 0:
        return BoxMask.empty((height, width))
    r0, r1 = int(busy[0]), int(busy[-1]) + 1
    band = body[r0:r1]
    cols = np.flatnonzero(np.bitwise_or.reduce(band, axis=0))
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    values = band[:, c0:c1].copy()
    sub = filters[r0:r1] == 1
    if sub.any():
        # "Sub": each byte adds the decoded byte on its left (mod 256); bytes left of c0 are 0 in every row.
        values[sub] = _row_prefix_sums(values[sub])
        carry = values[sub, -1]
        if c1 < width and carry.any():
            # Right of the last non-zero filtered byte a Sub row repeats its last value up to the border.
            tail = np.zeros((r1 - r0, width - c1), np.uint8)
            tail[sub] = carry[:, None]
            values = np.concatenate([values, tail], axis=1)
    return BoxMask((height, width), r0, c0, values)


def decode_mask_png(data: bytes) -> BoxMask:
    """Decode PNG bytes to the gray values ``cv2.IMREAD_GRAYSCALE`` gives, as a :class:`BoxMask`.

    Raises:
        PredictionError: the bytes are not an image OpenCV can read.
    """
    box = _fast_gray8(data)
    if box is not None:
        return box
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise PredictionError("not a readable image")
    return BoxMask.from_dense(image)


def read_mask_prediction(path: str | Path) -> BoxMask:
    """Read one predicted mask PNG.

    Raises:
        PredictionError: the file is missing (``"missing <name>"``) or unreadable.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PredictionError(f"missing {path.name}") from None
    except OSError as exc:
        raise PredictionError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    try:
        return decode_mask_png(data)
    except PredictionError as exc:
        raise PredictionError(f"{path.name}: {exc.reason}") from None
