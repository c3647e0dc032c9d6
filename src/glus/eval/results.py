"""What an evaluation produces (:class:`EvaluationResult`): shared by every protocol, so none imports another."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from glus.eval.scoring import ExpressionScores

__all__ = ["EvaluationResult"]


@dataclass
class EvaluationResult:
    """What one evaluation produced.

    Attributes:
        summary: the JSON-ready result (``J``, ``F``, ``J&F`` fractions, ``per_expression``, ``missing``, ...).
        scores: per-expression per-frame scores (for CSV reports); empty for protocols that do not score
            expressions one by one.
        extra_tables: further per-row tables a protocol wants written (name -> rows).
    """

    summary: dict[str, Any]
    scores: list[ExpressionScores] = field(default_factory=list)
    extra_tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
