"""Region similarity J and boundary accuracy F, computed exactly as the DAVIS 2017 toolkit (and therefore the
MeViS, VISA / GLUS and ReVOS evaluators) computes them, plus ReVOS's accuracy A and robustness R.

The official per-frame algorithm:

* J = |G ∩ P| / |G ∪ P| on ``value != 0`` masks; 1 when the union is empty.
* F: one-pixel boundary maps of both masks (``seg2bmap``: a pixel is boundary when it differs from its east,
  south or south-east neighbour; the last row compares east only, the last column south only, the bottom-right
  pixel never is), each dilated by a disk of radius ``ceil(0.008 * hypot(H, W))``
  (``skimage.morphology.disk``: ``x² + y² <= r²``); precision = matched predicted boundary pixels / predicted
  boundary pixels, recall likewise; both empty → P = R = 1, only the prediction empty → P = 1, R = 0, only the
  ground truth empty → P = 0, R = 1; F = 2PR / (P + R), 0 when P + R = 0.

Speed without changing a bit: both masks are zero outside the bounding box of their union, and so are the
boundary maps outside that box grown by one pixel up and left (``seg2bmap`` only looks east and south). Within
the box grown by one pixel on every side, the boundary maps, their disk dilations (``cv2.dilate`` with the same
footprint, constant border that never wins a max) and every count equal the full-frame ones, so all the work
happens on that small window. Masks travel as :class:`BoxMask` (frame size + the non-zero window), so neither
the PNG reader nor the ground-truth decoder has to build full frames. Ratios are formed from the same integers
in the same order as the official code, so every number is bit-identical.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "BOUND_TH", "BoxMask", "boundary_radius", "disk_footprint", "seg2bmap", "jaccard", "boundary_f",
    "frame_jf", "sequence_jf", "revos_accuracy", "revos_robustness", "revos_round",
]

#: Boundary tolerance as a fraction of the image diagonal (DAVIS ``bound_th``).
BOUND_TH = 0.008


@functools.lru_cache(maxsize=64)
def boundary_radius(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Disk radius of the boundary tolerance for an ``height x width`` frame.

    ``ceil(bound_th * ||(H, W)||)`` with ``np.linalg.norm``, the official expression, so a diagonal that lands
    within one ulp of an integer rounds the same way; ``bound_th >= 1`` is a radius in pixels, as in DAVIS.
    """
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


@functools.lru_cache(maxsize=64)
def disk_footprint(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` uint8 disk, 1 where ``x² + y² <= r²``: ``skimage.morphology.disk(r)`` (read-only)."""
    offsets = np.arange(-radius, radius + 1)
    disk = ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius * radius).astype(np.uint8)
    disk.setflags(write=False)
    return disk


_NEIGHBOURS = np.ones((2, 2), np.uint8)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of a 2-D mask (``value != 0``), the DAVIS ``seg2bmap`` at the mask's own size.

    Args:
        seg: ``(H, W)`` mask of any dtype.
    Returns:
        ``(H, W)`` bool: ``seg`` differs from its east, south or south-east neighbour; on the last row only
        the east neighbour counts, on the last column only the south one, and the bottom-right pixel is 0.

    That is: the maximum and the minimum of ``seg`` over the 2x2 block whose top-left corner is the pixel,
    clipped to the image, differ. OpenCV's dilation / erosion with a 2x2 kernel anchored at its top-left
    compute exactly those (their default border never wins), twice as fast as the shifted comparisons.
    """
    seg = np.asarray(seg)
    if seg.dtype == bool:
        seg = seg.view(np.uint8)
    elif seg.dtype != np.uint8 or seg.max(initial=0) > 1:
        seg = (seg != 0).view(np.uint8)
    high = cv2.dilate(seg, _NEIGHBOURS, anchor=(0, 0))
    low = cv2.erode(seg, _NEIGHBOURS, anchor=(0, 0))
    return high != low


@dataclass(frozen=True)
class BoxMask:
    """A frame-sized mask that is zero outside one window.

    Attributes:
        shape: ``(H, W)`` of the frame.
        top, left: position of the window in the frame.
        values: ``(h, w)`` raw values inside the window (``uint8``; non-zero is foreground). The window need
            not be tight, only cover every non-zero pixel; ``h == 0`` or ``w == 0`` is an empty mask.
    """

    shape: tuple[int, int]
    top: int
    left: int
    values: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "BoxMask":
        return cls((int(shape[0]), int(shape[1])), 0, 0, np.zeros((0, 0), np.uint8))

    @classmethod
    def from_dense(cls, mask: np.ndarray) -> "BoxMask":
        """Window of a full ``(H, W)`` mask (bool or uint8; other integer types are cast to uint8)."""
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"BoxMask.from_dense expects a (H, W) mask, got shape {mask.shape}")
        if mask.dtype == bool:
            mask = mask.view(np.uint8)
        elif mask.dtype != np.uint8:
            mask = mask.astype(np.uint8)
        rows = np.flatnonzero(np.bitwise_or.reduce(mask, axis=1))
        if rows.size == 0:
            return cls.empty(mask.shape)
        band = mask[rows[0]:rows[-1] + 1]
        cols = np.flatnonzero(np.bitwise_or.reduce(band, axis=0))
        values = np.ascontiguousarray(band[:, cols[0]:cols[-1] + 1])
        return cls((int(mask.shape[0]), int(mask.shape[1])), int(rows[0]), int(cols[0]), values)

    @property
    def bottom(self) -> int:
        return self.top + self.values.shape[0]

    @property
    def right(self) -> int:
        return self.left + self.values.shape[1]

    @property
    def is_empty(self) -> bool:
        return self.values.size == 0

    def to_dense(self) -> np.ndarray:
        """The full ``(H, W)`` uint8 frame."""
        out = np.zeros(self.shape, np.uint8)
        out[self.top:self.bottom, self.left:self.right] = self.values
        return out

    def paste(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """Raw values on ``window = (top, left, bottom, right)``, which must contain this mask's window."""
        top, left, bottom, right = window
        out = np.zeros((bottom - top, right - left), np.uint8)
        if not self.is_empty:
            out[self.top - top:self.bottom - top, self.left - left:self.right - left] = self.values
        return out


def _as_box(mask: "BoxMask | np.ndarray") -> BoxMask:
    return mask if isinstance(mask, BoxMask) else BoxMask.from_dense(mask)


def _window(masks: tuple[BoxMask, ...]) -> tuple[int, int, int, int] | None:
    """Union of the masks' windows grown by one pixel on every side (clipped to the frame), or None."""
    boxes = [m for m in masks if not m.is_empty]
    if not boxes:
        return None
    h, w = masks[0].shape
    top = max(0, min(m.top for m in boxes) - 1)
    left = max(0, min(m.left for m in boxes) - 1)
    bottom = min(h, max(m.bottom for m in boxes) + 1)
    right = min(w, max(m.right for m in boxes) + 1)
    return top, left, bottom, right


def _check_shapes(gt: BoxMask, pred: BoxMask) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")


@functools.lru_cache(maxsize=64)
def _square_footprint(half: int) -> np.ndarray:
    return np.ones((2 * half + 1, 2 * half + 1), np.uint8)


@functools.lru_cache(maxsize=64)
def _inscribed_half(radius: int) -> int:
    """Largest ``a`` with ``2 a² <= r²``: the square of half-side ``a`` lies inside the disk of radius ``r``."""
    a = radius
    while 2 * a * a > radius * radius:
        a -= 1
    return a


@functools.lru_cache(maxsize=64)
def _disk_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    dy, dx = np.nonzero(disk_footprint(radius))
    return (dy - radius).astype(np.intp), (dx - radius).astype(np.intp)


def _hits(probe: np.ndarray, source: np.ndarray, radius: int) -> int:
    """``count(probe & dilate(source, disk(radius)))`` for two uint8 0/1 maps of one window.

    Exact, without dilating by the full disk where it can be avoided: square dilations (separable, cheap)
    bound the disk from inside (half-side ``a``, ``2a² <= r²``) and outside (half-side ``r``). Probe pixels
    inside the inner one are hits, pixels outside the outer one are misses; only the pixels in between (the
    "ring") are tested against the disk itself, by looking up the disk's offsets when they are few, by a
    disk dilation of their bounding box otherwise. Everything runs on the probe's bounding box grown by the
    radius, the only part of ``source`` a probe pixel can see.
    """
    rows = np.flatnonzero(np.bitwise_or.reduce(probe, axis=1))
    cols = np.flatnonzero(np.bitwise_or.reduce(probe[rows[0]:rows[-1] + 1], axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    h, w = probe.shape
    sy0, sy1, sx0, sx1 = max(0, y0 - radius), min(h, y1 + radius), max(0, x0 - radius), min(w, x1 + radius)
    src = source[sy0:sy1, sx0:sx1]
    if not src.any():
        return 0
    inner = (slice(y0 - sy0, y1 - sy0), slice(x0 - sx0, x1 - sx0))
    p = probe[y0:y1, x0:x1]
    near = cv2.dilate(src, _square_footprint(_inscribed_half(radius)))[inner]
    far = cv2.dilate(src, _square_footprint(radius))[inner]
    hits = cv2.countNonZero(p & near)
    ring = p & far & (near ^ 1)
    n_ring = cv2.countNonZero(ring)
    if n_ring == 0:
        return hits
    if n_ring * 400 < src.size:
        # few ring pixels: look up ``source`` at each disk offset around each of them
        points = cv2.findNonZero(ring).reshape(-1, 2)
        ys = points[:, 1].astype(np.intp) + (y0 - sy0 + radius)
        xs = points[:, 0].astype(np.intp) + (x0 - sx0 + radius)
        padded = np.zeros((src.shape[0] + 2 * radius, src.shape[1] + 2 * radius), np.uint8)
        padded[radius:-radius, radius:-radius] = src
        dy, dx = _disk_offsets(radius)
        index = (ys[:, None] + dy[None, :]) * padded.shape[1] + (xs[:, None] + dx[None, :])
        return hits + int(np.count_nonzero(padded.ravel()[index].any(axis=1)))
    # many: dilate by the disk, but only around the ring's bounding box
    ring_rows = np.flatnonzero(np.bitwise_or.reduce(ring, axis=1))
    ring_cols = np.flatnonzero(np.bitwise_or.reduce(ring, axis=0))
    ry0, ry1 = int(ring_rows[0]) + y0 - sy0, int(ring_rows[-1]) + 1 + y0 - sy0
    rx0, rx1 = int(ring_cols[0]) + x0 - sx0, int(ring_cols[-1]) + 1 + x0 - sx0
    ey0, ey1 = max(0, ry0 - radius), min(src.shape[0], ry1 + radius)
    ex0, ex1 = max(0, rx0 - radius), min(src.shape[1], rx1 + radius)
    dilated = cv2.dilate(src[ey0:ey1, ex0:ex1], disk_footprint(radius))
    ring_box = ring[ry0 - (y0 - sy0):ry1 - (y0 - sy0), rx0 - (x0 - sx0):rx1 - (x0 - sx0)]
    return hits + cv2.countNonZero(ring_box & dilated[ry0 - ey0:ry1 - ey0, rx0 - ex0:rx1 - ex0])


def _f_from_maps(gt_b: np.ndarray, pred_b: np.ndarray, radius: int) -> float:
    """F of two boundary maps (uint8 0/1 windows) with the official precision / recall cases."""
    n_fg = int(np.count_nonzero(pred_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    elif np.array_equal(gt_b, pred_b):
        # Every boundary pixel lies in its own dilation: both ratios are n / n = 1 exactly.
        precision, recall = 1.0, 1.0
    else:
        precision = _hits(pred_b, gt_b, radius) / float(n_fg)
        recall = _hits(gt_b, pred_b, radius) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def frame_jf(gt: "BoxMask | np.ndarray", pred: "BoxMask | np.ndarray") -> tuple[float, float]:
    """J and F of one frame.

    Args:
        gt: ground truth, ``(H, W)`` array or :class:`BoxMask` (non-zero = foreground).
        pred: prediction of the same frame size.
    Returns:
        ``(J, F)`` as Python floats, bit-identical to the DAVIS toolkit's ``db_eval_iou`` / ``f_measure``.
    """
    gt, pred = _as_box(gt), _as_box(pred)
    _check_shapes(gt, pred)
    window = _window((gt, pred))
    if window is None:
        return 1.0, 1.0
    g = gt.paste(window) != 0
    p = pred.paste(window) != 0
    inter = int(np.count_nonzero(g & p))
    union = int(np.count_nonzero(g | p))
    j = 1.0 if union == 0 else inter / union
    if union == 0:
        return j, 1.0
    f = _f_from_maps(seg2bmap(g).view(np.uint8), seg2bmap(p).view(np.uint8), boundary_radius(*gt.shape))
    return j, f


def jaccard(gt: "BoxMask | np.ndarray", pred: "BoxMask | np.ndarray") -> float:
    """Region similarity J of one frame (see :func:`frame_jf`)."""
    gt, pred = _as_box(gt), _as_box(pred)
    _check_shapes(gt, pred)
    window = _window((gt, pred))
    if window is None:
        return 1.0
    g = gt.paste(window) != 0
    p = pred.paste(window) != 0
    union = int(np.count_nonzero(g | p))
    return 1.0 if union == 0 else int(np.count_nonzero(g & p)) / union


def boundary_f(gt: "BoxMask | np.ndarray", pred: "BoxMask | np.ndarray") -> float:
    """Boundary accuracy F of one frame (see :func:`frame_jf`)."""
    return frame_jf(gt, pred)[1]


def sequence_jf(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame J and F of two ``(T, H, W)`` stacks: two ``(T,)`` float64 arrays (their ``.mean()`` is the
    official per-expression score)."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"expected two (T, H, W) stacks of one shape, got {gt.shape} and {pred.shape}")
    j = np.zeros(gt.shape[0])
    f = np.zeros(gt.shape[0])
    for t in range(gt.shape[0]):
        j[t], f[t] = frame_jf(gt[t], pred[t])
    return j, f


# ---------------------------------------------------------------------------------------------------- ReVOS
def revos_accuracy(gt: BoxMask, pred: BoxMask, *, corrected: bool = False) -> float:
    """ReVOS accuracy A of one frame: the fraction of pixels where ground truth and prediction agree.

    Official (default): ``mean(gt == pred)`` on raw values, ``gt`` the uint8 *sum* of the expression's object
    masks (2 where two objects overlap) and ``pred`` the PNG as read (0/255): foreground pixels never agree, so
    A counts the pixels where both are 0. ``corrected=True`` compares ``gt != 0`` with ``pred != 0``.
    """
    _check_shapes(gt, pred)
    total = gt.shape[0] * gt.shape[1]
    window = _window((gt, pred))
    if window is None:
        return total / total
    g = gt.paste(window)
    p = pred.paste(window)
    outside = total - g.size
    if corrected:
        agree = int(np.count_nonzero((g != 0) == (p != 0)))
    else:
        agree = int(np.count_nonzero(g == p))
    return (outside + agree) / total


def revos_robustness(gt: BoxMask, pred: BoxMask, foreground: int, *, corrected: bool = False) -> float:
    """ReVOS robustness R of one frame: ``max(1 - false_positive / (foreground + 1e-6), 0)``.

    Args:
        gt, pred: as in :func:`revos_accuracy`.
        foreground: the frame's foreground total (sum of the ``mask_dict_foreground`` mask; official) or
            its foreground pixel count (``corrected``).
        corrected: count false-positive pixels (``gt == 0 and pred != 0``) instead of the official
            ``sum((1 - gt) * pred)`` in uint8 arithmetic, where a false-positive pixel weighs 255 and an
            overlap pixel (gt 2) predicted 255 wraps around to 1.
    """
    _check_shapes(gt, pred)
    window = _window((gt, pred))
    neg = 0
    if window is not None:
        g = gt.paste(window)
        p = pred.paste(window)
        if corrected:
            neg = int(np.count_nonzero((g == 0) & (p != 0)))
        else:
            # uint8 wrap-around on purpose: this is the official arithmetic.
            neg = int(((np.uint8(1) - g) * p).sum(dtype=np.uint64))
    return max(1 - neg / (foreground + 1e-6), 0.0)


def revos_round(value: float) -> float:
    """``round(100 * v, 2)`` as the ReVOS script applies it to its ``numpy.float64`` scores."""
    return float(round(100 * np.float64(value), 2))
