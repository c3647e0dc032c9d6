"""Training the key-frame scorer (:mod:`glus.model.key_frame_scorer`) on a checkpoint's own first passes.

The authors regress, per frame, the IoU of an intermediate checkpoint's predictions. glus does the same for the
checkpoint the scorer will serve, in three resumable steps under one work folder (``glus train scorer``):

1. **first pass**: ``glus infer --key-frame none --save-frame-features`` on a training split
   (``<work>/first_pass``): every expression's masks from frame 0 and its :class:`FirstPassRecord` (the ``[SEG]``
   prompts, SAM-2's IoU and object scores, mask areas) that the scorer reads;
2. **labels**: ``glus evaluate --per-frame`` on that folder (``<work>/labels.json`` and ``labels.frames.csv``): the
   per-frame J of every first-pass mask, computed by the official-metric code, is the IoU target;
3. **fit**: an L1 regression of the labels (as the authors' ``[SCORE]`` head) on frames that said ``[SEG]``, Adam,
   the best epoch on held-out videos kept (:class:`ScorerTrainConfig`).

What matters for self-refinement is which frame scores highest, not the regression error, so the report compares
the scorer with the untrained heuristic (:func:`glus.inference.keyframes.frame_quality`) on the held-out videos by
rank correlation with the true IoU and by the true IoU of the frame each would pick (:func:`selection_metrics`),
next to the oracle (the best frame) and frame 0 (no key frame).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from glus.errors import GLUSError
from glus.fileio import atomic_write_json, read_json_object

logger = logging.getLogger(__name__)

FIRST_PASS_DIR = "first_pass"
LABELS_NAME = "labels.json"  # glus evaluate's RESULT.json; its per-frame CSV is labels.frames.csv beside it
REPORT_NAME = "scorer_report.json"
HISTORY_NAME = "scorer_history.csv"
CURVE_NAME = "scorer_curve.png"


@dataclass
class ScorerTrainConfig:
    """Settings of the fit (``glus train scorer KEY=VALUE ...``).

    Attributes:
        hidden_size, num_layers: the head's MLP (:class:`~glus.model.key_frame_scorer.KeyFrameScorerConfig`).
        epochs: most passes over the training frames; patience: stop after this many epochs without a better
            held-out L1 (the best epoch's weights are kept).
        lr, weight_decay, batch_size: AdamW over shuffled frames.
        val_fraction: share of the videos held out (whole videos, so that no expression leaks into both sides);
            0 trains on all and keeps the last epoch.
        seed: the held-out draw, the initialisation and the shuffling.
    """

    hidden_size: int = 64
    num_layers: int = 2
    epochs: int = 300
    patience: int = 40
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    val_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> "ScorerTrainConfig":
        for name in ("hidden_size", "num_layers", "epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise GLUSError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise GLUSError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise GLUSError(f"lr must be > 0 and weight_decay >= 0, got {self.lr} and {self.weight_decay}")
        return self


def load_scorer_config(overrides: Sequence[str]) -> ScorerTrainConfig:
    """:class:`ScorerTrainConfig` from ``key=value`` words (values parsed as YAML, checked by name and type)."""
    from glus.train.config import parse_overrides, settings_from_mapping

    return settings_from_mapping(ScorerTrainConfig, parse_overrides(overrides), "scorer settings").validate()


# ---------------------------------------------------------------------------------------------- labelled frames


@dataclass
class LabelledExpression:
    """One expression's first pass with its true per-frame IoU (``labels`` ``[T]``, the evaluator's J)."""

    key: str
    video_id: str
    record: Any  # FirstPassRecord
    labels: np.ndarray


def read_frame_labels(path: str | Path) -> dict[str, np.ndarray]:
    """``glus evaluate --per-frame``'s ``RESULT.frames.csv`` -> ``{"<video>_<exp_id>": J per frame [T]}``."""
    path = Path(path)
    rows: dict[str, dict[int, float]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"expression", "frame_index", "J"} - set(reader.fieldnames or ())
            if missing:
                raise GLUSError(f"not a per-frame score file (no column {', '.join(sorted(missing))}; write it "
                                f"with glus evaluate --per-frame)", path)
            for line, row in enumerate(reader, start=2):
                try:
                    rows.setdefault(row["expression"], {})[int(row["frame_index"])] = float(row["J"])
                except (TypeError, ValueError):
                    raise GLUSError(f"line {line}: frame_index and J must be numbers", path) from None
    except FileNotFoundError:
        raise GLUSError("per-frame score file not found", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GLUSError(f"cannot read the per-frame score file ({str(exc).splitlines()[0]})", path) from None
    labels = {}
    for key, frames in rows.items():
        if sorted(frames) != list(range(len(frames))):
            raise GLUSError(f"expression {key}: frame_index must run 0..T-1 without gaps", path)
        labels[key] = np.array([frames[t] for t in range(len(frames))], dtype=np.float32)
    return labels


def load_labelled_expressions(dataset: str, split_dir: str | Path, pred_dir: str | Path,
                              labels_csv: str | Path, *, split: str | None = None) -> list[LabelledExpression]:
    """Join each expression's ``.frame_features.npz`` in ``pred_dir`` with its per-frame J in ``labels_csv``.

    Expressions with only one of the two are left out (a ``--limit-videos`` first pass covers part of the split);
    none at all, or a record whose frame count differs from its labels', is a one-line error.
    """
    from glus.data.formats import load_dataset
    from glus.inference.runner import FEATURES_NAME
    from glus.inference.writers import expression_dir
    from glus.model.key_frame_scorer import FirstPassRecord

    labels = read_frame_labels(labels_csv)
    data = load_dataset(dataset, split_dir, split=split)
    out: list[LabelledExpression] = []
    for video in data.videos.values():
        for exp_id, expression in video.expressions.items():
            path = expression_dir(pred_dir, video.video_id, exp_id) / FEATURES_NAME
            if expression.key not in labels or not path.is_file():
                continue
            record = FirstPassRecord.load(path)
            if len(record) != len(labels[expression.key]):
                raise GLUSError(f"{len(record)} frames of features but {len(labels[expression.key])} of labels for "
                                f"{expression.key} (features and labels of different runs?)", path)
            out.append(LabelledExpression(expression.key, video.video_id, record, labels[expression.key]))
    if not out:
        raise GLUSError(f"no expression has both first-pass features ({FEATURES_NAME}, glus infer "
                        f"--save-frame-features) and per-frame labels in {labels_csv}", pred_dir)
    return out


def split_by_video(expressions: Sequence[LabelledExpression], val_fraction: float,
                   seed: int) -> tuple[list[LabelledExpression], list[LabelledExpression]]:
    """(train, held-out): a seeded ``val_fraction`` of the videos, at least one when there are two or more."""
    videos = sorted({e.video_id for e in expressions})
    count = 0 if val_fraction <= 0 or len(videos) < 2 else max(1, round(val_fraction * len(videos)))
    held = set(np.random.default_rng(seed).permutation(videos)[:count].tolist())
    return [e for e in expressions if e.video_id not in held], [e for e in expressions if e.video_id in held]


# ---------------------------------------------------------------------------------------------- metrics


def selection_metrics(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict[str, float]:
    """How well per-frame ``scores`` rank the true per-frame IoU ``labels`` (one array pair per expression).

    Returns:
        ``spearman``: the mean over expressions of the rank correlation of scores and labels (an expression whose
        labels or scores are all equal carries no ranking and counts 0); ``spearman_pooled``: over all frames at
        once; ``key_frame_iou``: the mean true IoU of the frame the scores pick (highest, earliest on ties, as
        :func:`~glus.inference.keyframes.select_key_frame`); ``oracle_iou`` and ``first_frame_iou``: the same
        for the best frame and for frame 0; ``l1``: the mean absolute error of the scores as IoU estimates.
    """
    from scipy.stats import spearmanr

    from glus.inference.keyframes import select_key_frame

    rhos, picked, best, first = [], [], [], []
    for s, y in zip(scores, labels):
        s, y = np.asarray(s, dtype=np.float64), np.asarray(y, dtype=np.float64)
        varied = len(y) > 1 and np.ptp(y) > 0 and np.ptp(s) > 0
        rho = float(spearmanr(s, y).statistic) if varied else 0.0
        rhos.append(0.0 if math.isnan(rho) else rho)
        picked.append(y[select_key_frame(s)])
        best.append(y.max())
        first.append(y[0])
    all_s, all_y = np.concatenate([np.asarray(s, np.float64) for s in scores]), np.concatenate(labels)
    pooled = float(spearmanr(all_s, all_y).statistic) if np.ptp(all_s) > 0 and np.ptp(all_y) > 0 else 0.0
    return {"expressions": len(rhos), "spearman": float(np.mean(rhos)), "spearman_pooled": pooled,
            "key_frame_iou": float(np.mean(picked)), "oracle_iou": float(np.mean(best)),
            "first_frame_iou": float(np.mean(first)), "l1": float(np.mean(np.abs(all_s - all_y)))}


def compare_selectors(expressions: Sequence[LabelledExpression], scorer: Any) -> dict[str, dict[str, float]]:
    """:func:`selection_metrics` of the trained ``scorer`` and of the heuristic on the same expressions."""
    from glus.inference.keyframes import score_first_pass

    labels = [e.labels for e in expressions]
    return {"trained": selection_metrics([score_first_pass(e.record, scorer)[0] for e in expressions], labels),
            "heuristic": selection_metrics([score_first_pass(e.record)[0] for e in expressions], labels)}


# ---------------------------------------------------------------------------------------------- fit


def _frames(expressions: Sequence[LabelledExpression]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``[SEG]`` frames of ``expressions`` as (inputs ``[N, D + 5]``, labels ``[N]``): a frame without ``[SEG]``
    scores 0 whatever the head says, so it teaches nothing."""
    from glus.model.key_frame_scorer import scorer_inputs

    xs = [scorer_inputs(e.record)[e.record.seg_generated] for e in expressions]
    ys = [e.labels[e.record.seg_generated] for e in expressions]
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys).astype(np.float32))


@dataclass
class ScorerFit:
    """What :func:`fit_scorer` returns: the head, its per-epoch history and the chosen epoch."""

    scorer: Any  # KeyFrameScorer
    history: list[dict[str, float]]
    best_epoch: int
    train: list[LabelledExpression]
    held_out: list[LabelledExpression]


def fit_scorer(expressions: Sequence[LabelledExpression], config: ScorerTrainConfig, *,
               progress: bool = True) -> ScorerFit:
    """Fit a :class:`~glus.model.key_frame_scorer.KeyFrameScorer` to the labelled expressions (module docstring)."""
    from tqdm.auto import tqdm

    from glus.model.key_frame_scorer import KeyFrameScorer, KeyFrameScorerConfig

    train, held = split_by_video(expressions, config.val_fraction, config.seed)
    x, y = _frames(train)
    if x.shape[0] == 0:
        raise GLUSError("no training frame said [SEG]: the first pass has nothing for a scorer to learn from")
    xv, yv = _frames(held) if held else (x[:0], y[:0])
    torch.manual_seed(config.seed)
    dim = expressions[0].record.embedding.shape[1]
    scorer = KeyFrameScorer(KeyFrameScorerConfig(dim, config.hidden_size, config.num_layers))
    scorer.fit_normalisation(x)
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    best, best_epoch, best_state, stale = math.inf, 0, None, 0
    bar = tqdm(range(1, config.epochs + 1), desc="scorer", unit="epoch", disable=not progress)
    for epoch in bar:
        scorer.train()
        total = 0.0
        for idx in torch.randperm(x.shape[0], generator=generator).split(config.batch_size):
            loss = (scorer(x[idx]) - y[idx]).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        scorer.eval()
        with torch.no_grad():
            val = float((scorer(xv) - yv).abs().mean()) if xv.shape[0] else math.nan
        row = {"epoch": epoch, "train_l1": total / x.shape[0], "val_l1": val}
        history.append(row)
        watched = val if xv.shape[0] else row["train_l1"]
        if watched < best - 1e-6:
            best, best_epoch, stale = watched, epoch, 0
            best_state = {k: v.clone() for k, v in scorer.state_dict().items()}
        else:
            stale += 1
        bar.set_postfix(train=f"{row['train_l1']:.4f}", val=f"{val:.4f}")
        if held and stale >= config.patience:
            break
    if held and best_state is not None:
        scorer.load_state_dict(best_state)
    elif not held:
        best_epoch = history[-1]["epoch"]
    return ScorerFit(scorer.eval(), history, int(best_epoch), list(train), list(held))


def draw_scorer_curve(history: Sequence[Mapping[str, float]], best_epoch: int, out_png: Path) -> Path | None:
    """Train and held-out L1 against the epoch, the kept epoch marked, as a PNG (matplotlib, headless)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no %s", out_png.name)
        return None
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_l1"] for r in history], label="train L1")
    if not all(math.isnan(r["val_l1"]) for r in history):
        ax.plot(epochs, [r["val_l1"] for r in history], label="held-out L1")
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept (epoch {best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("|predicted - true IoU|")
    ax.set_title("key-frame scorer")
    ax.legend()
    from glus.train.trainer import save_figure

    return save_figure(fig, out_png)


# ---------------------------------------------------------------------------------------------- the whole loop


@dataclass
class ScorerJob:
    """``glus train scorer``: where the labels come from and where the scorer goes.

    Attributes:
        dataset, split_dir, split: the training split (as :func:`glus.data.formats.load_dataset` takes it).
        work: folder for the first pass, the labels, the history, the curve and the report.
        out: folder the scorer is written to (the checkpoint's own folder serves it to ``--key-frame auto``).
        model: the checkpoint whose first passes are scored (and the InferSettings model options below); not
            needed with ``pred`` and ``labels``.
        pred, labels: an existing first pass (with ``.frame_features.npz``) and its ``--per-frame`` CSV, instead of
            steps 1 and 2.
        limit_videos: only the first ``N`` videos of the split for the first pass.
    """

    dataset: str
    split_dir: str
    work: str
    out: str
    model: str | None = None
    split: str | None = None
    pred: str | None = None
    labels: str | None = None
    limit_videos: int | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    max_batch: int = 16
    model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def label_first_pass(job: ScorerJob, *, progress: bool = True) -> tuple[Path, Path]:
    """Steps 1 and 2 (module docstring), each resumed or skipped when already done; returns (pred, labels CSV)."""
    from glus.eval.files import evaluate_to_files
    from glus.eval.report import report_paths
    from glus.inference.runner import SUMMARY_NAME, InferSettings, run_dataset

    work = Path(job.work)
    pred = work / FIRST_PASS_DIR
    settings = InferSettings(job.dataset, job.split_dir, str(pred), job.model, split=job.split, device=job.device,
                             dtype=job.dtype, key_frame="none", max_batch=job.max_batch,
                             limit_videos=job.limit_videos, save_frame_features=True, **dict(job.model_options))
    report = run_dataset(settings, progress=progress)
    if report.status != "complete":
        raise GLUSError(f"the first pass stopped ({report.status}); rerun the same command to resume", pred)
    paths = report_paths(work / LABELS_NAME)
    summary = pred / SUMMARY_NAME
    if not (paths["frames"].is_file() and paths["json"].is_file()
            and paths["json"].stat().st_mtime >= summary.stat().st_mtime):
        logger.info("labels: per-frame J of the first pass -> %s", paths["frames"])
        if job.limit_videos is not None:
            logger.info("(the first pass covers %d videos: the others are reported missing and left out)",
                        job.limit_videos)
        evaluate_to_files(job.dataset, job.split_dir, pred, paths["json"], split=job.split, per_frame=True)
    return pred, paths["frames"]


def train_scorer(job: ScorerJob, config: ScorerTrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """The whole loop: labels (unless ``job`` names them), fit, save into ``job.out``; returns the report."""
    from glus.eval.report import write_csv

    work = Path(job.work)
    work.mkdir(parents=True, exist_ok=True)
    if job.pred is not None and job.labels is not None:
        pred, labels = Path(job.pred), Path(job.labels)
    elif job.model is not None:
        pred, labels = label_first_pass(job, progress=progress)
    else:
        raise GLUSError("glus train scorer needs --model (to make the labels) or both --pred and --labels")
    expressions = load_labelled_expressions(job.dataset, job.split_dir, pred, labels, split=job.split)
    fit = fit_scorer(expressions, config, progress=progress)
    report: dict[str, Any] = {
        "data": {"dataset": job.dataset, "split_dir": str(job.split_dir), "first_pass": str(pred),
                 "labels": str(labels), "expressions": len(expressions),
                 "videos": len({e.video_id for e in expressions}),
                 "frames": int(sum(len(e.record) for e in expressions)),
                 "seg_frames": int(sum(int(e.record.seg_generated.sum()) for e in expressions)),
                 "held_out_videos": len({e.video_id for e in fit.held_out})},
        "settings": dataclasses.asdict(config), "best_epoch": fit.best_epoch, "epochs_run": len(fit.history),
        "train": compare_selectors(fit.train, fit.scorer),
        "held_out": compare_selectors(fit.held_out, fit.scorer) if fit.held_out else None,
    }
    fit.scorer.config.training = {k: report[k] for k in ("data", "settings", "best_epoch", "held_out")}
    fit.scorer.save_pretrained(job.out)
    write_csv(work / HISTORY_NAME, fit.history, ["epoch", "train_l1", "val_l1"])
    draw_scorer_curve(fit.history, fit.best_epoch, work / CURVE_NAME)
    report["scorer"] = str(job.out)
    atomic_write_json(work / REPORT_NAME, report, indent=2)
    return report


def read_scorer_report(work: str | Path) -> dict[str, Any]:
    """``<work>/scorer_report.json`` as :func:`train_scorer` wrote it."""
    return read_json_object(Path(work) / REPORT_NAME, "scorer report")


__all__ = ["LabelledExpression", "ScorerFit", "ScorerJob", "ScorerTrainConfig", "compare_selectors",
           "draw_scorer_curve", "fit_scorer", "label_first_pass", "load_labelled_expressions", "load_scorer_config",
           "read_frame_labels", "read_scorer_report", "selection_metrics", "split_by_video", "train_scorer"]
