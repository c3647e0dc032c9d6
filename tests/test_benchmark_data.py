"""The synthetic RefVOS benchmark: deterministic per seed, every tier in every split, every expression's target
visible, masks exact (disjoint, the object's colour), and the expressions of a tier ambiguous without what the
tier tests (same-looking twins in motion / temporal / visibility)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from glus.cli import main
from glus.data.benchmark import SPLITS, TIERS, make_benchmark_video
from glus.data.formats import load_dataset
from glus.data.synthetic import COLORS


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generator_is_deterministic_and_every_split_has_every_tier(tmp_path: Path) -> None:
    for out in ("a", "b"):
        assert main(["data", "synth", str(tmp_path / out), "--videos", "6", "5", "7", "--seed", "3"]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert main(["data", "synth", str(tmp_path / "c"), "--videos", "6", "5", "7", "--seed", "4"]) == 0
    assert _files(tmp_path / "a") != _files(tmp_path / "c")
    for split, count in zip(SPLITS, (6, 5, 7)):
        tiers = json.loads((tmp_path / "a" / split / "tiers.json").read_text())
        assert len(tiers) == count and {t for v in tiers.values() for t in v.values()} == set(TIERS)
        data = load_dataset("mevis", tmp_path / "a" / split)
        assert sorted(data.videos) == sorted(tiers)
        for video in data.videos.values():
            assert set(video.expressions) == set(tiers[video.video_id])
            for exp_id in video.expressions:
                assert data.gt_masks(video.video_id, exp_id).any(), (video.video_id, exp_id)


@pytest.mark.parametrize("tier", TIERS)
def test_tier_scenarios(tier: str) -> None:
    for seed in range(25):
        made = make_benchmark_video(seed, tier)
        video = made.video
        assert made.tier == tier and len(made.expression_tiers) == len(video.expressions) >= 2
        assert not (video.masks.sum(axis=0) > 1).any()  # visible parts never overlap
        for obj in video.objects:
            painted = video.frames[video.masks[obj.index]]
            assert (painted == np.array(COLORS[obj.color], np.uint8)).all()
        looks = [(o.color, o.shape) for o in video.objects]
        targets = [video.objects[e.objects[0]] for e in video.expressions]
        if tier in ("motion", "temporal", "visibility"):
            # the referred object has a twin of the same look: appearance alone cannot tell them apart
            assert all(looks.count((t.color, t.shape)) == 2 for t in targets), looks
        if tier == "multi":
            assert len(video.expressions[0].objects) == 2 and video.expressions[0].text.startswith("the two ")
        if tier == "appearance":
            assert len(set(looks)) == len(looks)


def test_bad_arguments_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["data", "synth", str(tmp_path), "--videos", "1", "2"]) == 2
    assert "--videos" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path), "--frames", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "glus data synth: error: --frames must be >= 4, got 2 (see glus data synth --help)"
    assert not any(tmp_path.iterdir())


def test_tier_scores_average_each_tier_the_mevis_way() -> None:
    from glus.data.benchmark import tier_scores

    per_expression = {"v1_0": {"J": 1.0, "F": 0.8}, "v1_1": {"J": 0.5, "F": 0.5}, "v2_0": {"J": 0.0, "F": 0.2},
                      "other_0": {"J": 0.3, "F": 0.3}}
    tiers = {"v1_0": "motion", "v1_1": "motion", "v2_0": "multi"}
    scores = tier_scores(per_expression, tiers)
    assert scores["motion"] == {"J": 0.75, "F": 0.65, "J&F": 0.7, "expressions": 2}
    assert scores["multi"]["J&F"] == pytest.approx(0.1) and "appearance" not in scores
    assert scores["all"]["expressions"] == 3 and scores["all"]["J"] == pytest.approx(0.5)


def test_evaluate_reports_each_tier_of_a_benchmark_split(tmp_path: Path, capsys) -> None:
    """Ground truth as the prediction, but blank masks for the motion tier: every tier scores 1 except motion."""
    from glus.data.benchmark import write_benchmark
    from glus.data.masks import write_mask_png

    split = write_benchmark(tmp_path / "synth", (1, 1, 10), seed=5)["test"]
    data = load_dataset("mevis", split)
    tiers = json.loads((split / "tiers.json").read_text())
    pred = tmp_path / "pred"
    for video in data.videos.values():
        for exp_id in video.expressions:
            for t, name in enumerate(video.frame_names):
                mask = data.gt_mask(video.video_id, exp_id, t)
                blank = tiers[video.video_id][exp_id] == "motion"
                write_mask_png(pred / video.video_id / exp_id / f"{name}.png", mask * 0 if blank else mask)
    out = tmp_path / "result.json"
    assert main(["evaluate", "--dataset", "mevis", "--split-dir", str(split), "--pred", str(pred),
                 "--output", str(out)]) == 0
    scores = json.loads(out.read_text())["tiers"]
    assert sorted(scores) == sorted([*TIERS, "all"])
    assert all(scores[t]["J&F"] == pytest.approx(1.0) for t in TIERS if t != "motion")
    assert scores["motion"]["J&F"] < 0.1 and scores["motion"]["expressions"] == 8  # 2 videos x 2 objects x 2
    assert "per tier" in capsys.readouterr().out
