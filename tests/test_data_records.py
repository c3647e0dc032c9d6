"""The data model (glus.data.records): Expression, Video, Dataset ground truth and frame size, LRUCache."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glus.data.formats import load_dataset
from glus.data.masks import encode_rle
from glus.data.records import Dataset, Expression, LRUCache, MaskSource, Video
from glus.errors import GLUSError


class BoxMasks(MaskSource):
    """Annotation ``k`` covers rows ``k .. k + t`` on frame ``t`` (picklable test source)."""

    where = "boxes"

    def __init__(self, hint=None):
        self.hint = hint
        self.calls = 0

    def annotation_masks(self, video, expression, frame_index, frame_hw):
        self.calls += 1
        out = np.zeros((len(expression.anno_ids), *frame_hw), dtype=bool)
        for i, a in enumerate(expression.anno_ids):
            k = int(a)
            out[i, k:k + frame_index + 1] = True
        return out

    def size_hint(self, video):
        return self.hint


def make_dataset(tmp_path: Path, height=None, width=None, masks=None) -> Dataset:
    names = ["00000", "00001", "00002"]
    exps = {"0": Expression("v", "0", "two rows", (1, 2), ("1", "3")),
            "1": Expression("v", "1", "nothing", (), (), type_id=2)}
    video = Video("v", names, [tmp_path / "JPEGImages" / "v" / f"{n}.jpg" for n in names], exps, height, width)
    return Dataset("valid", tmp_path, {"v": video}, masks)


def test_expression_is_frozen_and_keyed_like_the_evaluators():
    e = Expression("vid_01", "3", "the dog", (0,), ("7",))
    assert e.key == "vid_01_3" and e.type_id is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.text = "a cat"
    assert e == Expression("vid_01", "3", "the dog", (0,), ("7",))
    assert len({e, Expression("vid_01", "3", "the dog", (0,), ("7",))}) == 1


def test_gt_mask_is_the_union_and_gt_masks_stacks_frames(tmp_path):
    ds = make_dataset(tmp_path, 6, 4, BoxMasks())
    assert ds.num_expressions == 2 and [e.key for e in ds.expressions()] == ["v_0", "v_1"]
    m = ds.gt_mask("v", "0", 1)  # rows 1..2 and 3..4
    assert m.dtype == bool and m.shape == (6, 4)
    np.testing.assert_array_equal(m.any(axis=1), [False, True, True, True, True, False])
    per = ds.annotation_masks("v", "0", 1)
    assert per.shape == (2, 6, 4) and per[0].sum() == 8 and per[1].sum() == 8
    stack = ds.gt_masks("v", "0")
    assert stack.shape == (3, 6, 4)
    for t in range(3):
        np.testing.assert_array_equal(stack[t], ds.gt_mask("v", "0", t))
    empty = ds.gt_masks("v", "1")
    assert empty.shape == (3, 6, 4) and not empty.any()


def test_frame_size_order_meta_then_frame_image_then_masks(tmp_path):
    assert make_dataset(tmp_path, 6, 4, BoxMasks(hint=(9, 9))).frame_size("v") == (6, 4)
    assert make_dataset(tmp_path, None, None, BoxMasks(hint=(9, 9))).frame_size("v") == (9, 9)
    frame = tmp_path / "JPEGImages" / "v" / "00000.jpg"
    frame.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(frame)
    ds = make_dataset(tmp_path, None, None, BoxMasks(hint=(9, 9)))
    assert ds.frame_size("v") == (5, 7)
    assert ds.gt_mask("v", "0", 0).shape == (5, 7)
    frame.write_bytes(b"broken")
    with pytest.raises(GLUSError, match="cannot read frame"):
        make_dataset(tmp_path, None, None, BoxMasks()).frame_size("v")


def test_unknown_frame_size_and_missing_ground_truth_are_user_errors(tmp_path):
    ds = make_dataset(tmp_path, None, None, BoxMasks(hint=None))
    assert ds.frame_size("v") is None
    with pytest.raises(GLUSError, match="cannot tell the frame size of video 'v'"):
        ds.gt_mask("v", "1", 0)
    no_gt = make_dataset(tmp_path, 6, 4, None)
    assert not no_gt.has_ground_truth and "ground_truth=False" in repr(no_gt)
    with pytest.raises(GLUSError, match="no ground-truth masks"):
        no_gt.gt_masks("v", "0")
    with pytest.raises(IndexError):
        make_dataset(tmp_path, 6, 4, BoxMasks()).annotation_masks("v", "0", -1)


def test_lru_cache_evicts_least_recently_used_and_pickles():
    cache: LRUCache[str, int] = LRUCache(2)
    made = []

    def make(k):
        return lambda: made.append(k) or len(made)

    assert cache.get_or_create("a", make("a")) == 1
    assert cache.get_or_create("b", make("b")) == 2
    assert cache.get_or_create("a", make("a")) == 1  # hit: "a" becomes most recent
    cache.get_or_create("c", make("c"))  # evicts "b"
    assert "b" not in cache and "a" in cache and made == ["a", "b", "c"]
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.capacity == 2 and len(clone) == 0
    with pytest.raises(ValueError):
        LRUCache(0)


def test_loaded_dataset_pickles_for_worker_processes(tmp_path):
    """Evaluators send datasets to worker processes: a pickled copy gives the same masks."""
    rng = np.random.default_rng(0)
    masks = rng.random((3, 4, 5)) < 0.5
    meta = {"videos": {"v": {"frames": ["0", "1", "2"],
                             "expressions": {"0": {"exp": "x", "obj_id": [1], "anno_id": [1]}}}}}
    (tmp_path / "meta_expressions.json").write_text(json.dumps(meta))
    (tmp_path / "mask_dict.json").write_text(json.dumps({"1": [encode_rle(m) for m in masks]}))
    ds = load_dataset("mevis", tmp_path, "valid_u")
    ds.gt_mask("v", "0", 0)  # warm the caches before pickling
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone.gt_masks("v", "0"), masks)
