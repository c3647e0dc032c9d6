"""Smoke test of benchmarks/inference_cost.py at its smallest settings: it produces numbers, the FLOP pricing
agrees with LLaMA's closed form, and the fast path costs fewer FLOPs than the reference path."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from glus.config import glus_7b
from glus.data.sampling import inference_context_frames
from glus.model.memory_bank import memory_steps

from conftest import OFFICIAL_TINY

ROOT = Path(__file__).resolve().parents[1]



def _load_benchmark():
    spec = importlib.util.spec_from_file_location("inference_cost", ROOT / "benchmarks" / "inference_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["inference_cost"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


ic = _load_benchmark()

FRAMES, EXPRESSIONS = 3, 2


def _glus_7b_shallow():
    """glus-7b shapes with 4 of LLaMA's 32 decoder layers: every layer costs the same, and counting 32 on the
    meta device for each prompt length would dominate this smoke test's run time."""
    cfg = glus_7b()
    cfg.text = dataclasses.replace(cfg.text, num_hidden_layers=4)
    return cfg


@pytest.fixture(scope="module")
def table():
    return ic.FlopTable(_glus_7b_shallow())


@pytest.fixture(scope="module")
def costs(table):
    return ic.flop_comparison(FRAMES, EXPRESSIONS, table=table, tokenizer_path=OFFICIAL_TINY)


def test_fast_path_costs_fewer_flops_than_reference(costs):
    ref, fast = costs["reference"], costs["fast"]
    assert ref.total > 0 and fast.total > 0
    assert fast.total < ref.total
    assert costs["ratio"] == pytest.approx(fast.total / ref.total)
    assert ref.per_expression_frame == pytest.approx(ref.total / (FRAMES * EXPRESSIONS))
    for kind in ("clip", "sam_encode", "llm", "sam_decode", "mem_encode"):
        assert ref.flops[kind] > 0 and fast.flops[kind] > 0, kind


def test_replayed_schedules_follow_each_path(costs):
    ref, fast = costs["reference"], costs["fast"]
    n = FRAMES * EXPRESSIONS
    # reference: everything per (expression, frame); CLIP sees the context frames and the window every time
    assert ref.calls["llm"] == n and ref.calls["sam_encode"] == n and ref.items["sam_decode"] == n
    k = len(inference_context_frames(FRAMES, glus_7b().context_frames))
    assert ref.items["clip"] == EXPRESSIONS * sum(k + min(step + 1, 4) for step in range(FRAMES))
    # fast: frame features once per frame, context frames once; a prefill, then per frame one prefix
    # extension and one batched call for all expressions
    assert fast.calls["sam_encode"] == FRAMES and fast.items["clip"] == k + FRAMES
    assert fast.calls["llm"] == 1 + 2 * FRAMES and fast.items["llm"] == 1 + FRAMES * (1 + EXPRESSIONS)
    assert fast.items["sam_decode"] == n  # masks themselves are per expression on both paths
    assert fast.llm_positions < ref.llm_positions


def test_recorded_memory_counts_follow_the_stride_rule(table):
    tok = ic.GLUSTokenizer.from_pretrained(OFFICIAL_TINY)
    cfg = table.config
    calls = ic.replay_reference(cfg, tok, 12, ["the dog"])
    seen = [c.memories for c in calls if c.kind == "sam_decode"]
    expected = [len(memory_steps(step, cfg.mem_stride_infer, cfg.num_maskmem)) for step in range(12)]
    assert seen == expected
    assert max(seen) > 1  # the stride rule reaches back beyond the previous frame


def test_llm_pricing_matches_llama_closed_form(table):
    t = table.config.text
    h, i, layers = t.hidden_size, t.intermediate_size, t.num_hidden_layers
    for length, past in ((7, 0), (5, 11)):
        linear = 2 * length * (4 * h * h + 3 * h * i) * layers  # q, k, v, o and the gated MLP
        attention = 2 * 2 * length * (past + length) * h * layers  # q @ k^T and p @ v over past + new keys
        assert table.unit("llm", length, past) == linear + attention
    assert table.unit("lm_head") == 2 * h * t.vocab_size


def test_targets_missed_flags_each_target():
    good = {"flops": {"ratio": 0.4}, "rss": [{"frames": 100, "peak_kb": 1000}, {"frames": 1000, "peak_kb": 1100}]}
    assert ic.targets_missed(good) == []
    assert len(ic.targets_missed({"flops": {"ratio": 0.6}})) == 1
    bad_rss = {"rss": [{"frames": 100, "peak_kb": 1000}, {"frames": 1000, "peak_kb": 1300}]}
    (message,) = ic.targets_missed(bad_rss)
    assert "1000 frames" in message


def test_wall_clock_and_streamed_run_at_tiny(tmp_path):
    torch.set_num_threads(1)
    pipe = ic.load_tiny_pipeline(OFFICIAL_TINY)
    wall = ic.wall_clock(pipe, num_frames=1, num_expressions=1, size=(32, 48))
    assert wall["fast_s"] > 0 and wall["reference_s"] > 0 and np.isfinite(wall["ratio"])
    assert wall["identical"] and wall["seg_rate"] == 1.0  # the rigged checkpoint always says [SEG]

    video = tmp_path / "v.mp4"
    texts = ic.make_rss_video(video, 2, (32, 48))
    result = ic.rss_run(OFFICIAL_TINY, video, texts[:1], tmp_path / "masks", samples=2, pipe=pipe)
    assert result["frames"] == 2 and result["peak_kb"] >= result["rss_loaded_kb"] > 0
    assert [n for n, _ in result["rss_trace"]] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "masks" / "0").glob("*.png")) == ["00000.png", "00001.png"]
