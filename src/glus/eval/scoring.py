"""Per-frame scores of every expression of a split against a folder of predicted masks, in parallel.

Predictions are read from ``<pred>/<video>/<exp_id>/<frame>.png`` (one per frame of the video, any mask PNG;
non-zero is foreground). For each expression this module produces the per-frame J and F (and ReVOS's A and R
when asked), or the reason its prediction could not be scored (missing folder or frame, unreadable file,
wrong size). How those turn into a benchmark number is the business of :mod:`glus.eval.protocols`.

Ground truth comes from the dataset reader (:mod:`glus.data.formats`); each annotation's mask on each frame
is decoded once per video and shared by every expression that refers to it (MeViS expressions often share
objects). Work is split by video into chunks of expressions and spread over ``workers`` processes.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
from pycocotools import mask as cocomask

from glus.data.records import Dataset, Expression
from glus.errors import GLUSError
from glus.eval.metrics import BoxMask, frame_jf, revos_accuracy, revos_robustness
from glus.eval.predictions import PredictionError, read_mask_prediction

logger = logging.getLogger(__name__)

__all__ = ["ExpressionScores", "ScoreOptions", "GroundTruthCache", "score_expression", "score_dataset"]

_UNAVAILABLE = object()

#: Where a prediction failed: its video folder is missing, or something below it.
MISSING_VIDEO = "video"
MISSING_EXPRESSION = "expression"


@dataclass(frozen=True)
class ScoreOptions:
    """What to compute per frame.

    Attributes:
        revos: also compute ReVOS accuracy A and robustness R (needs the dataset's foreground masks).
        corrected: ReVOS A and R on binary masks instead of the official raw-value arithmetic.
    """

    revos: bool = False
    corrected: bool = False


@dataclass
class ExpressionScores:
    """Per-frame scores of one expression.

    Attributes:
        expression: the expression scored.
        frames: the video's frame names (``T``).
        j, f: ``(T,)`` float64 per-frame J and F; ``None`` when the prediction could not be scored.
        a, r: ``(T,)`` float64 ReVOS accuracy and robustness (``ScoreOptions.revos`` only).
        missing: why the prediction could not be scored (``None`` when it was).
        missing_level: :data:`MISSING_VIDEO` when the whole video folder is absent, else
            :data:`MISSING_EXPRESSION` (official evaluators treat the two differently).
    """

    expression: Expression
    frames: list[str]
    j: np.ndarray | None = None
    f: np.ndarray | None = None
    a: np.ndarray | None = None
    r: np.ndarray | None = None
    missing: str | None = None
    missing_level: str | None = None

    @property
    def key(self) -> str:
        return self.expression.key

    def mean(self, name: str) -> float:
        """Official per-expression value: the frame mean (``np.mean``) of ``j``/``f``/``a``/``r``, 0 if missing."""
        values = getattr(self, name)
        return 0.0 if values is None else float(np.mean(values))


def _sum_boxes(parts: Sequence[BoxMask], shape: tuple[int, int]) -> BoxMask:
    """uint8 sum of several masks of one frame (the official ``gt += decode(rle)``), as one BoxMask."""
    parts = [p for p in parts if not p.is_empty]
    if not parts:
        return BoxMask.empty(shape)
    if len(parts) == 1:
        return parts[0]
    top, left = min(p.top for p in parts), min(p.left for p in parts)
    bottom, right = max(p.bottom for p in parts), max(p.right for p in parts)
    total = np.zeros((bottom - top, right - left), np.uint8)
    for p in parts:
        total[p.top - top:p.bottom - top, p.left - left:p.right - left] += p.values
    return BoxMask(shape, top, left, total)


class GroundTruthCache:
    """Ground truth of expressions frame by frame, each annotation decoded once per video.

    Keeps the decoded annotations of the current video only (expressions arrive grouped by video), as
    :class:`BoxMask` windows, so memory stays at a few object crops per frame.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._video: str | None = None
        self._annotations: dict[tuple[str, int], BoxMask] = {}
        self._foreground: dict[int, tuple[int, int]] = {}

    def _switch(self, video_id: str) -> None:
        if video_id != self._video:
            self._video = video_id
            self._annotations.clear()
            self._foreground.clear()

    def frame_size(self, video_id: str) -> tuple[int, int]:
        hw = self.dataset.frame_size(video_id)
        if hw is None:
            raise GLUSError(f"cannot tell the frame size of video '{video_id}'", self.dataset.root)
        return hw

    def _stored_rle(self, video_id: str, anno_id: str, t: int) -> Any:
        """The stored COCO RLE of one annotation on one frame when the mask source keeps RLE lists (MeViS-style
        ``mask_dict`` files: ``source.store.frames(anno_id)`` indexed through ``source.positions``), else
        :data:`_UNAVAILABLE`."""
        source = self.dataset.masks
        frames = getattr(getattr(source, "store", None), "frames", None)
        positions = getattr(source, "positions", None)
        if frames is None or not isinstance(positions, dict):
            return _UNAVAILABLE
        order = positions.get(video_id)
        return frames(anno_id)[order[t] if order is not None else t]

    def _decode_window(self, rle: Any, hw: tuple[int, int]) -> BoxMask | None:
        """Decode a compressed RLE straight into its bounding box; None if it is not one (or not of size
        ``hw``), in which case the reader's own decoder handles it (and reports what is wrong)."""
        if rle is None:
            return BoxMask.empty(hw)
        if not isinstance(rle, dict) or list(rle.get("size", ())) != [hw[0], hw[1]]:
            return None
        counts = rle.get("counts")
        if isinstance(counts, str):
            if not counts.isascii():
                return None
            counts = counts.encode("ascii")
        if not isinstance(counts, bytes):
            return None
        coco = {"size": [hw[0], hw[1]], "counts": counts}
        try:
            x, y, w, h = (int(v) for v in cocomask.toBbox(coco))
            if w == 0 or h == 0:
                return BoxMask.empty(hw)
            mask = cocomask.decode(coco)
        except (ValueError, TypeError):
            return None
        if mask.shape != hw:
            return None
        return BoxMask(hw, y, x, np.ascontiguousarray(mask[y:y + h, x:x + w]))

    def _annotation(self, expression: Expression, index: int, t: int, hw: tuple[int, int]) -> BoxMask:
        anno_id = expression.anno_ids[index]
        key = (anno_id, t)
        box = self._annotations.get(key)
        if box is None:
            rle = self._stored_rle(expression.video_id, anno_id, t)
            box = None if rle is _UNAVAILABLE else self._decode_window(rle, hw)
            if box is None:
                # The reader's decoder, on the same expression restricted to this one annotation id.
                single = dataclasses.replace(expression, anno_ids=(anno_id,))
                video = self.dataset.video(expression.video_id)
                box = BoxMask.from_dense(self.dataset.masks.annotation_masks(video, single, t, hw)[0])
            self._annotations[key] = box
        return box

    def frame(self, expression: Expression, t: int) -> BoxMask:
        """Ground truth of ``expression`` on frame ``t``: the uint8 sum of its annotation masks (2 where two
        objects overlap, as the official evaluators build it)."""
        self._switch(expression.video_id)
        hw = self.frame_size(expression.video_id)
        if expression.anno_ids and self.dataset.masks is not None:
            parts = [self._annotation(expression, i, t, hw) for i in range(len(expression.anno_ids))]
        else:
            masks = self.dataset.annotation_masks(expression.video_id, expression.exp_id, t)
            parts = [BoxMask.from_dense(m) for m in masks]
        return _sum_boxes(parts, hw)

    def foreground(self, video_id: str, t: int) -> tuple[int, int]:
        """ReVOS foreground of frame ``t``: ``(sum of the foreground mask, its pixel count)``."""
        self._switch(video_id)
        cached = self._foreground.get(t)
        if cached is None:
            mask = self.dataset.foreground_mask(video_id, t)  # type: ignore[attr-defined]
            cached = (int(mask.sum(dtype=np.uint64)), int(np.count_nonzero(mask)))
            self._foreground[t] = cached
        return cached


def score_expression(cache: GroundTruthCache, pred_root: Path, expression: Expression,
                     options: ScoreOptions = ScoreOptions()) -> ExpressionScores:
    """Score one expression's predicted masks against its ground truth, frame by frame."""
    dataset = cache.dataset
    video = dataset.video(expression.video_id)
    frames = list(video.frame_names)
    result = ExpressionScores(expression, frames)
    video_dir = pred_root / expression.video_id
    exp_dir = video_dir / expression.exp_id
    if not exp_dir.is_dir():
        if not video_dir.is_dir():
            result.missing, result.missing_level = f"no folder {expression.video_id}/", MISSING_VIDEO
        else:
            result.missing = f"no folder {expression.video_id}/{expression.exp_id}/"
            result.missing_level = MISSING_EXPRESSION
        return result
    hw = cache.frame_size(expression.video_id)
    n = len(frames)
    j, f = np.zeros(n), np.zeros(n)
    a = np.zeros(n) if options.revos else None
    r = np.zeros(n) if options.revos else None
    for t, name in enumerate(frames):
        try:
            pred = read_mask_prediction(exp_dir / f"{name}.png")
        except PredictionError as exc:
            result.missing, result.missing_level = exc.reason, MISSING_EXPRESSION
            return result
        if pred.shape != hw:
            result.missing = (f"{name}.png is {pred.shape[1]}x{pred.shape[0]} but the video's frames are "
                              f"{hw[1]}x{hw[0]} (width x height)")
            result.missing_level = MISSING_EXPRESSION
            return result
        gt = cache.frame(expression, t)
        j[t], f[t] = frame_jf(gt, pred)
        if options.revos:
            fg_sum, fg_count = cache.foreground(expression.video_id, t)
            a[t] = revos_accuracy(gt, pred, corrected=options.corrected)
            r[t] = revos_robustness(gt, pred, fg_count if options.corrected else fg_sum,
                                    corrected=options.corrected)
    result.j, result.f, result.a, result.r = j, f, a, r
    return result


# ------------------------------------------------------------------------------------------ parallel driver
_WORKER: dict = {}  # per pool process: set once by the initializer, never in the calling process


def _init_worker(dataset: Dataset, pred_root: Path, options: ScoreOptions) -> None:
    # The windows are small: OpenCV's thread pool costs more than it saves, and oversubscribes the cores
    # when several workers run.
    cv2.setNumThreads(1)
    _WORKER["cache"] = GroundTruthCache(dataset)
    _WORKER["pred_root"] = pred_root
    _WORKER["options"] = options


def _score_chunk(chunk: tuple[str, list[str]]) -> list[ExpressionScores]:
    cache: GroundTruthCache = _WORKER["cache"]
    video_id, exp_ids = chunk
    return [score_expression(cache, _WORKER["pred_root"], cache.dataset.expression(video_id, e),
                             _WORKER["options"]) for e in exp_ids]


def _chunks(expressions: Sequence[Expression], workers: int) -> list[tuple[str, list[str]]]:
    """Expressions grouped by video (to share decoded annotations), at most 16 per chunk, and no more per chunk
    than an even share per worker, so that a split with a single video still keeps every worker busy."""
    by_video: dict[str, list[str]] = {}
    for e in expressions:
        by_video.setdefault(e.video_id, []).append(e.exp_id)
    size = max(1, min(16, -(-len(expressions) // max(1, workers))))
    return [(vid, ids[i:i + size]) for vid, ids in by_video.items() for i in range(0, len(ids), size)]


def pool_context() -> mp.context.BaseContext:
    """The multiprocessing context of every scoring pool: fork shares the already-loaded dataset index with the
    workers for free; where there is no fork, spawn pickles it."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def score_dataset(dataset: Dataset, pred_root: str | Path, *, expressions: Iterable[Expression] | None = None,
                  options: ScoreOptions = ScoreOptions(), workers: int = 1,
                  progress: Callable[[int], None] | None = None) -> list[ExpressionScores]:
    """Score every expression of ``dataset`` (or the given ones) against ``pred_root``.

    Args:
        dataset: a split with ground truth.
        pred_root: folder with ``<video>/<exp_id>/<frame>.png``.
        expressions: a subset to score (default: all, in dataset order).
        options: extra per-frame metrics.
        workers: processes to use (1 = in this process).
        progress: called with the number of expressions just finished.

    Returns:
        one :class:`ExpressionScores` per expression, in dataset order.
    """
    if not dataset.has_ground_truth:
        raise GLUSError(f"the {dataset.name} {dataset.split} split has no ground truth to evaluate against",
                        dataset.root)
    pred_root = Path(pred_root)
    if not pred_root.is_dir():
        raise GLUSError("prediction folder not found", pred_root)
    todo = list(dataset.expressions() if expressions is None else expressions)
    chunks = _chunks(todo, workers)
    results: dict[str, ExpressionScores] = {}

    def collect(batch: list[ExpressionScores]) -> None:
        for item in batch:
            results[item.key] = item
        if progress is not None:
            progress(len(batch))

    if workers <= 1 or len(chunks) <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        cache = GroundTruthCache(dataset)
        try:
            for video_id, exp_ids in chunks:
                collect([score_expression(cache, pred_root, dataset.expression(video_id, e), options)
                         for e in exp_ids])
        finally:
            cv2.setNumThreads(threads)
    else:
        n = min(workers, len(chunks))
        with pool_context().Pool(n, initializer=_init_worker, initargs=(dataset, pred_root, options)) as pool:
            for batch in pool.imap_unordered(_score_chunk, chunks):
                collect(batch)
    return [results[e.key] for e in todo]


def iter_frames(scores: Iterable[ExpressionScores]) -> Iterator[tuple[ExpressionScores, int]]:
    """``(scores, t)`` for every scored frame, for per-frame reports."""
    for s in scores:
        if s.j is not None:
            for t in range(len(s.frames)):
                yield s, t
