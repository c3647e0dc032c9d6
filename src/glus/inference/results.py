"""What inference produces: per-frame predictions, where they go (sinks), and per-expression results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from glus.inference.keyframes import frame_quality


@dataclass(frozen=True)
class FramePrediction:
    """The prediction of one expression on one frame.

    Attributes:
        mask: ``(H, W)`` bool, at the frame's original size (logits > 0).
        seg_generated: whether the model emitted ``[SEG]`` for the frame (else the mask is blank).
        iou: SAM-2's predicted IoU of the chosen mask (0 when no ``[SEG]``).
        object_score: SAM-2's object-score logit (``-inf`` when no ``[SEG]``).
        embedding: ``[prompt_dim]`` float32 the ``[SEG]`` prompt that made the mask (``None`` when no ``[SEG]``):
            an input of the trained key-frame scorer (:mod:`glus.model.key_frame_scorer`).
    """

    mask: np.ndarray
    seg_generated: bool
    iou: float = 0.0
    object_score: float = float("-inf")
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def area(self) -> float:
        """The fraction of the frame the mask covers."""
        return float(np.count_nonzero(self.mask)) / max(1, self.mask.size)

    @property
    def score(self) -> float:
        """Frame quality used by the built-in key-frame selector (:func:`glus.inference.keyframes.frame_quality`)."""
        return frame_quality(self.iou, self.object_score, self.seg_generated)


@dataclass(frozen=True)
class KeyFrameChoice:
    """Where one expression's passes started: what a run with a sink returns instead of the masks.

    Attributes:
        key_frame: the key frame the passes propagate from (``None``: one forward pass from frame 0).
        first_pass_scores: ``[T]`` the selector's first-pass frame scores (only with ``key_frame="auto"``).
        selector: what scored them: ``"trained"`` (the checkpoint's key-frame scorer) or ``"heuristic"``
            (:func:`glus.inference.keyframes.frame_quality`); ``None`` without ``key_frame="auto"``.
    """

    key_frame: int | None
    first_pass_scores: np.ndarray | None = None
    selector: str | None = None


class MaskSink(Protocol):
    """Receives final predictions as they are produced (frames may arrive out of order with key frames)."""

    def put(self, expression_index: int, frame_index: int, prediction: FramePrediction) -> None: ...


@dataclass
class ExpressionResult:
    """All frames of one expression.

    Attributes:
        expression: the text as given.
        masks: ``[T, H, W]`` bool.
        seg_generated: ``[T]`` bool.
        scores: ``[T]`` float, the frame quality of the pass that produced each frame's mask.
        key_frame: the key frame used (``None``: one forward pass from frame 0).
        first_pass_scores: ``[T]`` scores of the selector's first pass (only with ``key_frame="auto"``).
        key_frame_selector: what scored the first pass (:attr:`KeyFrameChoice.selector`).
    """

    expression: str
    masks: np.ndarray
    seg_generated: np.ndarray
    scores: np.ndarray
    key_frame: int | None = None
    first_pass_scores: np.ndarray | None = None
    key_frame_selector: str | None = None


@dataclass
class CollectSink:
    """Keeps every prediction in memory (for the Python API and tests; the CLI writes PNGs instead)."""

    num_frames: int
    num_expressions: int
    predictions: dict[tuple[int, int], FramePrediction] = field(default_factory=dict)

    def put(self, expression_index: int, frame_index: int, prediction: FramePrediction) -> None:
        self.predictions[(expression_index, frame_index)] = prediction

    def result(self, expression_index: int, expression: str, choice: KeyFrameChoice) -> ExpressionResult:
        preds = []
        for t in range(self.num_frames):
            try:
                preds.append(self.predictions[(expression_index, t)])
            except KeyError:
                raise RuntimeError(f"no prediction for expression {expression_index}, frame {t}") from None
        return ExpressionResult(
            expression=expression,
            masks=np.stack([p.mask for p in preds]),
            seg_generated=np.array([p.seg_generated for p in preds]),
            scores=np.array([p.score for p in preds], dtype=np.float64),
            key_frame=choice.key_frame,
            first_pass_scores=choice.first_pass_scores,
            key_frame_selector=choice.selector,
        )
