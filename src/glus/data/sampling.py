"""Which frames GLUS looks at: context frames, query windows and training clips (the one source of truth).

A video of ``T`` frames is cut into ``K`` (``context_frames``) segments by ``np.linspace(0, T, K + 1,
dtype=int)``. The boundaries ``b`` are computed with numpy itself, exactly as the released code does, so that
float rounding of ``j * T / K`` gives the same integers.

- Inference (:func:`inference_context_frames`): context frame ``j`` is ``min(b[j] + c, b[j+1] - 1)`` with
  ``c = ceil(T / K) // 2``: a fixed offset into each segment (the middle of the official ``frame_clips`` list).
  With ``T = 10, K = 4``: ``b = [0, 2, 5, 7, 10]``, ``c = 1`` -> ``[1, 3, 6, 8]``.
- Training (:func:`sample_training_frames`): one context frame drawn uniformly from each segment
  ``[b[j], b[j+1])`` and ``Q`` (``query_frames``) consecutive query frames from a uniform start.
- The prompt at query step ``i`` (0-based, within a pass) holds the query frames of :func:`query_window`.

Short videos (``T < K``): some segments are empty, so ``b[j+1] - 1 < b[j]`` and the formula can give ``-1``.
The official inference indexes a Python list with it, i.e. it takes the *last* frame; glus returns that frame
index (``T - 1``) explicitly, so the same frames are used and every returned index is valid. Other context
frames repeat (``T = 2, K = 4`` -> ``[1, 0, 0, 1]``; ``T = 1`` -> ``[0, 0, 0, 0]``). The official training
loader never samples such videos (it draws another video while ``T < max(K, Q)``); the training sampler
refuses them the same way (:func:`min_training_frames`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def segment_bounds(num_frames: int, num_segments: int) -> np.ndarray:
    """Boundaries of ``num_segments`` segments of ``range(num_frames)``, shape [num_segments + 1] (int64).

    Segment ``j`` is ``range(b[j], b[j+1])``; it is empty for some ``j`` when ``num_frames < num_segments``.
    """
    if num_segments < 1:
        raise ValueError(f"need at least one segment, got {num_segments}")
    if num_frames < 0:
        raise ValueError(f"negative frame count {num_frames}")
    return np.linspace(0, num_frames, num_segments + 1, dtype=int).astype(np.int64)


def inference_context_frames(num_frames: int, num_context: int = 4) -> list[int]:
    """The ``num_context`` context frames the official inference uses for a ``num_frames``-frame video.

    Frame ``j`` = ``min(b[j] + ceil(T/K) // 2, b[j+1] - 1)``, with ``-1`` (an empty first segment of a video
    shorter than ``K``) meaning the last frame, as Python's list indexing in the released code makes it.
    """
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {num_frames}")
    if num_context == 0:  # no global view (the "local only" ablation)
        return []
    bounds = segment_bounds(num_frames, num_context)
    offset = math.ceil(num_frames / num_context) // 2
    frames = [min(int(bounds[j]) + offset, int(bounds[j + 1]) - 1) for j in range(num_context)]
    return [f % num_frames for f in frames]  # -1 -> T - 1; every other value is already in range


def query_window(step: int, query_frames: int = 4) -> list[int]:
    """Positions (within the pass) of the query frames in the prompt of query step ``step`` (0-based).

    The last ``query_frames`` steps up to and including ``step``: the official ``rel_pos_list``.
    """
    if step < 0 or query_frames < 1:
        raise ValueError(f"need step >= 0 and query_frames >= 1, got {step} and {query_frames}")
    return list(range(max(0, step + 1 - query_frames), step + 1))


def min_training_frames(num_context: int = 4, num_query: int = 4) -> int:
    """Shortest video the training sampler accepts (the official loader skips shorter ones)."""
    return max(num_context, num_query)


@dataclass(frozen=True)
class TrainingFrames:
    """Frame indices of one training clip: ``context`` (one per segment, increasing) then ``query``."""

    context: tuple[int, ...]
    query: tuple[int, ...]

    @property
    def all(self) -> tuple[int, ...]:
        """Context then query frames, the order in which the model receives the images."""
        return self.context + self.query


def sample_training_frames(num_frames: int, num_context: int, num_query: int,
                           rng: np.random.Generator) -> TrainingFrames:
    """Draw one training clip: a uniform frame from each of ``num_context`` segments and ``num_query``
    consecutive frames from a uniform start in ``[0, num_frames - num_query]``.

    Raises ``ValueError`` for a video shorter than :func:`min_training_frames` (some segment would be empty or
    the query run would not fit).
    """
    if num_query < 1:
        raise ValueError(f"need at least one query frame, got {num_query}")
    if num_frames < min_training_frames(num_context, num_query):
        raise ValueError(f"video of {num_frames} frames is shorter than the "
                         f"{min_training_frames(num_context, num_query)} a training clip needs")
    start = int(rng.integers(0, num_frames - num_query + 1))
    context: tuple[int, ...] = ()
    if num_context > 0:
        bounds = segment_bounds(num_frames, num_context)
        context = tuple(int(rng.integers(bounds[j], bounds[j + 1])) for j in range(num_context))
    return TrainingFrames(context=context, query=tuple(range(start, start + num_query)))
