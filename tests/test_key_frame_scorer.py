"""The trained key-frame scorer: labels from a checkpoint's own first pass, the fit, its files, and the fallback to
the heuristic (which selector ran is recorded)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from glus.cli import main
from glus.data.benchmark import write_benchmark
from glus.data.formats import load_dataset
from glus.demo import DEMO_MODEL
from glus.errors import GLUSError
from glus.inference.keyframes import load_key_frame_json, score_first_pass
from glus.inference.runner import (FEATURES_NAME, KEY_FRAME_RECORD, KEY_FRAMES_NAME, InferSettings, read_summary,
                                   run_dataset)
from glus.inference.writers import expression_dir
from glus.model.key_frame_scorer import (CONFIG_NAME, WEIGHTS_NAME, FirstPassRecord, key_frame_scorer_for,
                                         load_key_frame_scorer)
from glus.train.scorer import (LabelledExpression, ScorerJob, ScorerTrainConfig, fit_scorer, label_first_pass,
                               load_labelled_expressions, load_scorer_config, read_frame_labels, selection_metrics,
                               train_scorer)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    write_benchmark(root, (3, 1, 2), seed=7)
    return root


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model without its scorer: what a released checkpoint looks like to ``--key-frame auto``."""
    folder = tmp_path_factory.mktemp("plain") / "model"
    shutil.copytree(DEMO_MODEL, folder, ignore=shutil.ignore_patterns("key_frame_scorer.*"))
    return folder


@pytest.fixture(scope="module")
def labelled(bench: Path, plain_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ScorerJob, Path, Path]:
    work = tmp_path_factory.mktemp("work")
    job = ScorerJob("mevis", str(bench / "train"), str(work), str(work / "scorer"), model=str(plain_model),
                    limit_videos=2)
    pred, labels = label_first_pass(job, progress=False)
    return job, pred, labels


def test_labels_are_the_first_pass_per_frame_j(labelled, bench: Path) -> None:
    job, pred, labels_csv = labelled
    data = load_dataset("mevis", bench / "train")
    first_two = list(data.videos.values())[:2]
    labels = read_frame_labels(labels_csv)
    assert set(labels) == {e.key for v in first_two for e in v.expressions.values()}  # the others: no prediction
    expressions = load_labelled_expressions("mevis", bench / "train", pred, labels_csv)
    assert len(expressions) == len(labels)
    from glus.data.masks import read_mask_png

    for item in expressions[:3]:  # the label of frame t is the IoU of the first pass's PNG with the ground truth
        video = data.videos[item.video_id]
        exp_id = item.key.removeprefix(video.video_id + "_")
        for t, name in enumerate(video.frame_names):
            mask = read_mask_png(expression_dir(pred, video.video_id, exp_id) / f"{name}.png")
            gt = data.gt_mask(video.video_id, exp_id, t) > 0
            iou = 1.0 if not (mask | gt).any() else (mask & gt).sum() / (mask | gt).sum()
            assert item.labels[t] == pytest.approx(iou, abs=1e-6)
        assert len(item.record) == len(video.frame_names)
        assert item.record.embedding[item.record.seg_generated].any()  # the [SEG] prompts are kept


def test_a_rerun_of_the_labels_does_nothing_new(labelled) -> None:
    job, pred, labels_csv = labelled
    written = {p: p.stat().st_mtime_ns for p in pred.rglob("*") if p.suffix in (".png", ".npz")}
    labels = read_frame_labels(labels_csv)
    assert label_first_pass(job, progress=False) == (pred, labels_csv)
    assert {p: p.stat().st_mtime_ns for p in written} == written  # the first pass resumed with nothing left
    assert {k: v.tolist() for k, v in read_frame_labels(labels_csv).items()} == {k: v.tolist()
                                                                               for k, v in labels.items()}


def _synthetic(count: int, seed: int, dim: int = 8) -> list[LabelledExpression]:
    """Expressions whose true IoU is a function of one [SEG] direction, which SAM-2's own IoU contradicts."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        frames = 10
        emb = rng.normal(size=(frames, dim)).astype(np.float32)
        truth = 1.0 / (1.0 + np.exp(-2.0 * emb[:, 0]))
        record = FirstPassRecord(emb, (1.0 - truth).astype(np.float32), np.full(frames, 3.0, np.float32),
                                 np.ones(frames, bool), np.full(frames, 0.1, np.float32))
        out.append(LabelledExpression(f"v{i}_0", f"v{i}", record, truth.astype(np.float32)))
    return out


def test_the_fit_learns_what_the_heuristic_gets_wrong() -> None:
    expressions = _synthetic(60, seed=3)
    fit = fit_scorer(expressions, ScorerTrainConfig(epochs=150, patience=150, val_fraction=0.2, seed=1),
                     progress=False)
    assert fit.history[-1]["train_l1"] < 0.5 * fit.history[0]["train_l1"]
    assert {e.video_id for e in fit.held_out}.isdisjoint({e.video_id for e in fit.train})
    labels = [e.labels for e in fit.held_out]
    trained = selection_metrics([score_first_pass(e.record, fit.scorer)[0] for e in fit.held_out], labels)
    heuristic = selection_metrics([score_first_pass(e.record)[0] for e in fit.held_out], labels)
    assert trained["spearman"] > 0.8 and heuristic["spearman"] < -0.8
    assert trained["key_frame_iou"] > heuristic["key_frame_iou"]
    assert trained["oracle_iou"] >= trained["key_frame_iou"]


def test_selection_metrics_by_hand() -> None:
    m = selection_metrics([np.array([0.1, 0.9, 0.5]), np.array([1.0, 1.0, 1.0])],
                          [np.array([0.2, 0.8, 0.4]), np.array([0.3, 0.6, 0.9])])
    assert m["spearman"] == pytest.approx(0.5)  # 1 for the first, 0 for the flat scores
    assert m["key_frame_iou"] == pytest.approx((0.8 + 0.3) / 2)  # flat scores: the earliest frame
    assert m["oracle_iou"] == pytest.approx((0.8 + 0.9) / 2)
    assert m["first_frame_iou"] == pytest.approx((0.2 + 0.3) / 2)


def test_train_scorer_saves_a_scorer_that_auto_uses(labelled, bench: Path, plain_model: Path,
                                                    tmp_path: Path) -> None:
    job, pred, labels_csv = labelled
    model = tmp_path / "model"
    shutil.copytree(plain_model, model)
    job = ScorerJob("mevis", job.split_dir, str(tmp_path / "w"), str(model), pred=str(pred), labels=str(labels_csv))
    report = train_scorer(job, ScorerTrainConfig(epochs=5, val_fraction=0.5), progress=False)
    assert report["data"]["videos"] == 2 and report["held_out"] is not None
    assert (tmp_path / "w" / "scorer_curve.png").stat().st_size > 0
    scorer = load_key_frame_scorer(model)
    assert json.loads((model / CONFIG_NAME).read_text())["training"]["data"]["expressions"] == \
        report["data"]["expressions"]
    record = FirstPassRecord.load(next(pred.rglob(FEATURES_NAME)))
    assert np.allclose(scorer.score(record), key_frame_scorer_for(model, "auto").score(record))

    out = tmp_path / "pred"
    run_dataset(InferSettings("mevis", bench / "test", out, model, key_frame="auto"), progress=False)
    assert read_summary(out)["shards"]["0"]["key_frame_selector"] == "trained"
    table = load_key_frame_json(out / KEY_FRAMES_NAME)
    data = load_dataset("mevis", bench / "test")
    assert set(table) == {e.key for v in data.videos.values() for e in v.expressions.values()}
    for video in data.videos.values():
        for exp_id, expression in video.expressions.items():
            chosen = json.loads((expression_dir(out, video.video_id, exp_id) / KEY_FRAME_RECORD).read_text())
            assert chosen["selector"] == "trained" and table[expression.key] == chosen["frame"]
            assert chosen["frame"] in video.frame_names


def test_without_a_scorer_auto_falls_back_to_the_heuristic(bench: Path, plain_model: Path, tmp_path: Path) -> None:
    assert key_frame_scorer_for(plain_model, "auto") is None
    assert key_frame_scorer_for(DEMO_MODEL, "heuristic") is None
    assert key_frame_scorer_for(DEMO_MODEL, "auto") is not None
    with pytest.raises(GLUSError, match="no trained key-frame scorer"):
        key_frame_scorer_for(plain_model, "trained")
    out = tmp_path / "pred"
    run_dataset(InferSettings("mevis", bench / "test", out, plain_model, key_frame="auto"), progress=False)
    summary = read_summary(out)
    assert summary["shards"]["0"]["key_frame_selector"] == "heuristic"
    assert summary["settings"]["key_frame_scorer"] == "heuristic"
    assert all(v["selector"] == "heuristic" for v in json.loads((out / "key_frame_scores.json").read_text()).values())


def test_bad_scorer_files_and_settings_are_one_line_errors(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / CONFIG_NAME).write_text('{"format": "something else"}')
    with pytest.raises(GLUSError, match="not a glus key-frame scorer"):
        load_key_frame_scorer(folder)
    shutil.copy(DEMO_MODEL / CONFIG_NAME, folder / CONFIG_NAME)
    (folder / WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(GLUSError, match="cannot read the key-frame scorer weights"):
        load_key_frame_scorer(folder)
    with pytest.raises(GLUSError, match="unknown setting"):
        load_scorer_config(["epoch=3"])
    with pytest.raises(GLUSError, match="val_fraction"):
        load_scorer_config(["val_fraction=1.5"])
    bad_csv = tmp_path / "bad.frames.csv"
    bad_csv.write_text("expression,frame\nv_0,00000\n")
    with pytest.raises(GLUSError, match="no column"):
        read_frame_labels(bad_csv)
    for argv in (["train", "scorer", "--data", "mevis=x"],  # no --work
                 ["train", "scorer", "--data", "mevis=x", "--work", str(tmp_path), "--pred", "p"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
