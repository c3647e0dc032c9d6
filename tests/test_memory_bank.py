"""GLUS memory-frame rule and the per-expression memory bank."""

from __future__ import annotations

import math

import pytest
import torch

from glus.model.memory_bank import MemoryBank, memory_steps


def _expected(f: int, r: int) -> list[int]:
    """Independent reading of the rule: the previous step, plus the six strided steps ending at the largest
    multiple of r not after f - 2; oldest first, the previous step last."""
    base = math.floor((f - 2) / r) * r
    strided = sorted(x for x in (base - k * r for k in range(6)) if x >= 0)
    return strided + ([f - 1] if f >= 1 else [])


@pytest.mark.parametrize("stride", [1, 3])
def test_rule_matches_independent_transcription(stride: int) -> None:
    for f in range(0, 200):
        assert memory_steps(f, stride) == _expected(f, stride), f


def test_rule_known_cases() -> None:
    # stride 3 (inference): the counts recorded by the official run are 0,1,2,2,2,3,3,3,4,4 for steps 0..9
    assert [len(memory_steps(f, 3)) for f in range(10)] == [0, 1, 2, 2, 2, 3, 3, 3, 4, 4]
    assert memory_steps(0, 3) == []
    assert memory_steps(1, 3) == [0]
    assert memory_steps(3, 3) == [0, 2]
    assert memory_steps(4, 3) == [0, 3]
    assert memory_steps(5, 3) == [0, 3, 4]
    assert memory_steps(8, 3) == [0, 3, 6, 7]
    assert memory_steps(20, 3) == [3, 6, 9, 12, 15, 18, 19]
    # stride 1 (training): the last seven steps
    assert memory_steps(3, 1) == [0, 1, 2]
    assert memory_steps(10, 1) == [3, 4, 5, 6, 7, 8, 9]
    # never more than num_maskmem memories, never the current step, no duplicates
    for r in (1, 2, 3, 5):
        for f in range(100):
            steps = memory_steps(f, r)
            assert len(steps) <= 7 and len(set(steps)) == len(steps) and all(0 <= s < f for s in steps)


def test_rule_num_maskmem_and_errors() -> None:
    assert memory_steps(10, 1, num_maskmem=3) == [7, 8, 9]
    assert memory_steps(10, 3, num_maskmem=1) == [9]
    for bad in ((-1, 3), (2, 0)):
        with pytest.raises(ValueError):
            memory_steps(*bad)


def _entry(value: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((2, 3, 3), value), torch.full((2, 3, 3), -value)


def test_bank_select_skips_missing_and_keeps_order() -> None:
    bank = MemoryBank()
    for step in (0, 2, 3, 4, 6):  # step 5 never written (e.g. a frame without [SEG])
        bank.add(step, *_entry(step))
    assert bank.steps == [0, 2, 3, 4, 6] and len(bank) == 5 and 3 in bank and 5 not in bank
    assert bank.select(7, 3) == [0, 3, 6]  # rule: [0, 3, 6]
    assert bank.select(6, 1) == [0, 2, 3, 4]  # rule: [0, 1, 2, 3, 4, 5], 1 and 5 absent
    memory, pos = bank.gather([3, 0])
    assert memory.shape == (18, 2) and pos.shape == (18, 2)
    # token order: step by step in the given order, then row-major over H x W
    assert torch.equal(memory[:9], torch.full((9, 2), 3.0)) and torch.equal(memory[9:], torch.zeros(9, 2))
    assert torch.equal(pos[:9], torch.full((9, 2), -3.0))


def test_bank_gather_layout_is_channels_last() -> None:
    bank = MemoryBank()
    feats = torch.arange(2 * 2 * 3, dtype=torch.float32).view(2, 2, 3)  # [C=2, H=2, W=3]
    bank.add(0, feats, feats + 100)
    memory, pos = bank.gather([0])
    assert torch.equal(memory, feats.flatten(1).T) and torch.equal(pos, (feats + 100).flatten(1).T)


def test_bank_rejects_duplicates_bad_shapes_and_empty_gather() -> None:
    bank = MemoryBank()
    bank.add(0, *_entry(1.0))
    with pytest.raises(ValueError, match="already holds step 0"):
        bank.add(0, *_entry(2.0))
    with pytest.raises(ValueError):
        bank.add(1, torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        bank.add(1, torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError):
        bank.gather([])
    bank.clear()
    assert len(bank) == 0 and bank.select(1, 3) == []
    bank.add(0, *_entry(3.0))  # a cleared bank starts a new pass


def test_bank_stores_detached_tensors() -> None:
    x = torch.ones(2, 3, 3, requires_grad=True)
    bank = MemoryBank()
    bank.add(0, x * 2, x * 3)
    assert not bank.get(0).features.requires_grad and not bank.get(0).pos_enc.requires_grad


@pytest.mark.parametrize("stride", [1, 3])
def test_forgetting_unreachable_steps_changes_no_selection(stride):
    from glus.model.memory_bank import oldest_needed_step

    full, pruned = MemoryBank(), MemoryBank()
    feat = torch.zeros(2, 1, 1)
    for step in range(300):
        assert pruned.select(step, stride) == full.select(step, stride)
        if step % 7 != 5:  # some steps fail and store nothing
            full.add(step, feat, feat)
            pruned.add(step, feat, feat)
            pruned.forget_before(oldest_needed_step(step + 1, stride))
        assert len(pruned) <= 7 * stride + 1  # bounded, whatever the video length
