"""Every number of the official evaluators on the SA-V split (seed 0 reference JSONs) and, for a second seed,
per-frame agreement with a plain re-implementation of the official per-frame algorithm."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glus.cli import main as cli_main
from glus.data.formats import load_dataset
from glus.eval.protocols import evaluate
from glus.eval.scoring import GroundTruthCache, ScoreOptions, score_expression

from conftest import REFERENCE_NUMBERS, SAV, SPLIT_TOOL

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["exact", "drift", "morph", "dropout", "wrong_obj", "mixed"]



def _load_reference():
    spec = importlib.util.spec_from_file_location("official_reference", ROOT / "benchmarks" / "official_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sav_splits(tmp_path_factory) -> dict[int, Path]:
    """The SA-V splits of seeds 0 and 1, built once (both at the same time) and shared by pytest-xdist workers
    through a file lock."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if base.name.startswith("popen-gw") else base
    outs = {seed: shared / f"sav_seed{seed}" for seed in (0, 1)}
    with open(shared / "sav_splits.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        todo = [seed for seed, out in outs.items() if not (out / "done").is_file()]
        builds = [subprocess.Popen([sys.executable, str(SPLIT_TOOL), str(outs[seed]), "--seed", str(seed), "--no-frames",
                                    "--also-revos", "--also-davis17"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE) for seed in todo]
        for seed, build in zip(todo, builds):
            _, err = build.communicate()
            assert build.returncode == 0, err.decode()
            (outs[seed] / "done").write_text("ok")
    return outs


@pytest.fixture(scope="session")
def sav0(sav_splits) -> Path:
    return sav_splits[0]


@pytest.fixture(scope="session")
def sav1(sav_splits) -> Path:
    return sav_splits[1]


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_mevis_reproduces_official_numbers(sav0, method):
    ref = json.loads((REFERENCE_NUMBERS / "sav_mevis_seed0_official.json").read_text())["methods"][method]
    got = evaluate("mevis", sav0 / "valid_u", sav0 / "pred" / method).summary
    for name in ("J", "F", "J&F"):
        assert _close(got[name], ref[name]), name
    assert set(got["per_expression"]) == set(ref["per_expression"])
    for key, values in ref["per_expression"].items():
        for name in ("J", "F"):
            assert _close(got["per_expression"][key][name], values[name]), (key, name)
    assert got["missing"] == {} and got["num_scored"] == len(ref["per_expression"])


@pytest.mark.parametrize("method", METHODS)
def test_davis17_visa_reproduces_official_numbers(sav0, method):
    ref = json.loads((REFERENCE_NUMBERS / "sav_davis17_seed0_official.json").read_text())["methods"][method]
    got = evaluate("davis17", sav0 / "davis17", sav0 / "pred" / method).summary
    assert got["protocol"] == "visa"
    for name in ("J", "F", "J&F"):
        assert _close(got["official"][name], ref[name]), name
        assert 0.0 <= got[name] <= 1.0
    for key, values in ref["per_expression"].items():
        for name in ("J", "F"):
            assert _close(got["per_expression"][key][name], values[name]), (key, name)


@pytest.mark.parametrize("method", METHODS)
def test_revos_reproduces_official_numbers(sav0, method):
    ref = json.loads((REFERENCE_NUMBERS / "sav_revos_seed0_official.json").read_text())["methods"][method]
    got = evaluate("revos", sav0 / "revos", sav0 / "pred" / method).summary
    for group in ("referring", "reason", "overall"):
        for name in ("J", "F", "A", "R", "JF"):
            assert _close(got["official"][group][name], ref[group][name]), (group, name)
    for key, values in ref["per_expression"].items():
        for name in ("J", "F", "JF", "A", "R"):
            assert _close(got["official"]["per_expression"][key][name], values[name]), (key, name)
        for name in ("J", "F", "A", "R"):
            assert _close(got["per_expression"][key][name], values["raw"][name]), (key, name)
        assert got["per_expression"][key]["type_id"] == values["type_id"]
    assert _close(got["J&F"], ref["overall"]["JF"] / 100)


def test_revos_corrected_option_changes_a_and_r_only(sav0):
    official = evaluate("revos", sav0 / "revos", sav0 / "pred" / "exact").summary
    corrected = evaluate("revos", sav0 / "revos", sav0 / "pred" / "exact", corrected=True).summary
    # a perfect prediction is perfect once A and R are computed on binary masks
    assert corrected["A"] == 1.0 and corrected["R"] == 1.0
    assert official["A"] < 1.0 and official["R"] < 1.0
    assert corrected["J"] == official["J"] == 1.0


def test_second_seed_matches_plain_official_algorithm(sav1):
    """Per-frame J and F (every 8th frame, two prediction sets) and ReVOS A / R against the plain
    re-implementation; aggregates recomputed from the per-frame values."""
    reference = _load_reference()
    meta = json.loads((sav1 / "valid_u" / "meta_expressions.json").read_text())["videos"]
    mask_dict = json.loads((sav1 / "valid_u" / "mask_dict.json").read_text())
    for method in ("morph", "mixed"):
        pred_root = sav1 / "pred" / method
        result = evaluate("mevis", sav1 / "valid_u", pred_root)
        by_key = {s.key: s for s in result.scores}
        for vid, video in meta.items():
            for exp_id, exp in video["expressions"].items():
                scores = by_key[f"{vid}_{exp_id}"]
                idx = list(range(0, len(video["frames"]), 8))
                rles = [[mask_dict[str(a)][t] for t in idx] for a in exp["anno_id"]]
                j_ref, f_ref = reference.reference_expression(str(pred_root / vid / exp_id),
                                                              [video["frames"][t] for t in idx], rles)
                assert np.array_equal(scores.j[idx], j_ref), (method, exp_id)
                assert np.array_equal(scores.f[idx], f_ref), (method, exp_id)
        js = [s.j.mean() for s in result.scores]
        fs = [s.f.mean() for s in result.scores]
        summary = result.summary
        assert _close(summary["J"], float(np.mean(js))) and _close(summary["F"], float(np.mean(fs)))
        assert _close(summary["J&F"], (np.mean(js) + np.mean(fs)) / 2)

    # ReVOS accuracy and robustness, the official formulas on full uint8 frames
    revos = load_dataset("revos", sav1 / "revos")
    cache = GroundTruthCache(revos)
    expression = revos.expression("sav_000001", "5")
    scores = score_expression(cache, sav1 / "pred" / "mixed", expression, ScoreOptions(revos=True))
    from pycocotools import mask as cocomask

    fg_rles = json.loads((sav1 / "revos" / "mask_dict_foreground.json").read_text())["sav_000001"]["masks_rle"]
    for t in range(0, len(scores.frames), 10):
        gt = np.zeros(revos.frame_size("sav_000001"), np.uint8)
        for a in expression.anno_ids:
            rle = mask_dict[a][t]
            if rle:
                gt += cocomask.decode(rle)
        pred = reference.cv2.imread(str(sav1 / "pred" / "mixed" / "sav_000001" / "5" / f"{scores.frames[t]}.png"),
                                    reference.cv2.IMREAD_GRAYSCALE)
        fg = cocomask.decode(fg_rles[t]).astype(np.uint8)
        assert scores.a[t] == np.mean(gt == pred)
        assert scores.r[t] == max(1 - ((1 - gt) * pred).sum() / (fg.sum() + 1e-6), 0.0)


def test_revos_through_the_cli(sav0, tmp_path, capsys):
    out = tmp_path / "revos.json"
    rc = cli_main(["evaluate", "--dataset", "revos", "--split-dir", str(sav0 / "revos"), "--pred",
                   str(sav0 / "pred" / "mixed"), "--output", str(out), "--workers", "2", "--per-frame"])
    assert rc == 0
    result = json.loads(out.read_text())
    ref = json.loads((REFERENCE_NUMBERS / "sav_revos_seed0_official.json").read_text())["methods"]["mixed"]
    assert _close(result["official"]["overall"]["JF"], ref["overall"]["JF"])
    header = (tmp_path / "revos.csv").read_text().splitlines()[0]
    assert header == "expression,video,exp_id,type_id,J,F,J&F,A,R,missing"
    frames = (tmp_path / "revos.frames.csv").read_text().splitlines()
    assert frames[0] == "expression,frame_index,frame,J,F,A,R" and len(frames) == 1 + 9 * 121
    assert "overall" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ Ref-DAVIS17, ReferFormer
def _davis_split(root: Path) -> tuple[Path, Path]:
    """A Ref-DAVIS17 split in ReferFormer's layout from three SA-V masklets (8 frames, a void band), with
    predictions for the 4 x 3 expressions that differ per annotator set."""
    from pycocotools import mask as cocomask
    from PIL import Image

    data = json.loads((SAV / "sav_000001_manual.json").read_text())
    keep = list(range(0, 120, 15))
    frames = [f"{t:05d}" for t in keep]
    objects = np.stack([[cocomask.decode({"size": data["masklet"][t][k]["size"],
                                          "counts": data["masklet"][t][k]["counts"].encode()}) for t in keep]
                        for k in range(3)]).astype(bool)  # (3, T, H, W)
    split = root / "valid"
    expressions = {}
    for k in range(3):
        for a in range(4):
            expressions[str(4 * k + a)] = {"exp": f"object {k} by annotator {a}", "obj_id": str(k + 1)}
    (root / "meta_expressions" / "valid").mkdir(parents=True)
    (root / "meta_expressions" / "valid" / "meta_expressions.json").write_text(
        json.dumps({"videos": {"sav": {"frames": frames, "expressions": expressions}}}))
    ann = split / "Annotations" / "sav"
    ann.mkdir(parents=True)
    for i, name in enumerate(frames):
        label = np.zeros(objects.shape[2:], np.uint8)
        for k in range(3):
            label[objects[k, i]] = k + 1
        label[100:110, :] = 255 if i % 2 else label[100:110, :]  # void band on odd frames
        image = Image.fromarray(label, mode="P")
        image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [255, 255, 255] * 252)
        image.save(ann / f"{name}.png")
    pred = root / "pred"
    rng = np.random.default_rng(7)
    for k in range(3):
        for a in range(4):
            folder = pred / "sav" / str(4 * k + a)
            folder.mkdir(parents=True)
            for i, name in enumerate(frames):
                m = objects[k, i]
                if a == 1:
                    m = np.roll(m, (int(rng.integers(-9, 9)), int(rng.integers(-9, 9))), axis=(0, 1))
                elif a == 2:
                    m = objects[(k + 1) % 3, i]  # a permutation: the matching must undo it
                elif a == 3 and i % 3 == 0:
                    m = np.zeros_like(m)
                reference_png = (m * 255).astype(np.uint8)
                Image.fromarray(reference_png).save(folder / f"{name}.png")
    return root, pred


def _plain_davis_unsupervised(root: Path, pred: Path, annotator: int) -> tuple[float, float]:
    """The DAVIS 2017 unsupervised evaluation of one ReferFormer annotator set, written out plainly."""
    from PIL import Image
    from scipy.optimize import linear_sum_assignment

    reference = _load_reference()
    meta = json.loads((root / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"]
    j_means, f_means = [], []
    for vid, video in meta.items():
        frames = video["frames"]
        gt = np.stack([np.array(Image.open(root / "valid" / "Annotations" / vid / f"{n}.png")) for n in frames])
        void = gt == 255
        gt = np.where(void, 0, gt)
        n_gt = int(gt[0].max())
        gt_masks = np.stack([gt == i + 1 for i in range(n_gt)])
        exps = list(video["expressions"])
        scores = []
        for k in range(len(exps) // 4):
            exp = exps[4 * k + annotator]
            scores.append(np.stack([np.array(Image.open(pred / vid / exp / f"{n}.png")) > 0 for n in frames]))
        stack = np.concatenate([np.full((1, *gt.shape), 0.1), np.stack(scores).astype(float)])
        labels = np.argmax(stack, axis=0)
        n_res = max(int(labels.max()), n_gt)
        res_masks = np.stack([labels == p + 1 for p in range(n_res)])
        T = len(frames)
        j = np.zeros((n_res, n_gt, T))
        f = np.zeros((n_res, n_gt, T))
        for n in range(n_gt):
            for p in range(n_res):
                j[p, n] = reference.reference_iou(gt_masks[n] & ~void, res_masks[p] & ~void)
                for t in range(T):
                    f[p, n, t] = reference.reference_f(res_masks[p, t] & ~void[t], gt_masks[n, t] & ~void[t])
        rows, cols = linear_sum_assignment(-((j.mean(2) + f.mean(2)) / 2))
        for r, c in zip(rows, cols):
            j_means.append(np.nanmean(j[r, c]))
            f_means.append(np.nanmean(f[r, c]))
    return float(np.mean(j_means)), float(np.mean(f_means))


def test_davis17_referformer_protocol_matches_plain_toolkit(tmp_path):
    root, pred = _davis_split(tmp_path / "davis")
    result = evaluate("davis17", root, pred, protocol="referformer", workers=2)
    summary = result.summary
    js, fs = [], []
    for a in range(4):
        j, f = _plain_davis_unsupervised(root, pred, a)
        table = summary["official"]["annotators"][f"anno_{a}"]
        assert _close(table["J-Mean"], j) and _close(table["F-Mean"], f), a
        js.append(j)
        fs.append(f)
    assert _close(summary["J"], float(np.mean(js))) and _close(summary["F"], float(np.mean(fs)))
    # annotator 2 predicted every object as the next one: matching restores the pairs
    assert summary["official"]["annotators"]["anno_2"]["J-Mean"] > 0.99
    assert summary["per_expression"]["sav_2"]["object"] == 2 and summary["missing"] == {}
    assert len(result.extra_tables["objects"]) == 4 * 3
