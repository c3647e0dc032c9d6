"""Benchmark protocols: how per-frame J / F (and ReVOS's A / R) become the numbers papers report.

==============  ===========  ==================================================================================
dataset         protocol     aggregation (the official script it reproduces)
==============  ===========  ==================================================================================
``mevis``       ``mevis``    per expression the frame mean of J and of F; J, F = means over expressions;
``refytvos``                 J&F = (J + F) / 2 (MeViS ``tools/eval_mevis.py``; Ref-YouTube-VOS and LV-VIS
``lvvis``                    splits with ground truth are scored the same way)
``reasonvos``   ``mevis``    as above (GLUS ``utils/eval_reason_vos.py``)
``davis17``     ``visa``     as above with the ground truth of ``mask_dict.pkl``, plus the script's printout:
                             x100, rounded to 2 decimals at the end (VISA / GLUS ``utils/eval_davis.py``)
``davis17``     ``referformer``  DAVIS 2017 unsupervised toolkit over the four annotator sets
                             (:mod:`glus.eval.davis_unsupervised`)
``revos``       ``revos``    per expression J, F, A, R, each x100 and rounded to 2 decimals; referring and
                             reasoning = plain means of the rounded values over ``type_id`` 0 and 1 (JF = (J +
                             F) / 2 of those means), overall = (referring + reasoning) / 2; ``type_id`` 2 is
                             scored but enters no mean (VISA's ``eval_revos.py`` as shipped with GLUS)
==============  ===========  ==================================================================================

Errors: glus scores an expression whose prediction is missing, unreadable or of the wrong size as 0 and lists
it under ``missing``. ``official_drop_missing=True`` reproduces what the official script does instead: the
MeViS-style and Ref-DAVIS17 scripts crash on such an expression and leave it out of the means (only a missing
*video* folder scores 0 there; ReasonVOS's script skips both), ReVOS's script scores it 0 like glus. The
dropped keys are listed under ``dropped``.

ReVOS quirks reproduced by default (``corrected=False``): A and R on raw pixel values (see
:func:`glus.eval.metrics.revos_accuracy`) and rounding per expression before averaging; ``corrected=True``
computes A and R on binary masks and averages unrounded values.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from glus.data.formats import load_dataset
from glus.data.records import Dataset
from glus.errors import GLUSError, ParameterError
from glus.eval.results import EvaluationResult
from glus.eval.scoring import MISSING_EXPRESSION, MISSING_VIDEO, ExpressionScores, ScoreOptions, score_dataset

logger = logging.getLogger(__name__)

__all__ = ["EvaluationResult", "PROTOCOLS", "DEFAULT_PROTOCOL", "evaluate", "summarize"]

#: Protocols each dataset can be scored with; the first is the default.
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "mevis": ("mevis",),
    "refytvos": ("mevis",),
    "lvvis": ("mevis",),
    "reasonvos": ("mevis",),
    "davis17": ("visa", "referformer"),
    "revos": ("revos",),
}
DEFAULT_PROTOCOL = {name: choices[0] for name, choices in PROTOCOLS.items()}

# Failure levels at which each official script leaves an expression out of its means.
_OFFICIAL_DROPS: dict[str, frozenset[str]] = {
    "mevis": frozenset({MISSING_EXPRESSION}),
    "refytvos": frozenset({MISSING_EXPRESSION}),
    "lvvis": frozenset({MISSING_EXPRESSION}),
    "davis17": frozenset({MISSING_EXPRESSION}),
    "reasonvos": frozenset({MISSING_EXPRESSION, MISSING_VIDEO}),
    "revos": frozenset(),
}


def _mean(values: list[float]) -> float | None:
    """``np.mean`` of a list (the official reduction), ``None`` for an empty list instead of NaN."""
    return float(np.mean(values)) if values else None


def _round2(value: float) -> float:
    """``round(x, 2)`` of a ``numpy.float64``: what the ReVOS script applies to its numpy scores."""
    return float(round(np.float64(value), 2))


def _kept(scores: list[ExpressionScores], dataset: str, official_drop_missing: bool
          ) -> tuple[list[ExpressionScores], list[str]]:
    """The expressions that enter the means, and the keys left out (official mode only)."""
    if not official_drop_missing:
        return scores, []
    levels = _OFFICIAL_DROPS[dataset]
    kept = [s for s in scores if s.missing is None or s.missing_level not in levels]
    dropped = [s.key for s in scores if s.missing is not None and s.missing_level in levels]
    return kept, dropped


def _jf(kept: list[ExpressionScores]) -> dict[str, float | None]:
    j = [s.mean("j") for s in kept]
    f = [s.mean("f") for s in kept]
    if not kept:
        return {"J": None, "F": None, "J&F": None}
    return {"J": float(np.mean(j)), "F": float(np.mean(f)), "J&F": float((np.mean(j) + np.mean(f)) / 2)}


def _summarize_mevis(scores: list[ExpressionScores], kept: list[ExpressionScores]) -> dict[str, Any]:
    return {**_jf(kept), "per_expression": {s.key: {"J": s.mean("j"), "F": s.mean("f")} for s in scores}}


def _summarize_visa(scores: list[ExpressionScores], kept: list[ExpressionScores]) -> dict[str, Any]:
    out = _summarize_mevis(scores, kept)
    if kept:
        j = [s.mean("j") for s in kept]
        f = [s.mean("f") for s in kept]
        # eval_davis.py: float(np.mean(...)) x100, Python round to 2 decimals, only at the end.
        out["official"] = {"J": round(100 * float(np.mean(j)), 2), "F": round(100 * float(np.mean(f)), 2),
                           "J&F": round(100 * float((np.mean(j) + np.mean(f)) / 2), 2)}
    else:
        out["official"] = {"J": None, "F": None, "J&F": None}
    return out


def _summarize_revos(scores: list[ExpressionScores], kept: list[ExpressionScores], corrected: bool
                     ) -> dict[str, Any]:
    if any(s.expression.type_id is None for s in scores):
        raise GLUSError("the revos protocol needs a type_id (0, 1 or 2) on every expression")
    per_expression: dict[str, dict[str, Any]] = {}
    official_rows: dict[str, dict[str, float]] = {}
    for s in scores:
        j, f, a, r = s.mean("j"), s.mean("f"), s.mean("a"), s.mean("r")
        per_expression[s.key] = {"J": j, "F": f, "A": a, "R": r, "type_id": s.expression.type_id}
        if corrected:
            official_rows[s.key] = {"J": 100 * j, "F": 100 * f, "JF": 100 * (j + f) / 2, "A": 100 * a,
                                    "R": 100 * r}
        else:
            official_rows[s.key] = {"J": _round2(100 * j), "F": _round2(100 * f), "JF": _round2(100 * (j + f) / 2),
                                    "A": _round2(100 * a), "R": _round2(100 * r)}
    groups: dict[str, dict[str, float | None]] = {}
    for name, type_id in (("referring", 0), ("reason", 1)):
        rows = [official_rows[s.key] for s in kept if s.expression.type_id == type_id]
        group = {m: _mean([row[m] for row in rows]) for m in ("J", "F", "A", "R")}
        group["JF"] = None if group["J"] is None else (group["J"] + group["F"]) / 2
        groups[name] = group
    overall = {m: (None if groups["referring"][m] is None or groups["reason"][m] is None
                   else (groups["referring"][m] + groups["reason"][m]) / 2) for m in ("J", "F", "A", "R", "JF")}
    groups["overall"] = overall

    def frac(v: float | None) -> float | None:
        return None if v is None else v / 100

    return {"J": frac(overall["J"]), "F": frac(overall["F"]), "J&F": frac(overall["JF"]),
            "A": frac(overall["A"]), "R": frac(overall["R"]),
            "per_expression": per_expression,
            "official": {**groups, "per_expression": official_rows}}


def summarize(dataset: str, protocol: str, scores: list[ExpressionScores], *, official_drop_missing: bool = False,
              corrected: bool = False) -> dict[str, Any]:
    """Aggregate per-expression scores under one protocol (see the module doc)."""
    kept, dropped = _kept(scores, dataset, official_drop_missing)
    if protocol == "mevis":
        out = _summarize_mevis(scores, kept)
    elif protocol == "visa":
        out = _summarize_visa(scores, kept)
    elif protocol == "revos":
        out = _summarize_revos(scores, kept, corrected)
    else:
        raise GLUSError(f"protocol '{protocol}' does not aggregate per-expression scores")
    out["num_expressions"] = len(scores)
    out["num_scored"] = sum(s.missing is None for s in scores)
    out["missing"] = {s.key: s.missing for s in scores if s.missing is not None}
    out["dropped"] = dropped
    for name in ("J", "F", "J&F"):
        value = out.get(name)
        if value is not None and not math.isfinite(value):
            out[name] = None
    return out


def _resolve_protocol(dataset: str, protocol: str | None) -> str:
    if dataset not in PROTOCOLS:
        raise GLUSError(f"unknown dataset '{dataset}' (choose from {', '.join(PROTOCOLS)})")
    if protocol is None or protocol == "default":
        return DEFAULT_PROTOCOL[dataset]
    if protocol not in PROTOCOLS[dataset]:
        raise GLUSError(f"{dataset} has no protocol '{protocol}' (choose from {', '.join(PROTOCOLS[dataset])})")
    return protocol


def evaluate(dataset: str, split_dir: str | Path, pred_dir: str | Path, *, split: str | None = None,
             protocol: str | None = None, workers: int = 1, official_drop_missing: bool = False,
             corrected: bool = False, progress: Callable[[int], None] | None = None,
             on_start: Callable[[int], None] | None = None) -> EvaluationResult:
    """Score a folder of predicted masks against a split.

    Args:
        dataset: ``mevis``, ``refytvos``, ``davis17``, ``revos``, ``lvvis`` or ``reasonvos``.
        split_dir: the split's annotation folder (as :func:`glus.data.formats.load_dataset` takes it).
        pred_dir: ``<video>/<exp_id>/<frame>.png`` predictions.
        split: split name where the folder does not imply it.
        protocol: see :data:`PROTOCOLS` (default: the dataset's first).
        workers: processes.
        official_drop_missing: leave unusable predictions out as the official script does (see module doc).
        corrected: ReVOS: binary A / R and no per-expression rounding.
        progress: called with the number of expressions (or sequences) just finished.
        on_start: called once with the total number of work items before scoring starts.

    Returns:
        :class:`EvaluationResult`; ``summary`` holds ``J``, ``F``, ``J&F`` (fractions), ``per_expression``,
        ``missing``, ``dropped`` and protocol-specific fields.
    """
    protocol = _resolve_protocol(dataset, protocol)
    if corrected and protocol != "revos":
        logger.warning("corrected=True only changes ReVOS's A and R; the %s protocol ignores it", protocol)
    if workers < 1:
        raise ParameterError(f"{{workers}} must be at least 1, got {workers}")
    if protocol == "referformer":
        from glus.eval.davis_unsupervised import evaluate_referformer

        return evaluate_referformer(split_dir, pred_dir, split=split, workers=workers,
                                    official_drop_missing=official_drop_missing, progress=progress,
                                    on_start=on_start)
    data: Dataset = load_dataset(dataset, split_dir, split)
    options = ScoreOptions(revos=protocol == "revos", corrected=corrected)
    if options.revos and getattr(data, "foreground_path", None) is None:
        raise GLUSError("the revos protocol needs mask_dict_foreground.json beside the annotations", data.root)
    if on_start is not None:
        on_start(data.num_expressions)
    scores = score_dataset(data, pred_dir, options=options, workers=workers, progress=progress)
    summary = summarize(dataset, protocol, scores, official_drop_missing=official_drop_missing,
                        corrected=corrected)
    header = {"dataset": dataset, "protocol": protocol, "split": data.split, "split_dir": str(split_dir),
              "pred": str(pred_dir),
              "options": {"official_drop_missing": official_drop_missing, "corrected": corrected}}
    if summary["missing"]:
        logger.warning("%d of %d expressions have no usable prediction (scored 0%s)", len(summary["missing"]),
                       len(scores), ", left out as the official script does" if summary["dropped"] else "")
    return EvaluationResult({**header, **summary}, scores)
