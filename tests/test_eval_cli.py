"""``glus evaluate`` end to end on the packaged example: outputs, missing / mis-sized predictions, workers."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from glus.cli import main as cli_main
from glus.eval.example import example_dir

ROOT = Path(__file__).resolve().parents[1]
VIDEO = "sav_000001"


def _reference():
    spec = importlib.util.spec_from_file_location("official_reference", ROOT / "benchmarks" / "official_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path: Path, *extra: str, split: str = "example", pred: str = "example", name: str = "r.json") -> dict:
    out = tmp_path / name
    rc = cli_main(["evaluate", "--dataset", "mevis", "--split-dir", split, "--pred", pred, "--output", str(out),
                   *extra])
    assert rc == 0
    return json.loads(out.read_text())


def test_example_command_matches_official_algorithm(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README runs it from anywhere: 'example' is the packaged split
    result = _run(tmp_path, "--per-frame")
    expected = _reference().reference_mevis(str(example_dir() / "valid_u"), str(example_dir() / "pred"))
    assert set(result["per_expression"]) == set(expected) == {f"{VIDEO}_{i}" for i in range(3)}
    for key, (j, f) in expected.items():
        assert result["per_expression"][key] == {"J": j, "F": f}
    js, fs = [v[0] for v in expected.values()], [v[1] for v in expected.values()]
    assert result["J"] == float(np.mean(js)) and result["F"] == float(np.mean(fs))
    assert result["J&F"] == float((np.mean(js) + np.mean(fs)) / 2)
    assert all(0.0 <= result[k] <= 1.0 for k in ("J", "F", "J&F"))
    assert result["missing"] == {} and result["num_scored"] == 3
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0] == "expression,video,exp_id,J,F,J&F,missing" and len(rows) == 4
    frames = (tmp_path / "r.frames.csv").read_text().splitlines()
    assert len(frames) == 1 + 3 * 25
    printed = capsys.readouterr().out
    assert "J&F" in printed and f"{100 * result['J&F']:.2f}" in printed
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_workers_give_identical_numbers(tmp_path):
    one = _run(tmp_path, name="one.json")
    two = _run(tmp_path, "--workers", "2", name="two.json")
    assert one["per_expression"] == two["per_expression"] and one["J&F"] == two["J&F"]


@pytest.fixture()
def damaged_pred(tmp_path) -> Path:
    """The example predictions with one frame missing (exp 0), one frame of the wrong size (exp 1) and one
    expression folder removed (exp 2)."""
    pred = tmp_path / "pred"
    shutil.copytree(example_dir() / "pred", pred)
    frames = sorted((pred / VIDEO / "0").glob("*.png"))
    frames[7].unlink()
    small = np.zeros((100, 60), np.uint8)
    cv2.imwrite(str(sorted((pred / VIDEO / "1").glob("*.png"))[3]), small)
    shutil.rmtree(pred / VIDEO / "2")
    return pred


def test_missing_and_mis_sized_predictions_score_zero_and_are_listed(tmp_path, damaged_pred):
    result = _run(tmp_path, pred=str(damaged_pred))
    assert set(result["missing"]) == {f"{VIDEO}_0", f"{VIDEO}_1", f"{VIDEO}_2"}
    assert "missing 00140.png" in result["missing"][f"{VIDEO}_0"]
    assert "60x100" in result["missing"][f"{VIDEO}_1"]
    assert "no folder" in result["missing"][f"{VIDEO}_2"]
    assert result["J"] == 0.0 and result["F"] == 0.0 and result["num_scored"] == 0
    assert all(v == {"J": 0.0, "F": 0.0} for v in result["per_expression"].values())
    csv_rows = (tmp_path / "r.csv").read_text().splitlines()
    assert csv_rows[1].startswith(f"{VIDEO}_0,") and csv_rows[1].endswith("missing 00140.png")


def test_official_drop_reproduces_the_silent_drop(tmp_path, damaged_pred):
    # keep expression 2 intact so that something is left to average
    shutil.copytree(example_dir() / "pred" / VIDEO / "2", damaged_pred / VIDEO / "2")
    full = _run(tmp_path, name="full.json")
    dropped = _run(tmp_path, "--official-drop-missing", pred=str(damaged_pred), name="drop.json")
    assert sorted(dropped["dropped"]) == [f"{VIDEO}_0", f"{VIDEO}_1"]
    keep = full["per_expression"][f"{VIDEO}_2"]
    assert dropped["J"] == keep["J"] and dropped["F"] == keep["F"]
    # a missing *video* folder scores 0 and still counts, as in the official script
    shutil.rmtree(damaged_pred / VIDEO)
    gone = _run(tmp_path, "--official-drop-missing", pred=str(damaged_pred), name="gone.json")
    assert gone["dropped"] == [] and gone["J"] == 0.0 and len(gone["missing"]) == 3


def test_user_errors_are_one_line(tmp_path, capsys):
    rc = cli_main(["evaluate", "--dataset", "mevis", "--split-dir", str(tmp_path / "nope"), "--pred", "example",
                   "--output", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "nope" in err
    rc = cli_main(["evaluate", "--dataset", "mevis", "--split-dir", "example", "--pred", str(tmp_path / "none"),
                   "--output", str(tmp_path / "r.json")])
    assert rc == 2 and "prediction folder not found" in capsys.readouterr().err
    rc = cli_main(["evaluate", "--dataset", "mevis", "--split-dir", "example", "--pred", "example",
                   "--protocol", "referformer", "--output", str(tmp_path / "r.json")])
    assert rc == 2 and "no protocol 'referformer'" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
