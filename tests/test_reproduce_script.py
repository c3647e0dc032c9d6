"""experiments/reproduce_embedded.py at a toy budget: a retrain of the same recipe gives the same weights bit for bit
and the same test J&F; a model made otherwise is compared, not declared reproduced by fiat; bad input is one line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def _argv(tmp_path: Path, data: Path, out: str, shipped: Path, seed: int = 0) -> list[str]:
    return ["--set", f"out={tmp_path / out}", "steps=4", "click_steps=2", "val_data=null", f"seed={seed}",
            f"data=[mevis={data / 'train'}:1]", "--shipped", str(shipped), "--key-frame", "none",
            "--out-json", str(tmp_path / f"{out}.json")]


def test_a_retrain_matches_bit_for_bit_and_another_model_is_only_compared(tmp_path: Path, monkeypatch,
                                                                            caplog) -> None:
    from glus.data.benchmark import TIERS, write_benchmark
    from glus.train.config import load_train_config
    from glus.train.trainer import Trainer

    reproduce = load_script("experiments/reproduce_embedded.py")
    data = tmp_path / "synth"
    write_benchmark(data, (10, 5, 5), seed=4)
    monkeypatch.chdir(ROOT)  # the recipe names the tokenizer relative to the repository
    first = load_train_config(reproduce.RECIPE, _argv(tmp_path, data, "first", tmp_path)[1:7])
    Trainer(first).run()  # "the shipped model": the recipe, trained once

    assert reproduce.main(_argv(tmp_path, data, "again", tmp_path / "first" / "model")) == 0
    result = json.loads((tmp_path / "again.json").read_text())
    assert result["weights"]["identical"] == result["weights"]["tensors"] > 0
    assert result["weights"]["max_abs_difference"] == 0.0
    assert result["retrained"] == result["shipped"] and result["difference"] == 0 and result["reproduced"]
    assert set(TIERS) <= set(result["retrained"]) and "steps=4" in result["command"]
    # both were trained here, and both folders say so: a difference could not be blamed on the processor
    assert result["machines"]["shipped"] == result["machines"]["retrained"]
    assert result["machines"]["retrained"]["from_step"] == 0 and result["machines"]["retrained"]["processor"]
    # a shipped model trained on another processor: the script says so (nothing retrains, nothing re-segments)
    record = tmp_path / "first" / "model" / "training_machine.json"
    machines = json.loads(record.read_text())["machines"]
    record.write_text(json.dumps({"machines": [{**machines[-1], "processor": "Another CPU"}]}))
    with caplog.at_level(logging.INFO, logger="reproduce_embedded"):
        assert reproduce.main(_argv(tmp_path, data, "again", tmp_path / "first" / "model")) == 0
    assert any("other kernels" in r.getMessage() and "Another CPU" in r.getMessage() for r in caplog.records)

    # Another seed is another model: its weights differ and the verdict follows the scores and the tolerance.
    code = reproduce.main(_argv(tmp_path, data, "other", tmp_path / "first" / "model", seed=1))
    other = json.loads((tmp_path / "other.json").read_text())
    assert other["weights"]["identical"] < other["weights"]["tensors"]
    assert other["shipped"] == result["shipped"]
    assert other["difference"] == round(other["retrained"]["all"] - other["shipped"]["all"], 2)
    assert other["reproduced"] == (abs(other["difference"]) <= 2.0) and code == (0 if other["reproduced"] else 1)


def test_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    reproduce = load_script("experiments/reproduce_embedded.py")
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--shipped", str(tmp_path), "--out-json", str(tmp_path / "r.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path) in err and "model.safetensors" in err
    with pytest.raises(SystemExit):
        reproduce.main(["--set", "steps=-3", "--shipped", str(ROOT / "src/glus/assets/demo/model"),
                        "--out-json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "steps" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()
