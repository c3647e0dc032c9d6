"""experiments/ablation.py end to end at a toy budget: trains, segments the test split, scores per tier, reuses
finished runs and writes the table."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_ablation_runs_resumes_and_writes_the_table(tmp_path: Path, monkeypatch) -> None:
    from glus.data.benchmark import TIERS, write_benchmark

    ablation = load_script("experiments/ablation.py")
    data = tmp_path / "synth"
    write_benchmark(data, (10, 5, 5), seed=3)
    runs, md, js = tmp_path / "runs", tmp_path / "ablation.md", tmp_path / "results.json"
    monkeypatch.chdir(ROOT)  # the recipe names the tokenizer relative to the repository
    argv = ["--data", str(data), "--runs", str(runs), "--seeds", "0", "--steps", "4", "--variants", "local-only",
            "+key-frame", "--out-md", str(md), "--out-json", str(js)]
    assert ablation.main(argv) == 0
    results = json.loads(js.read_text())
    assert sorted(results) == ["+key-frame", "local-only"]
    for variant in results:
        scores = results[variant]["0"]
        assert set(TIERS) <= set(scores) and 0 <= scores["all"] <= 100
    assert (runs / "+contrastive-s0" / "model" / "model.safetensors").is_file()  # +key-frame reuses its models
    assert (runs / "+contrastive-s0" / "test-auto").is_dir() and not (runs / "+key-frame-s0").exists()
    config = json.loads(json.dumps(__import__("yaml").safe_load((runs / "local-only-s0" / "config.yaml").read_text())))
    assert config["context_frames"] == 0 and config["contrastive"] is False and config["seed"] == 0
    table = md.read_text()
    assert "| local-only | 1 |" in table and "| +key-frame | 1 |" in table and "44.4" in table

    before = {p: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    assert ablation.main(argv) == 0  # everything is done: nothing retrains, the same table
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*.json")} == before
    assert json.loads(js.read_text()) == results
