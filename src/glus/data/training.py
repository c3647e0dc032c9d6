"""What one training step consumes: :class:`TrainingSample`, a clip and its expressions, ready for the model.

Built by the trainer's data pipeline (:mod:`glus.train.data`) from any dataset reader; consumed by
:meth:`glus.model.glus.GLUSModel.forward_train`. Only tensors and names: no model code here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

__all__ = ["TrainingSample"]


@dataclass
class TrainingSample:
    """One training sample: one video clip and E expressions, each its own conversation.

    Attributes:
        clip_pixels: ``[K + Q, 3, 224, 224]`` context frames, then query frames (the prompt's image order).
        sam_pixels: ``[Q, 3, S, S]`` the query frames for SAM-2.
        input_ids: E tensors ``[L_e]`` with ``image_token_index`` placeholders (K + Q each).
        labels: E tensors ``[L_e]``, -100 outside the assistant answers.
        masks: ``[E, Q, H, W]`` ground-truth masks (0/1) at the frames' original size.
        video: video id; ``expressions``: E expression keys; ``objects``: E object-id lists;
        frames: Q frame names (for the contrastive loss's "same frame" rule); ``dataset``: dataset name.
    """

    clip_pixels: torch.Tensor
    sam_pixels: torch.Tensor
    input_ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    masks: torch.Tensor
    video: str = ""
    expressions: list[str] = field(default_factory=list)
    objects: list[Sequence[int | str]] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)
    dataset: str = "mevis"
