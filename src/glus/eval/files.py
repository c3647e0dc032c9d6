"""Evaluate a prediction folder into result files: ``RESULT.json`` and its CSVs (:mod:`glus.eval.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from glus.errors import GLUSError, ParameterError
from glus.eval.protocols import EvaluationResult, evaluate
from glus.eval.report import write_reports

__all__ = ["check_output", "evaluate_to_files"]


def check_output(output: str | Path) -> Path:
    """Fail before a (possibly long) evaluation if the result file ``output`` cannot be written; create its folder."""
    output = Path(output)
    if output.exists() and output.is_dir():
        raise ParameterError("{output} must be a file name (RESULT.json), not a folder", output)
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GLUSError(f"cannot create the output folder: {exc.strerror or exc}", parent) from None
    if not parent.is_dir():
        raise GLUSError("the output folder is not a folder", parent)
    return output


def evaluate_to_files(dataset: str, split_dir: str | Path, pred_dir: str | Path, output: str | Path, *,
                      split: str | None = None, protocol: str | None = None, workers: int = 1,
                      per_frame: bool = False, official_drop_missing: bool = False, corrected: bool = False,
                      progress: Callable[[int], None] | None = None,
                      on_start: Callable[[int], None] | None = None) -> tuple[EvaluationResult, dict[str, Path]]:
    """Score ``pred_dir`` against a split (:func:`glus.eval.protocols.evaluate`) and write the reports.

    Args:
        output: ``RESULT.json`` to write; ``RESULT.csv`` (per expression) and, with ``per_frame``,
            ``RESULT.frames.csv`` go beside it (:func:`glus.eval.report.write_reports`). Checked before scoring.
        the others: as :func:`glus.eval.protocols.evaluate` takes them.

    Returns:
        The result and the files written (``{"json": ..., "csv": ..., ...}``).
    """
    output = check_output(output)
    result = evaluate(dataset, split_dir, pred_dir, split=split, protocol=protocol, workers=workers,
                      official_drop_missing=official_drop_missing, corrected=corrected, progress=progress,
                      on_start=on_start)
    tiers_file = Path(split_dir) / "tiers.json"
    if tiers_file.is_file():  # a split of glus's synthetic benchmark: J, F and J&F per tier as well
        from glus.data.benchmark import read_tiers, tier_scores

        result.summary["tiers"] = tier_scores(result.summary["per_expression"], read_tiers(split_dir))
    return result, write_reports(result, output, per_frame=per_frame)
