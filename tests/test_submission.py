"""``glus submit``: completeness and format checks, and the zip layout of each server."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from glus.cli import main as cli_main
from glus.data.formats import load_dataset
from glus.eval.example import example_dir
from glus.eval.submission import check_submission

VIDEO = "sav_000001"


@pytest.fixture()
def pred(tmp_path) -> Path:
    out = tmp_path / "pred"
    shutil.copytree(example_dir() / "pred", out)
    return out


def _submit(*args: str) -> int:
    return cli_main(["submit", *args])


def test_mevis_zip_has_frames_at_the_root(tmp_path, pred, capsys):
    (pred / "notes.txt").write_text("not part of the split")
    out = tmp_path / "sub.zip"
    assert _submit("--dataset", "mevis", "--split-dir", str(example_dir() / "valid_u"), str(pred), str(out)) == 0
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert len(names) == 3 * 25 and all(n.startswith(f"{VIDEO}/") for n in names)
        first = f"{VIDEO}/0/00000.png"
        assert zf.read(first) == (pred / first).read_bytes()
    printed = capsys.readouterr().out
    assert "75 frames checked" in printed and "1 files not in the split left out" in printed


def _refytvos_split(root: Path) -> Path:
    """A tiny Ref-YouTube-VOS valid split: two videos in the valid meta, one of them a test video."""
    frames = ["00000", "00005", "00010"]
    meta = {"videos": {v: {"frames": frames, "expressions": {"0": {"exp": "a cat"}, "1": {"exp": "a dog"}}}
                       for v in ("vid_a", "vid_test")}}
    for split, videos in (("valid", meta), ("test", {"videos": {"vid_test": meta["videos"]["vid_test"]}})):
        folder = root / "meta_expressions" / split
        folder.mkdir(parents=True)
        (folder / "meta_expressions.json").write_text(json.dumps(videos))
    images = root / "valid" / "JPEGImages" / "vid_a"
    images.mkdir(parents=True)
    for f in frames:
        cv2.imwrite(str(images / f"{f}.jpg"), np.zeros((12, 20, 3), np.uint8))
    return root


def _write_preds(pred: Path, value: int = 255) -> None:
    for exp in ("0", "1"):
        (pred / "vid_a" / exp).mkdir(parents=True)
        for f in ("00000", "00005", "00010"):
            m = np.zeros((12, 20), np.uint8)
            m[2:6, 3:9] = value
            cv2.imwrite(str(pred / "vid_a" / exp / f"{f}.png"), m)


def test_refytvos_zip_uses_the_annotations_folder(tmp_path):
    root = _refytvos_split(tmp_path / "rytvos")
    pred = tmp_path / "pred"
    _write_preds(pred)
    out = tmp_path / "sub.zip"
    assert _submit("--dataset", "refytvos", "--split-dir", str(root), str(pred), str(out)) == 0
    with zipfile.ZipFile(out) as zf:
        names = sorted(zf.namelist())
    assert names[0] == "Annotations/vid_a/0/00000.png" and len(names) == 6  # the test video is not asked for


def test_problems_are_listed_and_nothing_is_written(tmp_path, pred, capsys):
    exp0 = pred / VIDEO / "0"
    sorted(exp0.glob("*.png"))[2].unlink()
    cv2.imwrite(str(sorted(exp0.glob("*.png"))[4]), np.ones((848, 480), np.uint8))  # 0/1 values
    cv2.imwrite(str(sorted((pred / VIDEO / "1").glob("*.png"))[0]), np.zeros((10, 10), np.uint8))  # size
    palette = Image.fromarray(np.zeros((848, 480), np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.save(sorted((pred / VIDEO / "2").glob("*.png"))[1])
    out = tmp_path / "sub.zip"
    rc = _submit("--dataset", "mevis", "--split-dir", str(example_dir() / "valid_u"), str(pred), str(out))
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists() and not list(tmp_path.glob(".sub.zip*"))
    assert "1 of 25 frames missing (00040)" in err
    assert "values other than 0 and 255 (e.g. 1)" in err
    assert "size 10x10, expected 480x848" in err
    assert "-bit palette PNG, expected 8-bit grayscale" in err
    assert "4 problems in the predictions" in err


def test_convert_reencodes_masks_of_another_kind(tmp_path):
    root = _refytvos_split(tmp_path / "rytvos")
    pred = tmp_path / "pred"
    _write_preds(pred, value=1)
    dataset = load_dataset("refytvos", root)
    assert len(check_submission(dataset, pred).problems) == 6
    out = tmp_path / "sub.zip"
    assert _submit("--dataset", "refytvos", "--split-dir", str(root), "--convert", str(pred), str(out)) == 0
    with zipfile.ZipFile(out) as zf:
        data = zf.read("Annotations/vid_a/1/00010.png")
    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert m.dtype == np.uint8 and m.ndim == 2 and set(np.unique(m)) == {0, 255} and m[3, 4] == 255


def test_missing_expression_folder(tmp_path, pred, capsys):
    shutil.rmtree(pred / VIDEO / "1")
    rc = _submit("--dataset", "mevis", "--split-dir", str(example_dir() / "valid_u"), str(pred),
                 str(tmp_path / "s.zip"))
    assert rc == 2 and f"{VIDEO}/1/: missing folder (25 frames)" in capsys.readouterr().err
