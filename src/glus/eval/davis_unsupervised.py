"""Ref-DAVIS17 as ReferFormer scores it: the DAVIS 2017 *unsupervised* toolkit over four annotator sets.

Ref-DAVIS17 gives every object four expressions (two annotators x first-frame / full-video descriptions),
listed per video in the order ``obj0_a0, obj0_a1, obj0_a2, obj0_a3, obj1_a0, ...``. ReferFormer
(``inference_davis.py`` + ``eval_davis.py``) builds, for each annotator set ``a``, one label map per frame
from the predictions of expressions ``4k + a`` (object ``k + 1``; where several objects claim a pixel the
lowest index wins, which is what its ``argmax`` over binarised masks does), and runs the DAVIS 2017
unsupervised evaluation on each set:

* ground truth: ``<split>/Annotations/<video>/<frame>.png`` palette PNGs (DAVIS ``Annotations_unsupervised``);
  255 is void (excluded from J and F); the objects are ``1 .. max(label of the first frame)``;
* proposals: ``1 .. max(label over the video)``, padded with empty masks up to the number of objects;
* per pair, per-frame J and F with the void pixels removed; proposals are matched to objects by the
  Hungarian algorithm on ``(mean J + mean F) / 2``; per object M = nanmean, recall = nanmean(> 0.5) and
  decay over four bins, as ``davis2017/utils.db_statistics`` computes them;
* J-Mean / F-Mean = mean over all objects of all videos; J&F-Mean = their mean.

The reported J, F, J&F are the means over the four annotator sets; each set's table is under
``official.annotators``. A prediction that is missing or mis-sized makes that object's proposal empty (the
DAVIS toolkit would stop); such expressions are listed under ``missing``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from glus.data.formats import load_dataset
from glus.data.masks import read_mask_png
from glus.data.records import Dataset, Video
from glus.errors import GLUSError
from glus.eval.metrics import BoxMask, frame_jf
from glus.eval.predictions import PredictionError, read_mask_prediction
from glus.eval.results import EvaluationResult
from glus.eval.scoring import pool_context

logger = logging.getLogger(__name__)

__all__ = ["ANNOTATORS", "db_statistics", "match_objects", "evaluate_referformer"]

ANNOTATORS = 4
VOID = 255
MAX_PROPOSALS = 20


def db_statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """Mean, recall (fraction > 0.5) and decay (first quarter minus last quarter) of per-frame values, as the
    DAVIS toolkit computes them (including its ``uint8`` bin indices)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(per_frame)
        recall = np.nanmean(per_frame > 0.5)
    ids = (np.round(np.linspace(1, len(per_frame), 5) + 1e-10) - 1).astype(np.uint8)
    bins = [per_frame[ids[i]:ids[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


def match_objects(j: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching of proposals to objects.

    Args:
        j, f: ``(P, N, T)`` per-frame J and F of proposal p against object n (``P >= N``).
    Returns:
        ``(rows, cols)``: proposal ``rows[i]`` is matched to object ``cols[i]`` (rows ascending, as the toolkit
        returns them).
    """
    from scipy.optimize import linear_sum_assignment  # scipy.optimize takes a second to import: only here

    score = (np.mean(j, axis=2) + np.mean(f, axis=2)) / 2
    return linear_sum_assignment(-score)


def _gt_labels(dataset: Dataset, video: Video) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, void)``: ``(T, H, W)`` uint8 object ids with void set to 0, and the void mask."""
    folder = dataset.root / "Annotations" / video.video_id
    frames = [read_mask_png(folder / f"{name}.png", indices=True,
                            where=f"video '{video.video_id}', frame '{name}'") for name in video.frame_names]
    labels = np.stack(frames)
    void = labels == VOID
    labels[void] = 0
    return labels, void


def _proposal_labels(dataset: Dataset, video: Video, pred_root: Path, annotator: int,
                     shape: tuple[int, int, int]) -> tuple[np.ndarray, dict[str, str]]:
    """Label maps of one annotator set from the per-expression predictions; ``(labels, missing)``."""
    expressions = list(video.expressions.values())
    labels = np.zeros(shape, np.uint8)
    missing: dict[str, str] = {}
    for k in range(len(expressions) // ANNOTATORS):
        expression = expressions[k * ANNOTATORS + annotator]
        exp_dir = pred_root / video.video_id / expression.exp_id
        masks = []
        try:
            if not exp_dir.is_dir():
                raise PredictionError(f"no folder {video.video_id}/{expression.exp_id}/")
            for name in video.frame_names:
                box = read_mask_prediction(exp_dir / f"{name}.png")
                if box.shape != shape[1:]:
                    raise PredictionError(f"{name}.png is {box.shape[1]}x{box.shape[0]} but the video's frames "
                                          f"are {shape[2]}x{shape[1]} (width x height)")
                masks.append(box)
        except PredictionError as exc:
            missing[expression.key] = exc.reason
            continue
        for t, box in enumerate(masks):
            if box.is_empty:
                continue
            window = labels[t, box.top:box.bottom, box.left:box.right]
            window[(window == 0) & (box.values != 0)] = k + 1  # lowest object index wins, as argmax
    return labels, missing


def _sequence(dataset: Dataset, video: Video, pred_root: Path, annotator: int) -> dict[str, Any]:
    """Unsupervised evaluation of one video for one annotator set."""
    gt_labels, void = _gt_labels(dataset, video)
    n_gt = int(gt_labels[0].max())
    res_labels, missing = _proposal_labels(dataset, video, pred_root, annotator, gt_labels.shape)
    n_res = max(int(res_labels.max()), n_gt)
    if n_res > MAX_PROPOSALS:
        raise GLUSError(f"video '{video.video_id}' has {n_res} proposals, more than the DAVIS toolkit's "
                        f"{MAX_PROPOSALS}", pred_root)
    keep = ~void
    T = gt_labels.shape[0]
    gt_boxes = [[BoxMask.from_dense((gt_labels[t] == n + 1) & keep[t]) for t in range(T)] for n in range(n_gt)]
    res_boxes = [[BoxMask.from_dense((res_labels[t] == p + 1) & keep[t]) for t in range(T)] for p in range(n_res)]
    j = np.zeros((n_res, n_gt, T))
    f = np.zeros((n_res, n_gt, T))
    for n in range(n_gt):
        for p in range(n_res):
            for t in range(T):
                j[p, n, t], f[p, n, t] = frame_jf(gt_boxes[n][t], res_boxes[p][t])
    objects = []
    if n_gt:
        rows, cols = match_objects(j, f)
        for i in range(len(rows)):
            jm, jr, jd = db_statistics(j[rows[i], cols[i]])
            fm, fr, fd = db_statistics(f[rows[i], cols[i]])
            objects.append({"proposal": int(rows[i]) + 1, "object": int(cols[i]) + 1, "J-Mean": jm, "J-Recall": jr,
                            "J-Decay": jd, "F-Mean": fm, "F-Recall": fr, "F-Decay": fd})
    return {"video": video.video_id, "annotator": annotator, "objects": objects, "missing": missing}


_WORKER: dict = {}  # per pool process: set once by the initializer, never in the calling process


def _init(dataset: Dataset, pred_root: Path) -> None:
    cv2.setNumThreads(1)  # see glus.eval.scoring: small windows, several workers
    _WORKER["dataset"] = dataset
    _WORKER["pred_root"] = pred_root


def _task(item: tuple[str, int]) -> dict[str, Any]:
    dataset: Dataset = _WORKER["dataset"]
    return _sequence(dataset, dataset.video(item[0]), _WORKER["pred_root"], item[1])


def evaluate_referformer(split_dir: str | Path, pred_dir: str | Path, *, split: str | None = None, workers: int = 1,
                         official_drop_missing: bool = False, progress: Callable[[int], None] | None = None,
                         on_start: Callable[[int], None] | None = None):
    """Score Ref-DAVIS17 predictions with ReferFormer's protocol (see the module doc).

    Returns:
        :class:`glus.eval.protocols.EvaluationResult` with ``J``, ``F``, ``J&F`` (means over the four
        annotator sets), ``per_expression`` (the matched scores of each expression's proposal),
        ``official.annotators`` (each set's DAVIS global table) and a per-object table.
    """
    dataset = load_dataset("davis17", split_dir, split, masks="png")
    pred_root = Path(pred_dir)
    if not pred_root.is_dir():
        raise GLUSError("prediction folder not found", pred_root)
    for video in dataset.videos.values():
        if len(video.expressions) % ANNOTATORS:
            raise GLUSError(f"video '{video.video_id}' has {len(video.expressions)} expressions; ReferFormer's "
                            f"protocol needs {ANNOTATORS} per object", dataset.root)
    items = [(vid, a) for vid in dataset.videos for a in range(ANNOTATORS)]
    if on_start is not None:
        on_start(len(items))
    outputs: list[dict[str, Any]] = []
    if workers > 1 and len(items) > 1:
        context = pool_context()
        with context.Pool(min(workers, len(items)), initializer=_init, initargs=(dataset, pred_root)) as pool:
            for out in pool.imap(_task, items):
                outputs.append(out)
                if progress:
                    progress(1)
    else:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for vid, annotator in items:
                outputs.append(_sequence(dataset, dataset.video(vid), pred_root, annotator))
                if progress:
                    progress(1)
        finally:
            cv2.setNumThreads(threads)

    annotators: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    missing: dict[str, str] = {}
    per_expression: dict[str, dict[str, Any]] = {}
    for a in range(ANNOTATORS):
        objects = [(o, obj) for o in outputs if o["annotator"] == a for obj in o["objects"]]
        table: dict[str, float] = {}
        for m in ("J", "F"):
            for stat in ("Mean", "Recall", "Decay"):
                values = [obj[f"{m}-{stat}"] for _, obj in objects]
                table[f"{m}-{stat}"] = float(np.mean(values)) if values else float("nan")
        table["J&F-Mean"] = (table["J-Mean"] + table["F-Mean"]) / 2
        annotators[f"anno_{a}"] = table
        for o, obj in objects:
            rows.append({"annotator": a, "video": o["video"], **obj})
    for o in outputs:
        missing.update(o["missing"])
        expressions = list(dataset.video(o["video"]).expressions.values())
        matched = {obj["proposal"]: obj for obj in o["objects"]}
        for k in range(len(expressions) // ANNOTATORS):
            expression = expressions[k * ANNOTATORS + o["annotator"]]
            obj = matched.get(k + 1)
            per_expression[expression.key] = {
                "J": None if obj is None else obj["J-Mean"], "F": None if obj is None else obj["F-Mean"],
                "annotator": o["annotator"], "object": None if obj is None else obj["object"]}
    per_expression = {e.key: per_expression[e.key] for e in dataset.expressions() if e.key in per_expression}
    j = float(np.mean([t["J-Mean"] for t in annotators.values()]))
    f = float(np.mean([t["F-Mean"] for t in annotators.values()]))
    summary = {"dataset": "davis17", "protocol": "referformer", "split": dataset.split, "split_dir": str(split_dir),
               "pred": str(pred_dir), "options": {"official_drop_missing": official_drop_missing, "corrected": False},
               "J": j, "F": f, "J&F": (j + f) / 2, "per_expression": per_expression,
               "official": {"annotators": annotators},
               "num_expressions": dataset.num_expressions,
               "num_scored": dataset.num_expressions - len(missing), "missing": missing, "dropped": []}
    if missing:
        logger.warning("%d expressions have no usable prediction (their proposals are empty)", len(missing))
    return EvaluationResult(summary, [], {"objects": rows})
