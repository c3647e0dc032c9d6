"""A plain re-implementation of the official per-frame J / F algorithm (DAVIS 2017 toolkit as used by the
MeViS, VISA / GLUS and ReVOS evaluators), kept as the yardstick for glus's fast metric code.

It follows the official code step by step on purpose: full-frame boundary maps, a ``skimage`` disk
footprint rebuilt per frame, ``cv2.dilate`` of the full frame, one ``cv2.imread`` per predicted frame and
per-expression COCO-RLE decoding of the ground truth. Nothing here is optimised; ``tests/`` and
``benchmarks/eval_speed.py`` compare glus against it.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import cv2
import numpy as np
from pycocotools import mask as cocomask
from skimage.morphology import disk


def reference_iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-frame Jaccard of ``(T, H, W)`` masks (any non-zero value is foreground): ``(T,)`` float64."""
    gt = gt.astype(bool)
    pred = pred.astype(bool)
    inter = np.sum(gt & pred, axis=(-2, -1))
    union = np.sum(gt | pred, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union
    j[np.isclose(union, 0)] = 1
    return j


def reference_bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel boundary map of a 2-D mask, as the toolkit's ``seg2bmap`` draws it (no resizing)."""
    seg = seg.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = 0
    return b


def reference_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F-measure of one frame, ``pred`` and ``gt`` of shape ``(H, W)``."""
    radius = np.ceil(bound_th * np.linalg.norm(pred.shape))
    fg = reference_bmap(pred)
    gb = reference_bmap(gt)
    footprint = disk(radius).astype(np.uint8)
    fg_dil = cv2.dilate(fg.astype(np.uint8), footprint)
    gt_dil = cv2.dilate(gb.astype(np.uint8), footprint)
    n_fg = np.sum(fg)
    n_gt = np.sum(gb)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg * gt_dil) / float(n_fg)
        recall = np.sum(gb * fg_dil) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def reference_boundary(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per-frame F of ``(T, H, W)`` masks: ``(T,)`` float64."""
    out = np.zeros(gt.shape[0])
    for t in range(gt.shape[0]):
        out[t] = reference_f(pred[t], gt[t])
    return out


def reference_expression(pred_dir: str, frames: Sequence[str], rles: Sequence[Sequence[dict | None]]
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Score one expression the way the MeViS evaluator does.

    Args:
        pred_dir: folder with ``<frame>.png`` for this expression.
        frames: frame names in order.
        rles: per anno_id, the per-frame COCO RLE (or None where the object is absent).
    Returns:
        per-frame J and F, each ``(T,)`` float64.
    """
    first = cv2.imread(os.path.join(pred_dir, frames[0] + ".png"), cv2.IMREAD_GRAYSCALE)
    h, w = first.shape
    gt = np.zeros((len(frames), h, w), np.uint8)
    pred = np.zeros((len(frames), h, w), np.uint8)
    for t, name in enumerate(frames):
        for per_frame in rles:
            if per_frame[t]:
                gt[t] += cocomask.decode(per_frame[t])
        pred[t] = cv2.imread(os.path.join(pred_dir, name + ".png"), cv2.IMREAD_GRAYSCALE)
    return reference_iou(gt, pred), reference_boundary(gt, pred)


def reference_mevis(split_dir: str, pred_root: str) -> dict[str, tuple[float, float]]:
    """Per-expression (J, F) of a MeViS-format split (``meta_expressions.json`` + ``mask_dict.json``)."""
    with open(os.path.join(split_dir, "meta_expressions.json")) as f:
        videos = json.load(f)["videos"]
    with open(os.path.join(split_dir, "mask_dict.json")) as f:
        mask_dict = json.load(f)
    out = {}
    for vid, video in videos.items():
        for exp_id, exp in video["expressions"].items():
            rles = [mask_dict[str(a)] for a in exp["anno_id"]]
            j, f = reference_expression(os.path.join(pred_root, vid, exp_id), video["frames"], rles)
            out[f"{vid}_{exp_id}"] = (float(j.mean()), float(f.mean()))
    return out
