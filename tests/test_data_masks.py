"""COCO RLE and PNG mask I/O (glus.data.masks)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as cocomask

from glus.data.masks import decode_rle, decode_rle_stack, encode_rle, read_mask_png, rle_size, write_mask_png
from glus.errors import GLUSError

from conftest import SAV

SAV_MANUAL = SAV / "sav_000001_manual.json"


def _random_mask(rng: np.random.Generator, h: int = 7, w: int = 9) -> np.ndarray:
    return rng.random((h, w)) < 0.4


def _uncompressed(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with a background run, as YouTube-VIS files store them."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def test_encode_decode_round_trip_all_count_types():
    rng = np.random.default_rng(0)
    mask = _random_mask(rng)
    rle = encode_rle(mask)
    assert rle["size"] == [7, 9] and isinstance(rle["counts"], str)
    json.dumps(rle)  # JSON-serialisable as written into mask_dict.json
    np.testing.assert_array_equal(decode_rle(rle), mask)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    np.testing.assert_array_equal(decode_rle(as_bytes), mask)
    np.testing.assert_array_equal(decode_rle(_uncompressed(mask)), mask)
    out = decode_rle(rle, expected_hw=(7, 9))
    assert out.dtype == bool and out.shape == (7, 9) and out.flags.c_contiguous


def test_encode_matches_pycocotools_and_accepts_any_dtype():
    rng = np.random.default_rng(1)
    mask = _random_mask(rng)
    ref = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert encode_rle(mask.astype(np.uint8) * 255)["counts"] == ref["counts"].decode()
    with pytest.raises(ValueError):
        encode_rle(np.zeros((2, 3, 4), bool))


def test_list_of_rles_decodes_to_union():
    rng = np.random.default_rng(2)
    a, b = _random_mask(rng), _random_mask(rng)
    np.testing.assert_array_equal(decode_rle([encode_rle(a), encode_rle(b)]), a | b)
    np.testing.assert_array_equal(decode_rle([], expected_hw=(7, 9)), np.zeros((7, 9), bool))


def test_decode_stack_keeps_annotations_apart():
    rng = np.random.default_rng(3)
    a = _random_mask(rng)
    stack = decode_rle_stack([encode_rle(a), None], (7, 9))
    assert stack.shape == (2, 7, 9)
    np.testing.assert_array_equal(stack[0], a)
    assert not stack[1].any()


def test_real_sav_masklet_round_trip():
    """Real SA-V annotations (848x480 portrait video) decode and re-encode to the same counts."""
    data = json.loads(SAV_MANUAL.read_text())
    rle = data["masklet"][10][0]
    mask = decode_rle(rle, expected_hw=(848, 480), where="sav")
    assert mask.sum() > 1000
    assert encode_rle(mask)["counts"] == rle["counts"]


def test_size_mismatch_is_a_one_line_error_naming_the_entry():
    rle = encode_rle(np.ones((4, 5), bool))
    with pytest.raises(GLUSError) as err:
        decode_rle(rle, expected_hw=(5, 4), where="/d/mask_dict.json: annotation '3', frame 2")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("/d/mask_dict.json: annotation '3', frame 2: ")
    assert "4x5" in msg and "5x4" in msg


@pytest.mark.parametrize("rle, needle", [
    ({"size": [4, 5], "counts": "zzzz"}, "cannot decode"),  # runs past the 20 pixels
    ({"size": [4, 5], "counts": 3.5}, "'counts' must be"),
    ({"size": [4], "counts": "0n0"}, "'size' must be"),
    ({"size": [4, 5]}, "'size' and 'counts'"),
    ({"size": [2, 2], "counts": [1, 2]}, "do not cover"),
    ("not an rle", "COCO RLE"),
])
def test_malformed_rle_raises_glus_error(rle, needle):
    with pytest.raises(GLUSError, match=needle):
        decode_rle(rle, where="f.json: annotation 'x'")


def test_rle_size():
    assert rle_size({"size": [3, 4], "counts": ""}) == (3, 4)
    with pytest.raises(GLUSError):
        rle_size({"size": [True, 4], "counts": ""})


def test_write_mask_png_is_grayscale_0_255_and_atomic(tmp_path):
    rng = np.random.default_rng(4)
    mask = _random_mask(rng)
    path = tmp_path / "sub" / "00000.png"
    write_mask_png(path, mask)
    with Image.open(path) as im:
        assert im.mode == "L" and im.size == (9, 7)
        values = np.array(im)
    assert set(np.unique(values)) <= {0, 255}
    np.testing.assert_array_equal(values > 0, mask)
    write_mask_png(path, ~mask)  # replaces in place
    np.testing.assert_array_equal(read_mask_png(path), ~mask)
    assert sorted(os.listdir(path.parent)) == ["00000.png"]  # no temporary left behind


def test_write_mask_png_leaves_no_partial_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.png"
    write_mask_png(path, np.ones((3, 3), bool))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        write_mask_png(path, np.zeros((3, 3), bool))
    assert sorted(os.listdir(tmp_path)) == ["m.png"]
    assert read_mask_png(path).all()  # the old file is intact


def test_read_palette_png_indices_and_foreground(tmp_path):
    idx = np.array([[0, 1, 2], [2, 0, 7]], np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9, 9, 9] * 253)
    path = tmp_path / "p.png"
    im.save(path)
    np.testing.assert_array_equal(read_mask_png(path, indices=True), idx)
    np.testing.assert_array_equal(read_mask_png(path), idx > 0)
    with pytest.raises(GLUSError, match="disagrees with the frame size"):
        read_mask_png(path, expected_hw=(3, 2))


def test_read_mask_png_errors_name_the_file(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(rgb)
    with pytest.raises(GLUSError, match="single-channel") as err:
        read_mask_png(rgb)
    assert str(rgb) in str(err.value)
    with pytest.raises(GLUSError, match="not found"):
        read_mask_png(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(GLUSError, match="cannot read"):
        read_mask_png(bad)
