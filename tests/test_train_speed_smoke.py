"""Smoke test of benchmarks/train_speed.py: the per-expression baseline is the same step on the same data (equal
losses), and at glus-7b shapes sharing the clip's features costs fewer FLOPs per sample, by exactly the shared
encoder work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from glus.data.synthetic import make_video, write_mevis_split
from glus.prompts import PromptBuilder
from glus.train.config import load_train_config, parse_data_source
from glus.train.data import TrainingSet
from glus.train.trainer import Trainer

from conftest import OFFICIAL_TINY

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "benchmarks" / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = module
    spec.loader.exec_module(module)
    return module


ts = _load()


def test_per_expression_baseline_computes_the_same_losses(tmp_path: Path) -> None:
    split = write_mevis_split(tmp_path / "mevis", [make_video(s, num_frames=8, height=48, width=64, num_objects=3)
                                                   for s in range(2)], split="train")
    cfg = load_train_config(None, [f"out={tmp_path / 'run'}", "preset=tiny", f"tokenizer={OFFICIAL_TINY}",
                                   f"data=[mevis={split}]", "sam2_image_size=256", "contrastive=false"])
    base, model, tokenizer, _, _ = Trainer(cfg).prepare()
    model.eval()
    data = TrainingSet([parse_data_source(f"mevis={split}")], tokenizer, PromptBuilder.from_config(base.config), 256)
    batch = [data[0], data[1]]
    split_batch = ts.per_expression(batch)
    assert len(split_batch) == sum(len(s.input_ids) for s in batch) == 6
    with torch.no_grad():
        shared = base.forward_train(batch)
        alone = base.forward_train(split_batch)
    for key in ("ce", "bce", "dice", "total"):
        torch.testing.assert_close(shared[key], alone[key], rtol=1e-5, atol=1e-6)


def test_sharing_features_saves_exactly_the_encoder_work() -> None:
    one, three = ts.flops_per_sample(1), ts.flops_per_sample(3)
    assert one["ratio"] == pytest.approx(1.0)  # one expression: nothing to share
    assert three["ratio"] < 1.0
    # glus(E) = encoders + E x per-expression work, so the encoders of one clip are glus(1) - (glus(3) - glus(1)) / 2;
    # the authors pay them once per expression: the gap at E = 3 is twice that
    encoders = one["glus_tflops"] - (three["glus_tflops"] - one["glus_tflops"]) / 2
    assert encoders > 0
    assert three["authors_tflops"] - three["glus_tflops"] == pytest.approx(2 * encoders, rel=1e-9)
