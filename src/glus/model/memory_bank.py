"""GLUS's SAM-2 memory bank: which past steps a frame attends to, and the per-expression store of memories.

One :class:`MemoryBank` belongs to one expression and one pass (forward or backward) and is owned by the caller,
never by the model. Memories are keyed by the step index within the pass (0 at the pass's first query frame);
the bank is cleared (or a new one made) at step 0.

The selection rule (:func:`memory_steps`) is GLUS's variant of SAM-2's ``_prepare_memory_conditioned_features``:
for ``t_pos`` in ``0 .. num_maskmem-1`` with ``t_rel = num_maskmem - t_pos``, ``t_rel == 1`` selects ``f - 1``
and every other ``t_rel`` selects ``((f - 2) // r) * r - (t_rel - 2) * r`` (stride ``r``: 1 in training, 3 at
inference); negative steps are skipped, and so are steps not stored. Memories are concatenated in ``t_pos`` order
(oldest first, ``f - 1`` last), which the memory attention's result depends on. Unlike SAM-2 there is no
conditioning frame, no temporal position encoding and no object pointer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


def memory_steps(step: int, stride: int, num_maskmem: int = 7) -> list[int]:
    """Candidate memory steps for the frame at ``step``, in attention order (before checking what is stored).

    Args:
        step: step index f of the current frame within its pass (>= 0).
        stride: temporal stride r of the non-adjacent memories (>= 1).
        num_maskmem: SAM-2's ``num_maskmem`` (7). GLUS uses every ``t_pos`` for past frames (SAM-2 reserves
            ``t_pos = 0`` for conditioning frames), so up to ``num_maskmem`` past steps are looked up.
    Returns:
        steps >= 0, ordered by ``t_pos`` (``t_rel`` from ``num_maskmem`` down to 1).
    """
    if step < 0 or stride < 1 or num_maskmem < 1:
        raise ValueError(f"invalid memory query: step={step}, stride={stride}, num_maskmem={num_maskmem}")
    steps = []
    for t_pos in range(num_maskmem):
        t_rel = num_maskmem - t_pos
        if t_rel == 1:
            prev = step - 1
        else:
            prev = ((step - 2) // stride) * stride - (t_rel - 2) * stride
        if prev >= 0:
            steps.append(prev)
    return steps


def oldest_needed_step(next_step: int, stride: int, num_maskmem: int = 7) -> int:
    """The smallest step any frame at ``next_step`` or later can still attend to.

    The rule's candidates never decrease as the step grows, so the bound of ``next_step`` holds for every
    later step too; memories below it can be dropped without changing any result (and must be, or a long video's
    bank would grow with its length).
    """
    return min(memory_steps(next_step, stride, num_maskmem), default=next_step)


@dataclass(frozen=True)
class MemoryEntry:
    """One stored memory: the memory encoder's output for one expression at one step.

    Attributes:
        features: ``[C_mem, H, W]`` (H = W = image_size / 16).
        pos_enc: ``[C_mem, H, W]`` sine position encoding of the features (SAM-2's ``maskmem_pos_enc``, used raw).
    """

    features: torch.Tensor
    pos_enc: torch.Tensor


class MemoryBank:
    """Memories of one expression in one pass, keyed by step index (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[int, MemoryEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, step: object) -> bool:
        return step in self._entries

    @property
    def steps(self) -> list[int]:
        """Stored step indices, ascending."""
        return sorted(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def add(self, step: int, features: torch.Tensor, pos_enc: torch.Tensor) -> None:
        """Store the memory of ``step`` (``[C_mem, H, W]`` each; detached). A step is written once per pass."""
        if step in self._entries:
            raise ValueError(f"memory bank already holds step {step}; use a new bank (or clear it) for a new pass")
        if features.dim() != 3 or features.shape != pos_enc.shape:
            raise ValueError(f"memory features/pos_enc must both be [C, H, W], got {tuple(features.shape)} "
                             f"and {tuple(pos_enc.shape)}")
        self._entries[step] = MemoryEntry(features.detach(), pos_enc.detach())

    def forget_before(self, step: int) -> None:
        """Drop the memories of steps ``< step`` (see :func:`oldest_needed_step`)."""
        for old in [s for s in self._entries if s < step]:
            del self._entries[old]

    def get(self, step: int) -> MemoryEntry:
        return self._entries[step]

    def select(self, step: int, stride: int, num_maskmem: int = 7) -> list[int]:
        """The stored steps the frame at ``step`` attends to, in concatenation order (:func:`memory_steps`)."""
        chosen = []
        for prev in memory_steps(step, stride, num_maskmem):
            if prev in self._entries:
                chosen.append(prev)
            else:
                logger.debug("memory step %d not in the bank (query step %d, stride %d): skipped", prev, step, stride)
        return chosen

    def gather(self, steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate the memories of ``steps`` as attention tokens.

        Returns:
            memory ``[len(steps) * H * W, C_mem]`` and its position encoding, same shape; token order is
            step by step (in the given order), then row-major over ``H x W``.
        """
        if not steps:
            raise ValueError("no memory steps to gather")
        feats = [self._entries[s].features.flatten(1).transpose(0, 1) for s in steps]
        pos = [self._entries[s].pos_enc.flatten(1).transpose(0, 1) for s in steps]
        return torch.cat(feats, dim=0), torch.cat(pos, dim=0)
