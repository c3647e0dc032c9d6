"""glus's training step against the authors' recorded DeepSpeed step (tests/fixtures/.../official_tiny/train_step).

Every reproducible record passes within the reference README's tolerances (losses, [SEG] embeddings, mask logits,
gradient and update norms; trainable, no-gradient and zero-gradient sets by name); the dropout record is reported
as skipped. A record whose numbers or sets were changed fails, so the check can fail.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from glus.train.official import TOLERANCES, check_official
from glus.train.schedule import WarmupDecay

from conftest import OFFICIAL_TINY


@pytest.fixture(scope="module")
def checks():
    return {c.name: c for c in check_official(OFFICIAL_TINY)}


def test_every_reproducible_record_matches(checks) -> None:
    assert set(checks) == {"step0", "step0_unrigged_seg_row", "step0_bank_prefilled", "step0_official_dropout"}
    assert checks["step0_official_dropout"].skipped and "dropout" in checks["step0_official_dropout"].skipped
    for name in ("step0", "step0_unrigged_seg_row", "step0_bank_prefilled"):
        check = checks[name]
        assert check.skipped is None and check.passed, (name, check.to_dict())
        assert set(TOLERANCES) <= set(check.deviations)
        assert all(check.sets.values()) and {"trainable", "no_gradient", "zero_gradient", "lr_schedule"} <= set(check.sets)
        # comfortably inside: float rounding, not luck at the tolerance's edge
        assert check.deviations["losses"] < 1e-6 and check.deviations["seg_embeddings"] < 1e-5, name


def _copy_reference(tmp_path: Path) -> Path:
    folder = tmp_path / "official_tiny"
    shutil.copytree(OFFICIAL_TINY, folder)
    return folder


def test_a_changed_record_fails(tmp_path: Path) -> None:
    folder = _copy_reference(tmp_path)
    path = folder / "train_step" / "train_step.json"
    record = json.loads(path.read_text())
    step0 = record["records"]["step0"]
    step0["losses"]["mask_dice_loss"] *= 1 + 1e-4  # one loss term off by 1e-4 relative
    name = "model.mm_projector.bias"
    step0["grads"][name]["l2"] *= 1.01  # one gradient norm off by 1%
    record["trainable_parameters"] = [p for p in record["trainable_parameters"] if p["name"] != "lm_head.weight"]
    path.write_text(json.dumps(record))
    (check,) = check_official(folder, ["step0"])
    assert not check.passed
    assert check.deviations["losses"] == pytest.approx(1e-4, rel=0.05) and check.worst["losses"] == "mask_dice_loss"
    assert check.deviations["grad_norms"] == pytest.approx(0.01 / 1.01, rel=0.01) and check.worst["grad_norms"] == name
    assert check.sets["trainable"] is False and any("lm_head.weight" in n for n in check.notes)


def test_authors_first_steps_learning_rates() -> None:
    """DeepSpeed 0.15.1's WarmupDecayLR as recorded: step 1 at the peak, then 0, peak/100, ... and linear decay."""
    authors = WarmupDecay(total_steps=3000, warmup_steps=100)
    assert [authors.factor(s) for s in (1, 2, 3, 4)] == [1.0, 0.0, 0.01, 0.02]
    assert authors.factor(102) == 1.0 and authors.factor(3002) == 0.0
    assert authors.factor(1551) == pytest.approx((3000 - 1549) / 2900)
    fixed = WarmupDecay(total_steps=3000, warmup_steps=100, first_step_at_peak=False)
    assert [fixed.factor(s) for s in (1, 2, 101)] == [0.0, 0.01, 1.0]


def test_cli_check_official_prints_a_table_and_writes_json(tmp_path: Path, capsys) -> None:
    from glus.cli import main

    out = tmp_path / "check.json"
    assert main(["train", "check-official", str(OFFICIAL_TINY), "--record", "step0", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "step0" in printed and "pass" in printed
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["records"]] == ["step0"] and report["records"][0]["passed"]
    assert main(["train", "check-official", str(tmp_path), "--record", "step0"]) == 2  # no train_step/ there
    assert "train_step" in capsys.readouterr().err
