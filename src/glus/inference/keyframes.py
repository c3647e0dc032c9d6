"""Key frame selection (KFS): where a video's passes start, and how the built-in selector picks the frame.

GLUS segments a video in one or two *passes* per expression (spec section 4.4): without a key frame, one
forward pass over frames ``0..T-1``; with key frame ``k > 0``, a forward pass over ``k..T-1`` and then, with
a cleared memory bank, a backward pass over ``k, k-1, .., 0`` whose masks fill frames ``< k``.

Key frames come from three places:

* the released JSON files ``{"<video>_<exp_id>": "<frame name>"}`` (:func:`load_key_frame_json`), resolved
  as the authors' script does: the frame *number* is located among the sorted frame numbers of the video;
* an explicit index per call;
* the built-in self-refining selector (:func:`select_key_frame`): a first forward pass scores every frame
  (:func:`score_first_pass`: the checkpoint's trained scorer, :mod:`glus.model.key_frame_scorer`, where it has one,
  else the untrained heuristic :func:`frame_quality`), the best frame becomes the key frame, and the two passes run
  from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from glus.errors import GLUSError, ParameterError
from glus.fileio import read_json

if TYPE_CHECKING:
    from glus.model.key_frame_scorer import FirstPassRecord, KeyFrameScorer

#: Where an expression's passes start: ``None`` (one forward pass from frame 0), a frame index, or ``"auto"`` (the
#: built-in selector).
KeyFrame = int | str | None
#: The key-frame settings that name no frame (what a dataset run takes; its frames come from key-frame files).
KEY_FRAME_MODES = ("none", "auto")
#: What scores the first pass of ``key_frame="auto"``: the checkpoint's trained scorer, or the heuristic.
TRAINED, HEURISTIC = "trained", "heuristic"


@dataclass(frozen=True)
class Pass:
    """One pass of the per-frame protocol: the true frame indices visited, in order.

    The memory bank is cleared at the first frame of every pass, and memory keys are the step index
    within the pass (0 at ``frames[0]``).
    """

    frames: tuple[int, ...]
    direction: str  # "forward" or "backward"


def plan_passes(num_frames: int, key_frame: int | None) -> list[Pass]:
    """The passes of spec section 4.4 for a video of ``num_frames`` frames and an optional key frame index."""
    if num_frames <= 0:
        raise ValueError("a video needs at least one frame")
    k = 0 if key_frame is None else int(key_frame)
    if not 0 <= k < num_frames:
        raise ValueError(f"key frame {k} outside 0..{num_frames - 1}")
    passes = [Pass(tuple(range(k, num_frames)), "forward")]
    if k > 0:
        passes.append(Pass(tuple(range(k, -1, -1)), "backward"))
    return passes


def merge_passes(passes: Sequence[Pass], num_frames: int) -> np.ndarray:
    """Which pass provides each frame's final mask: ``[T]`` int array of ``(pass index, step index)`` rows.

    Later passes overwrite earlier ones (the backward pass owns frames ``<= k``, as in the released code;
    its first step re-segments the key frame itself, which the authors' script then writes over the
    forward pass's key-frame mask).
    """
    owner = np.full((num_frames, 2), -1, dtype=np.int64)
    for p_idx, p in enumerate(passes):
        for step, frame in enumerate(p.frames):
            owner[frame] = (p_idx, step)
    if (owner < 0).any():
        missing = np.flatnonzero(owner[:, 0] < 0).tolist()
        raise ValueError(f"passes leave frames {missing} without a mask")
    return owner


def load_key_frame_json(path: str | Path) -> dict[str, str]:
    """Read a released key-frame file ``{"<video>_<exp_id>": "<frame name>"}``; one-line error if malformed."""
    path = Path(path)
    data = read_json(path, "key-frame file", unreadable="not a readable JSON file ({detail})")
    if not isinstance(data, dict):
        raise GLUSError("expected a JSON object mapping '<video>_<exp_id>' to a frame name", path)
    out: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, (str, int)):
            raise GLUSError(f"entry {key!r}: frame name must be a string or integer, got {value!r}", path)
        out[str(key)] = str(value)
    return out


def parse_key_frame(value: KeyFrame, *, frame_index: bool = True) -> KeyFrame:
    """A key-frame setting as given by a user or caller, checked: ``None``, ``"auto"`` or a frame index ``>= 0``.

    ``None``, ``"none"`` and ``""`` mean one forward pass; ``"auto"`` the built-in selector; an ``int`` or a
    decimal string a frame index (not checked against a video's length here). Text is read case-insensitively.
    ``frame_index=False`` takes only ``none`` and ``auto`` (dataset runs, whose indices come from key-frame files).

    Raises:
        ParameterError: anything else, naming the parameter ``key_frame``.
    """
    if value is None:
        return None
    index = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("none", ""):
            return None
        if text == "auto":
            return "auto"
        try:
            index = int(text)
        except ValueError:
            index = None
    if not frame_index or isinstance(index, bool) or not isinstance(index, int):
        choices = "none, auto or a frame index" if frame_index else f"one of {', '.join(KEY_FRAME_MODES)}"
        raise ParameterError(f"{{key_frame}} must be {choices}, got {value!r}")
    if index < 0:
        raise ParameterError(f"{{key_frame}} must be >= 0, got {index}")
    return index


def resolve_key_frame(frame: str | int, frame_names: Sequence[str], where: str = "") -> int:
    """Index of a key frame given by name or number among ``frame_names``.

    The released script compares frame *numbers* (``int(name)``) so that ``"5"``, ``"00005"`` and
    ``"00005.jpg"`` all name the same frame; names that are not numbers are matched literally.
    """
    text = str(frame)
    stem = text.rsplit(".", 1)[0] if "." in text else text
    if stem in frame_names:
        return list(frame_names).index(stem)
    try:
        number = int(stem)
        numbers = [int(Path(n).stem) for n in frame_names]
    except ValueError:
        raise GLUSError(f"key frame {text!r} is not one of the video's frames", where or None) from None
    if number not in numbers:
        raise GLUSError(f"key frame {text!r} is not one of the video's frames", where or None)
    # The official code locates the number among the sorted frame numbers; our frame order is the
    # dataset's (sorted) order, so the position in ``frame_names`` is the same index.
    return numbers.index(number)


def frame_quality(iou_prediction: float, object_score_logit: float, seg_generated: bool) -> float:
    """The built-in per-frame quality score used by the self-refining key-frame selector.

    ``score = IoU_pred * sigmoid(object_score)`` from SAM-2's own heads on the first pass: the predicted IoU
    says how well the mask fits what the prompt points at, the object score whether anything is there at
    all. A frame whose turn did not produce ``[SEG]`` scores 0 (it has no mask to trust).
    """
    if not seg_generated:
        return 0.0
    return float(iou_prediction) * (1.0 / (1.0 + math.exp(-float(object_score_logit))))


def score_first_pass(record: "FirstPassRecord", scorer: "KeyFrameScorer | None" = None) -> tuple[np.ndarray, str]:
    """``[T]`` scores of one expression's first pass and what made them (:data:`TRAINED` or :data:`HEURISTIC`).

    With a trained ``scorer``, its predicted IoU of every frame's mask; without one, :func:`frame_quality`.
    """
    if scorer is not None:
        return scorer.score(record), TRAINED
    quality = [frame_quality(iou, obj, seg) for iou, obj, seg in zip(record.iou, record.object_score,
                                                                     record.seg_generated)]
    return np.array(quality, dtype=np.float64), HEURISTIC


def select_key_frame(scores: Sequence[float]) -> int:
    """The most reliable frame: the highest score, the earliest on ties (so a flat score keeps one pass)."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("scores must be a non-empty 1-D sequence")
    arr = np.where(np.isfinite(arr), arr, -np.inf)
    return int(np.argmax(arr))
