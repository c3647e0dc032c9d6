"""Evaluation outputs: the result JSON, per-expression and per-frame CSV tables, and the headline numbers.

Every file is written atomically (a temporary file in the destination folder, then ``os.replace``), so an
interrupted run never leaves a half-written result behind.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from glus.eval.protocols import EvaluationResult
from glus.fileio import atomic_write_text
from glus.eval.scoring import iter_frames

logger = logging.getLogger(__name__)

__all__ = ["write_json", "write_csv", "expression_rows", "frame_rows", "report_paths",
           "write_reports", "SummaryTable", "summary_table"]


def _json_safe(value: Any) -> Any:
    """NaN / inf become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (floats printed with full precision: ``repr`` round-trips), written atomically."""
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> None:
    """A CSV with a header row, written atomically; missing cells are empty."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def expression_rows(result: EvaluationResult) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per expression: ``expression, video, exp_id, [type_id,] J, F, J&F, [A, R,] missing``."""
    summary = result.summary
    per = summary.get("per_expression", {})
    revos = summary.get("protocol") == "revos"
    columns = ["expression", "video", "exp_id"] + (["type_id"] if revos else []) + ["J", "F", "J&F"]
    columns += (["A", "R"] if revos else []) + ["missing"]
    rows = []
    if result.scores:
        items = [(s.key, s.expression.video_id, s.expression.exp_id) for s in result.scores]
    else:  # protocols that do not score expressions one by one key them "<video>_<exp_id>" all the same
        items = [(k, *k.rsplit("_", 1)) for k in per]
    for key, video, exp_id in items:
        values = per.get(key, {})
        j, f = values.get("J"), values.get("F")
        row = {"expression": key, "video": video, "exp_id": exp_id, "J": j, "F": f,
               "J&F": None if j is None or f is None else (j + f) / 2,
               "missing": summary.get("missing", {}).get(key)}
        if revos:
            row.update(type_id=values.get("type_id"), A=values.get("A"), R=values.get("R"))
        rows.append(row)
    return rows, columns


def frame_rows(result: EvaluationResult) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per scored frame: ``expression, frame_index, frame, J, F[, A, R]``."""
    revos = result.summary.get("protocol") == "revos"
    columns = ["expression", "frame_index", "frame", "J", "F"] + (["A", "R"] if revos else [])
    rows = []
    for s, t in iter_frames(result.scores):
        row = {"expression": s.key, "frame_index": t, "frame": s.frames[t], "J": float(s.j[t]), "F": float(s.f[t])}
        if revos:
            row.update(A=float(s.a[t]), R=float(s.r[t]))
        rows.append(row)
    return rows, columns


def report_paths(output: str | Path) -> dict[str, Path]:
    """``RESULT.json`` -> its CSV companions: ``RESULT.csv`` (per expression), ``RESULT.frames.csv``."""
    output = Path(output)
    stem = output.with_suffix("") if output.suffix.lower() == ".json" else output
    return {"json": output, "csv": stem.with_name(stem.name + ".csv"),
            "frames": stem.with_name(stem.name + ".frames.csv")}


def write_reports(result: EvaluationResult, output: str | Path, *, per_frame: bool = False) -> dict[str, Path]:
    """Write the result JSON, the per-expression CSV and (``per_frame``) the per-frame CSV; return the paths."""
    paths = report_paths(output)
    written = {}
    rows, columns = expression_rows(result)
    write_csv(paths["csv"], rows, columns)
    written["csv"] = paths["csv"]
    if per_frame and not result.scores:
        logger.warning("the %s protocol has no per-frame scores of single expressions; no per-frame CSV",
                       result.summary.get("protocol"))
    elif per_frame:
        rows, columns = frame_rows(result)
        write_csv(paths["frames"], rows, columns)
        written["frames"] = paths["frames"]
    for name, table in result.extra_tables.items():
        if table:
            extra = paths["json"].with_name(f"{paths['csv'].stem}.{name}.csv")
            write_csv(extra, table, list(table[0]))
            written[name] = extra
    write_json(paths["json"], result.summary)  # last: its presence means the run completed
    written["json"] = paths["json"]
    return written


def _pct(value: float | None, scale: float = 100.0) -> str:
    return "-" if value is None else f"{value * scale:.2f}"


@dataclass(frozen=True)
class SummaryTable:
    """The headline numbers of a result as a table of text cells (percent), for a front end to draw.

    Attributes:
        title: dataset and split; caption: protocol, expressions scored and missing.
        columns: column names; the columns from ``first_number`` on hold numbers (right-aligned).
        rows: one list of cells per row, as many as ``columns``.
    """

    title: str
    columns: list[str]
    first_number: int
    rows: list[list[str]]
    caption: str


def summary_table(summary: dict[str, Any]) -> SummaryTable:
    """The headline numbers of an evaluation summary (:attr:`EvaluationResult.summary`), per protocol."""
    protocol = summary.get("protocol", "")
    title = f"{summary.get('dataset', '')} {summary.get('split', '')}".strip()
    official = summary.get("official", {})
    if protocol == "revos":
        columns, first_number = ["group", "J", "F", "J&F", "A", "R"], 1
        rows = [[group, *(_pct(official.get(group, {}).get(k), 1.0) for k in ("J", "F", "JF", "A", "R"))]
                for group in ("referring", "reason", "overall")]
    elif protocol == "referformer":
        columns, first_number = ["annotator set", "J&F", "J", "F"], 1
        rows = [[name, *(_pct(g.get(k)) for k in ("J&F-Mean", "J-Mean", "F-Mean"))]
                for name, g in official.get("annotators", {}).items()]
        rows.append(["mean", _pct(summary.get("J&F")), _pct(summary.get("J")), _pct(summary.get("F"))])
    else:
        columns, first_number = ["J&F", "J", "F"], 0
        rows = [[_pct(summary.get("J&F")), _pct(summary.get("J")), _pct(summary.get("F"))]]
    n, scored = summary.get("num_expressions", 0), summary.get("num_scored", 0)
    caption = f"{protocol} protocol: {scored} of {n} expressions scored"
    if summary.get("missing"):
        caption += f", {len(summary['missing'])} without a usable prediction"
        caption += " (left out, as the official script does)" if summary.get("dropped") else " (scored 0)"
    return SummaryTable(title, columns, first_number, rows, caption)
