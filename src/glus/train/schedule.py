"""Learning-rate schedule of the GLUS recipe: linear warm-up, then linear decay to 0 (DeepSpeed's ``WarmupDecayLR``).

The authors ran DeepSpeed 0.15.1, whose ``WarmupDecayLR`` leaves the optimizer's lr alone when it is built: the
first optimizer step runs at the configured peak lr, the scheduler's first ``step()`` then sets 0 for step 2, and the
warm-up proper starts from there (step 3 at ``peak / warmup``, ...). ``first_step_at_peak=True`` reproduces that
(default); ``False`` starts the warm-up at step 1 as intended (step 1 at lr 0).

With ``i`` the scheduler's iteration (0 for the first step that follows the warm-up start):
``factor(i) = i / warmup`` while ``i < warmup``, then ``max(0, (total - i) / max(1, total - warmup))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["WarmupDecay", "warmup_decay_scheduler"]


@dataclass(frozen=True)
class WarmupDecay:
    """The lr factor (of the peak lr) of every optimizer step.

    Attributes:
        total_steps: steps until the lr reaches 0 (the authors: epochs x steps_per_epoch).
        warmup_steps: linear warm-up length (the authors: 100).
        first_step_at_peak: DeepSpeed 0.15.1's first step at the peak lr (see the module docstring).
    """

    total_steps: int
    warmup_steps: int = 100
    first_step_at_peak: bool = True

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {self.total_steps}, "
                             f"{self.warmup_steps}")

    def _factor(self, iteration: int) -> float:
        if iteration < self.warmup_steps:
            return iteration / self.warmup_steps
        return max(0.0, (self.total_steps - iteration) / max(1, self.total_steps - self.warmup_steps))

    def factor(self, step: int) -> float:
        """Factor of optimizer step ``step`` (1-based)."""
        if step < 1:
            raise ValueError(f"optimizer steps count from 1, got {step}")
        if self.first_step_at_peak:
            return 1.0 if step == 1 else self._factor(step - 2)
        return self._factor(step - 1)


def warmup_decay_scheduler(optimizer: torch.optim.Optimizer, schedule: WarmupDecay) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following ``schedule``: built before step 1, stepped after every optimizer step (its
    ``state_dict`` resumes it)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: schedule.factor(done + 1))
