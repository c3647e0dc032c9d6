"""experiments/seg_click_probe.py at a toy budget: trains the language side alone on the [SEG]-to-click target,
leaves the embedded SAM-2 it borrows untouched, and writes its evaluation rows."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_probe_trains_the_language_side_and_reports(tmp_path: Path) -> None:
    from glus.data.benchmark import write_benchmark

    probe = load_script("experiments/seg_click_probe.py")
    data = tmp_path / "synth"
    write_benchmark(data, (6, 5, 5), seed=1)
    out = tmp_path / "probe.csv"
    assert probe.main(["--data", str(data), "--preset", "small", "--steps", "3", "--eval-every", "2",
                       "--eval-samples", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [int(r["step"]) for r in rows] == [2, 3]
    for row in rows:
        assert 0 <= float(row["hit"]) <= 1 and 0 <= float(row["hit_mean"]) <= 1 and int(row["pairs"]) > 0
        assert float(row["mse"]) > 0 and float(row["mse_mean"]) > 0


def test_probe_freezes_sam2_and_grid_clicks_are_sam2s() -> None:
    probe = load_script("experiments/seg_click_probe.py")
    model, tokenizer = probe.build("small", ROOT / "src" / "glus" / "assets" / "demo" / "model", seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("model.visual_model.") for n in trainable)
    assert any(n.startswith("model.layers.") for n in trainable)
    grid, centres = probe.grid_prompts(model)
    assert grid.shape == (16 * 16, model.config.prompt_dim) and centres[0].tolist() == [8.0, 8.0]
    torch.testing.assert_close(grid[17], model.sam2.click_prompt(centres[17:18])[0, 0])


def test_probe_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    probe = load_script("experiments/seg_click_probe.py")
    for argv, words in ((["--data", str(tmp_path / "none")], "dataset folder not found"),
                        (["--steps", "0"], "must be >= 1")):
        with pytest.raises(SystemExit) as exit_info:
            probe.main([*argv, "--out", str(tmp_path / "probe.csv")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert words in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "probe.csv").exists()
