"""experiments/ablation.py end to end at a toy budget: trains, segments the test split, scores per tier, reuses
finished runs and writes the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_ablation_runs_resumes_and_writes_the_table(tmp_path: Path, monkeypatch) -> None:
    from glus.data.benchmark import TIERS, write_benchmark

    ablation = load_script("experiments/ablation.py")
    data = tmp_path / "synth"
    write_benchmark(data, (10, 5, 5), seed=3)
    runs, scores_dir = tmp_path / "runs", tmp_path / "scores"
    md, js = tmp_path / "ablation.md", tmp_path / "results.json"
    monkeypatch.chdir(ROOT)  # the recipe names the tokenizer relative to the repository
    argv = ["--data", str(data), "--runs", str(runs), "--results", str(scores_dir), "--seeds", "0", "--steps", "4",
            "--variants", "local-only", "+key-frame", "--out-md", str(md), "--out-json", str(js)]
    assert ablation.main(argv) == 0
    results = json.loads(js.read_text())
    assert sorted(results) == ["+key-frame", "local-only"]
    for variant in results:
        scores = results[variant]["0"]
        assert set(TIERS) <= set(scores) and 0 <= scores["all"] <= 100 and scores["steps"] == 4
        assert json.loads((scores_dir / f"{variant}-s0.json").read_text()) == scores
        assert [m["from_step"] for m in scores["trained_on"]] == [0]  # runs on other processors differ like seeds
    assert (runs / "+contrastive-s0" / "model" / "model.safetensors").is_file()  # +key-frame reuses its models
    assert (runs / "+contrastive-s0" / "test-auto").is_dir() and not (runs / "+key-frame-s0").exists()
    config = json.loads(json.dumps(__import__("yaml").safe_load((runs / "local-only-s0" / "config.yaml").read_text())))
    assert config["context_frames"] == 0 and config["contrastive"] is False and config["seed"] == 0
    table = md.read_text()
    assert "| local-only | 1 |" in table and "| +key-frame | 1 |" in table and "44.4" in table
    assert "4 steps" in table

    # Everything is done: nothing retrains (the run folders could be gone: the scores are what is kept), the same
    # table, with the notes kept beside the scores; a call for one variant still tables every result there is.
    import shutil

    shutil.rmtree(runs)
    (scores_dir / "notes.md").write_text("## Reading it\n\nA note.\n")
    before = {p: p.stat().st_mtime_ns for p in scores_dir.glob("*.json")}
    assert ablation.main([*argv[:argv.index("--variants") + 1], "local-only", *argv[argv.index("--out-md"):]]) == 0
    assert "| +key-frame | 1 |" in md.read_text()
    assert {p: p.stat().st_mtime_ns for p in scores_dir.glob("*.json")} == before and not runs.exists()
    assert json.loads(js.read_text()) == results and md.read_text().endswith("## Reading it\n\nA note.\n")


def test_ablation_refuses_scores_of_another_budget(tmp_path: Path, capsys) -> None:
    ablation = load_script("experiments/ablation.py")
    (tmp_path / "synth" / "test").mkdir(parents=True)
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "local-only-s0.json").write_text(json.dumps({"all": 40.0, "steps": 3200}))
    argv = ["--data", str(tmp_path / "synth"), "--results", str(scores), "--seeds", "0", "--steps", "8",
            "--variants", "local-only", "--out-md", str(tmp_path / "a.md"), "--out-json", str(tmp_path / "a.json")]
    with pytest.raises(SystemExit) as exit_info:  # scores of 3200 steps must not be mixed into an 8-step table
        ablation.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "local-only-s0.json" in err and "3200" in err and "Traceback" not in err
    assert not (tmp_path / "a.md").exists()
