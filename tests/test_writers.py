"""Mask writers (glus.inference.writers): PNG layout, atomicity, resumable markers, RLE JSON, expressions.json."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from glus.errors import GLUSError
from glus.inference import writers
from glus.data.masks import encode_rle
from glus.inference.writers import (
    DONE_MARKER, atomic_write_bytes, atomic_write_json, ensure_writable_dir, expression_dir, is_expression_done,
    segment_dir, write_expression_masks, write_expressions_json, write_rle_json,
)

NAMES = ["00000", "00005", "00010"]


def masks(n: int = 3, shape: tuple[int, int] = (12, 16)) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.random(shape) > 0.5 for _ in range(n)]


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L", im.mode  # 8-bit grayscale
        return np.asarray(im)


def test_pngs_are_8bit_0_255_and_round_trip(tmp_path: Path) -> None:
    m = masks(1)[0]
    for value in (m, m.astype(np.uint8), m.astype(np.int64) * 7):
        write_expression_masks(tmp_path, ["f"], [value])
        got = read_png(tmp_path / "f.png")
        assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 255}
        np.testing.assert_array_equal(got > 0, m)
    assert sorted(p.name for p in tmp_path.iterdir()) == [DONE_MARKER, "f.png"]  # no temp file left behind


def test_atomic_json_is_readable_by_others(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    mode = stat.S_IMODE((tmp_path / "x.json").stat().st_mode)
    assert mode == writers.FILE_MODE and mode & 0o044, oct(mode)  # not mkstemp's private 0600


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(writers.os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # the temp file was removed


def test_layouts(tmp_path: Path) -> None:
    assert expression_dir(tmp_path, "vid1", 3) == tmp_path / "vid1" / "3"
    assert segment_dir(tmp_path, 0) == tmp_path / "0"


def test_expression_done_protocol(tmp_path: Path) -> None:
    exp = expression_dir(tmp_path, "vid", "0")
    assert not is_expression_done(exp, NAMES)
    ms = masks()
    assert write_expression_masks(exp, NAMES, iter(ms)) == 3  # a generator is fine
    assert sorted(p.name for p in exp.iterdir()) == [DONE_MARKER, *[f"{n}.png" for n in NAMES]]
    for name, m in zip(NAMES, ms):
        np.testing.assert_array_equal(read_png(exp / f"{name}.png") > 0, m)
    assert is_expression_done(exp, NAMES)
    # a different frame selection is not "done"
    assert not is_expression_done(exp, NAMES[:2])
    assert not is_expression_done(exp, [*NAMES, "00015"])
    # a PNG deleted after the fact makes it partial again
    (exp / "00005.png").unlink()
    assert not is_expression_done(exp, NAMES)
    # a garbled marker is not "done"
    write_expression_masks(exp, NAMES, ms)
    (exp / DONE_MARKER).write_text("{not json")
    assert not is_expression_done(exp, NAMES)


def test_interrupted_expression_is_not_done_and_is_redone(tmp_path: Path) -> None:
    exp = tmp_path / "vid" / "1"
    write_expression_masks(exp, NAMES, masks())
    assert is_expression_done(exp, NAMES)
    new = [~m for m in masks()]

    def crash_after_one():
        yield new[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_expression_masks(exp, NAMES, crash_after_one())
    assert not is_expression_done(exp, NAMES)  # the old marker was removed before rewriting
    write_expression_masks(exp, NAMES, new)
    assert is_expression_done(exp, NAMES)
    np.testing.assert_array_equal(read_png(exp / "00010.png") > 0, new[2])


def test_mask_count_and_shape_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 masks for 3"):
        write_expression_masks(tmp_path / "a", NAMES, masks(2))
    assert not is_expression_done(tmp_path / "a", NAMES)
    with pytest.raises(ValueError, match="more masks"):
        write_expression_masks(tmp_path / "b", NAMES, masks(4))
    with pytest.raises(ValueError, match="shape"):
        write_expression_masks(tmp_path / "c", NAMES[:2], [masks(1)[0], np.zeros((5, 5), bool)])


def test_rle_json_round_trip(tmp_path: Path) -> None:
    ms = masks()
    out = tmp_path / "pred.json"
    precomputed = encode_rle(ms[2])
    write_rle_json(out, {"0": {"00000": ms[0], "00005": ms[1]}, "the cat": {"00010": precomputed}})
    data = json.loads(out.read_text())
    assert list(data) == ["0", "the cat"] and list(data["0"]) == ["00000", "00005"]
    for got, m in ((data["0"]["00000"], ms[0]), (data["0"]["00005"], ms[1]), (data["the cat"]["00010"], ms[2])):
        assert got["size"] == [12, 16] and isinstance(got["counts"], str)
        decoded = mask_utils.decode({"size": got["size"], "counts": got["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), m)
    assert [p.name for p in tmp_path.iterdir()] == ["pred.json"]


def test_expressions_json(tmp_path: Path) -> None:
    write_expressions_json(tmp_path / "expressions.json", ["the cat", "le chien à gauche"])
    text = (tmp_path / "expressions.json").read_text(encoding="utf-8")
    assert json.loads(text) == {"0": "the cat", "1": "le chien à gauche"}
    assert "à" in text  # kept readable, not \u-escaped
    write_expressions_json(tmp_path / "e2.json", {"vid": {"0": "a"}})
    assert json.loads((tmp_path / "e2.json").read_text()) == {"vid": {"0": "a"}}
    with pytest.raises(TypeError):
        write_expressions_json(tmp_path / "e3.json", "the cat")


def test_ensure_writable_dir(tmp_path: Path) -> None:
    out = ensure_writable_dir(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []  # the probe file is gone
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(GLUSError) as exc:
        ensure_writable_dir(a_file)
    assert str(a_file) in str(exc.value) and "not a folder" in str(exc.value)
    with pytest.raises(GLUSError) as exc:
        ensure_writable_dir(a_file / "sub")
    assert "cannot create output folder" in str(exc.value) and "\n" not in str(exc.value)


def test_ensure_writable_dir_refuses_unwritable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(GLUSError) as exc:
        ensure_writable_dir(tmp_path)
    assert str(exc.value) == f"{tmp_path}: output folder is not writable (Permission denied)"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_ensure_writable_dir_read_only_folder(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(GLUSError, match="not writable"):
            ensure_writable_dir(ro)
    finally:
        ro.chmod(0o700)
