"""Dataset readers (glus.data.formats) on small fixtures written in each official layout, and their errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as cocomask

from glus.data.formats import DATASET_NAMES, load_dataset
from glus.data.formats._json import iter_members
from glus.data.masks import encode_rle
from glus.errors import GLUSError

H, W = 6, 8


def _masks(rng: np.random.Generator, t: int, p_empty: float = 0.3) -> np.ndarray:
    """``(t, H, W)`` random masks, some frames empty."""
    m = rng.random((t, H, W)) < 0.35
    m[rng.random(t) < p_empty] = False
    return m


def _rle_list(masks: np.ndarray) -> list:
    """MeViS style: RLE per frame, null where the object is absent."""
    return [encode_rle(m) if m.any() else None for m in masks]


def _dump(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _palette_png(path: Path, idx: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(idx.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0] + [200, 30, 30] * 255)
    im.save(path)


def _one_line_error(excinfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# --------------------------------------------------------------------------------------------------- MeViS
def write_mevis(folder: Path, seed: int = 0, with_masks: bool = True) -> dict:
    """Two videos; v2 lists its frames out of order (masks follow the file's order). Returns the truth."""
    rng = np.random.default_rng(seed)
    objs = {"0": _masks(rng, 4), "1": _masks(rng, 4), "2": _masks(rng, 4), "3": _masks(rng, 3)}
    objs["1"][1] = objs["0"][1]  # identical overlapping annotations on one frame
    meta = {"videos": {
        "v1": {"frames": ["00000", "00001", "00002", "00003"], "expressions": {
            "0": {"exp": "the left dog", "obj_id": [0], "anno_id": [0]},
            "1": {"exp": "two dogs", "obj_id": [0, 1], "anno_id": [0, 1]},
            "2": {"exp": "a cat.", "obj_id": [2], "anno_id": [2]}}},
        "v2": {"frames": ["00002", "00000", "00001"], "expressions": {
            "0": {"exp": "the ball", "obj_id": [5], "anno_id": ["3"]}}}}}
    _dump(folder / "meta_expressions.json", meta)
    if with_masks:
        _dump(folder / "mask_dict.json", {k: _rle_list(v) for k, v in objs.items()})
    return objs


def test_mevis_reads_videos_expressions_and_union_masks(tmp_path):
    folder = tmp_path / "mevis" / "valid_u"
    objs = write_mevis(folder)
    ds = load_dataset("mevis", folder)
    assert (ds.name, ds.split, ds.root) == ("mevis", "valid_u", folder)
    assert list(ds.videos) == ["v1", "v2"]
    v1 = ds.videos["v1"]
    assert v1.frame_names == ["00000", "00001", "00002", "00003"]
    assert v1.frame_paths[2] == folder / "JPEGImages" / "v1" / "00002.jpg"
    e = v1.expressions["1"]
    assert (e.video_id, e.exp_id, e.text, e.obj_ids, e.anno_ids, e.type_id) == \
        ("v1", "1", "two dogs", (0, 1), ("0", "1"), None)
    assert e.key == "v1_1"
    assert [x.key for x in ds.expressions()] == ["v1_0", "v1_1", "v1_2", "v2_0"]
    assert ds.frame_size("v1") == (H, W)  # from the stored RLEs: no frames on disk

    for t in range(4):
        np.testing.assert_array_equal(ds.gt_mask("v1", "1", t), objs["0"][t] | objs["1"][t])
        per_anno = ds.annotation_masks("v1", "1", t)
        assert per_anno.shape == (2, H, W)
        np.testing.assert_array_equal(per_anno[1], objs["1"][t])
    np.testing.assert_array_equal(ds.gt_masks("v1", "2"), objs["2"])
    assert ds.gt_masks("v1", "0").dtype == bool

    # v2's frames are sorted; each mask stays with its frame name (file order 00002, 00000, 00001)
    v2 = ds.videos["v2"]
    assert v2.frame_names == ["00000", "00001", "00002"]
    np.testing.assert_array_equal(ds.gt_mask("v2", "0", 0), objs["3"][1])
    np.testing.assert_array_equal(ds.gt_mask("v2", "0", 2), objs["3"][0])


def test_mevis_root_plus_split_and_split_without_ground_truth(tmp_path):
    write_mevis(tmp_path / "valid", with_masks=False)
    for ds in (load_dataset("mevis", tmp_path, "valid"), load_dataset("mevis", tmp_path / "valid")):
        assert ds.split == "valid" and not ds.has_ground_truth and ds.num_expressions == 4
    with pytest.raises(GLUSError, match="no ground-truth masks") as err:
        ds.gt_mask("v1", "0", 0)
    _one_line_error(err, str(tmp_path / "valid"))
    with pytest.raises(GLUSError, match="meta_expressions.json"):
        load_dataset("mevis", tmp_path)


def test_mevis_masks_are_parsed_lazily_and_cached_per_annotation(tmp_path):
    write_mevis(tmp_path)
    ds = load_dataset("mevis", tmp_path, "valid_u")
    store = ds.masks.store
    assert len(store) == 4 and len(store._cache) == 0  # indexed, nothing parsed yet
    ds.gt_mask("v1", "1", 0)
    assert sorted(store._cache._data) == ["0", "1"]
    ds.gt_masks("v1", "1")
    assert len(store._cache) == 2


def test_mevis_frame_size_comes_from_the_first_frame_image(tmp_path):
    write_mevis(tmp_path)
    frame = tmp_path / "JPEGImages" / "v1" / "00000.jpg"
    frame.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(frame)
    ds = load_dataset("mevis", tmp_path, "valid_u")
    assert ds.frame_size("v1") == (H + 2, W)
    # the stored RLE (H x W) now disagrees with the frame: a one-line error naming file, annotation, frame
    with pytest.raises(GLUSError) as err:
        ds.gt_mask("v1", "2", 0)
    _one_line_error(err, str(tmp_path / "mask_dict.json"), "annotation '2'", "frame 0", "disagrees")


def test_mevis_bad_json_names_file_and_position(tmp_path):
    write_mevis(tmp_path)
    meta = tmp_path / "meta_expressions.json"
    meta.write_text(meta.read_text()[:-5])
    with pytest.raises(GLUSError) as err:
        load_dataset("mevis", tmp_path, "valid_u")
    _one_line_error(err, str(meta), "invalid JSON", "line 1")

    write_mevis(tmp_path)
    masks = tmp_path / "mask_dict.json"
    masks.write_text(masks.read_text().replace("null", "nul", 1))
    with pytest.raises(GLUSError) as err:
        load_dataset("mevis", tmp_path, "valid_u")
    _one_line_error(err, str(masks), "invalid JSON at byte")


def test_mevis_mask_list_of_wrong_length(tmp_path):
    objs = write_mevis(tmp_path)
    data = {k: _rle_list(v) for k, v in objs.items()}
    data["2"] = data["2"][:3]
    _dump(tmp_path / "mask_dict.json", data)
    with pytest.raises(GLUSError) as err:
        load_dataset("mevis", tmp_path, "valid_u")
    _one_line_error(err, str(tmp_path / "mask_dict.json"), "annotation '2'", "3 masks", "video 'v1'", "4 frames")


def test_mevis_unknown_annotation_id(tmp_path):
    objs = write_mevis(tmp_path)
    del objs["3"]
    _dump(tmp_path / "mask_dict.json", {k: _rle_list(v) for k, v in objs.items()})
    with pytest.raises(GLUSError) as err:
        load_dataset("mevis", tmp_path, "valid_u")
    _one_line_error(err, str(tmp_path / "mask_dict.json"), "unknown annotation id '3'", "video 'v2'",
                    "expression '0'")


def test_mevis_missing_frames(tmp_path):
    write_mevis(tmp_path)
    meta = json.loads((tmp_path / "meta_expressions.json").read_text())
    del meta["videos"]["v2"]["frames"]
    _dump(tmp_path / "meta_expressions.json", meta)
    with pytest.raises(GLUSError) as err:
        load_dataset("mevis", tmp_path, "valid_u")
    _one_line_error(err, str(tmp_path / "meta_expressions.json"), "video 'v2'", "\"frames\"")


def test_mevis_mask_entry_that_is_not_a_list(tmp_path):
    objs = write_mevis(tmp_path)
    data = {k: _rle_list(v) for k, v in objs.items()}
    data["1"] = {"size": [H, W], "counts": "0"}
    _dump(tmp_path / "mask_dict.json", data)
    with pytest.raises(GLUSError) as err:
        load_dataset("mevis", tmp_path, "valid_u")
    _one_line_error(err, "annotation '1'", "expected a list")


# --------------------------------------------------------------------------------------------------- ReVOS
def write_revos(root: Path, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    objs = {"10": _masks(rng, 5), "11": _masks(rng, 5), "12": _masks(rng, 5, p_empty=0)}
    meta = {"videos": {"MOSE/abc": {"height": H, "width": W, "frames": [f"{i:05d}" for i in range(5)],
                                    "expressions": {
                                        "0": {"exp": "the red car", "obj_id": [0], "anno_id": [10], "type_id": 0},
                                        "1": {"exp": "what carries people?", "obj_id": [0, 1],
                                              "anno_id": [10, 11], "type_id": 1},
                                        "2": {"exp": "the elephant", "obj_id": [], "anno_id": [], "type_id": 2}}}}}
    _dump(root / "meta_expressions_valid_.json", meta)
    _dump(root / "meta_expressions_train_.json",
          {"videos": {"t": {"height": H, "width": W, "frames": ["0", "1", "2", "3", "4"], "expressions": {
              "0": {"exp": "x", "obj_id": [2], "anno_id": [12]}}}}})
    _dump(root / "mask_dict.json", {k: _rle_list(v) for k, v in objs.items()})
    fg = objs["10"] | objs["11"]
    _dump(root / "mask_dict_foreground.json",
          {"MOSE/abc": {"masks_rle": [encode_rle(m) for m in fg],
                        "foreground_ratio": [float(m.mean()) for m in fg]}})
    return objs


def test_revos_types_sizes_no_target_and_foreground(tmp_path):
    objs = write_revos(tmp_path)
    ds = load_dataset("revos", tmp_path)
    assert (ds.name, ds.split) == ("revos", "valid")
    video = ds.videos["MOSE/abc"]
    assert (video.height, video.width) == (H, W) and ds.frame_size("MOSE/abc") == (H, W)
    assert video.frame_paths[0] == tmp_path / "JPEGImages" / "MOSE" / "abc" / "00000.jpg"
    assert [e.type_id for e in ds.expressions()] == [0, 1, 2]
    assert video.expressions["1"].anno_ids == ("10", "11")
    np.testing.assert_array_equal(ds.gt_masks("MOSE/abc", "1"), objs["10"] | objs["11"])
    no_target = ds.gt_masks("MOSE/abc", "2")
    assert no_target.shape == (5, H, W) and not no_target.any()
    assert ds.annotation_masks("MOSE/abc", "2", 0).shape == (0, H, W)
    fg = ds.foreground_mask("MOSE/abc", 3)
    assert fg.dtype == np.uint8
    np.testing.assert_array_equal(fg, (objs["10"][3] | objs["11"][3]).astype(np.uint8))

    train = load_dataset("revos", tmp_path, "train")
    assert train.split == "train" and train.videos["t"].expressions["0"].type_id is None
    np.testing.assert_array_equal(train.gt_masks("t", "0"), objs["12"])


def test_revos_errors(tmp_path):
    write_revos(tmp_path)
    meta_path = tmp_path / "meta_expressions_valid_.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"]["MOSE/abc"]["expressions"]["1"]["type_id"] = 5
    _dump(meta_path, meta)
    with pytest.raises(GLUSError) as err:
        load_dataset("revos", tmp_path)
    _one_line_error(err, str(meta_path), "expression '1'", "type_id")

    write_revos(tmp_path)
    meta = json.loads(meta_path.read_text())
    meta["videos"]["MOSE/abc"]["height"] = W  # the RLEs are H x W: the size check catches the swap
    _dump(meta_path, meta)
    ds = load_dataset("revos", tmp_path)
    with pytest.raises(GLUSError) as err:
        ds.gt_masks("MOSE/abc", "0")
    _one_line_error(err, str(tmp_path / "mask_dict.json"), "annotation '10'", "disagrees with the frame size")

    with pytest.raises(GLUSError, match="meta_expressions_test_.json"):
        load_dataset("revos", tmp_path, "test")


# ------------------------------------------------------------------------------------------ Ref-DAVIS17
def write_davis(root: Path, seed: int = 2) -> dict:
    """valid: mask_dict.pkl as VISA / GLUS evaluate it; train: palette PNG Annotations."""
    rng = np.random.default_rng(seed)
    # 12 expressions in one video: ids sort as strings ("10" < "2"), which numbers the pkl entries
    exps = {str(i): {"exp": f"object number {i}", "obj_id": str(1 + i % 3)} for i in range(12)}
    meta = {"videos": {"zebra": {"frames": ["00000", "00001", "00002"], "expressions": exps},
                       "ant": {"frames": ["00000", "00001"], "expressions": {"0": {"exp": "ant", "obj_id": "1"}}}}}
    _dump(root / "meta_expressions" / "valid" / "meta_expressions.json", meta)
    truth, pkl, i = {}, {}, 0
    for vid in sorted(meta["videos"]):
        t = len(meta["videos"][vid]["frames"])
        for exp_id in sorted(meta["videos"][vid]["expressions"]):
            m = _masks(rng, t)
            truth[(vid, exp_id)] = m
            pkl[str(i)] = [cocomask.encode(np.asfortranarray(x.astype(np.uint8))) if x.any() else None for x in m]
            i += 1
    (root / "valid").mkdir(parents=True)
    (root / "valid" / "mask_dict.pkl").write_bytes(pickle.dumps(pkl, protocol=4))

    train_meta = {"videos": {"bear": {"frames": ["00000", "00005"], "expressions": {
        "0": {"exp": "the bear", "obj_id": "1"}, "1": {"exp": "the fish", "obj_id": "2"}}}}}
    _dump(root / "meta_expressions" / "train" / "meta_expressions.json", train_meta)
    labels = rng.integers(0, 3, size=(2, H, W))
    for t, name in enumerate(["00000", "00005"]):
        _palette_png(root / "train" / "Annotations" / "bear" / f"{name}.png", labels[t])
    truth["labels"] = labels
    return truth


def test_davis17_valid_from_mask_dict_pkl(tmp_path):
    truth = write_davis(tmp_path)
    ds = load_dataset("davis17", tmp_path, "valid")
    assert (ds.name, ds.split, ds.root) == ("davis17", "valid", tmp_path / "valid")
    assert list(ds.videos) == ["zebra", "ant"]  # file order
    e = ds.videos["zebra"].expressions["10"]
    assert e.obj_ids == ("2",) and e.anno_ids == ("3",)  # ant_0 is 0, zebra's "0", "1", "10" are 1, 2, 3
    for key, masks in truth.items():
        if key != "labels":
            np.testing.assert_array_equal(ds.gt_masks(*key), masks)
    # the split folder works as well, and the split defaults to valid from the root
    assert load_dataset("davis17", tmp_path / "valid").num_expressions == 13
    assert load_dataset("davis17", tmp_path).split == "valid"


def test_davis17_train_from_palette_pngs(tmp_path):
    truth = write_davis(tmp_path)
    ds = load_dataset("davis17", tmp_path / "train")
    assert ds.split == "train" and ds.videos["bear"].expressions["1"].anno_ids == ()
    assert ds.frame_size("bear") == (H, W)
    np.testing.assert_array_equal(ds.gt_mask("bear", "1", 1), truth["labels"][1] == 2)
    np.testing.assert_array_equal(ds.gt_masks("bear", "0"), truth["labels"] == 1)


def test_davis17_pickle_errors(tmp_path):
    write_davis(tmp_path)
    pkl_path = tmp_path / "valid" / "mask_dict.pkl"
    data = pickle.loads(pkl_path.read_bytes())
    data["4"] = data["4"][:-1]
    pkl_path.write_bytes(pickle.dumps(data))
    with pytest.raises(GLUSError) as err:
        load_dataset("davis17", tmp_path, "valid")
    _one_line_error(err, str(pkl_path), "annotation '4'", "2 masks", "3 frames")

    del data["4"]
    pkl_path.write_bytes(pickle.dumps(data))
    with pytest.raises(GLUSError) as err:
        load_dataset("davis17", tmp_path, "valid")
    _one_line_error(err, str(pkl_path), "unknown annotation id '4'")

    # a pickle that would import (and could run) code is refused
    pkl_path.write_bytes(pickle.dumps({"0": [Path("x")]}))
    with pytest.raises(GLUSError, match="refusing to load") as err:
        load_dataset("davis17", tmp_path, "valid")
    _one_line_error(err, str(pkl_path))


# ------------------------------------------------------------------------------------- Ref-YouTube-VOS
def write_refytvos(root: Path, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = ["00000", "00005", "00010"]
    train = {"videos": {"a1": {"frames": frames, "expressions": {
        "0": {"exp": "a person riding a horse", "obj_id": "1"},
        "1": {"exp": "the horse", "obj_id": "2"}}}}}
    _dump(root / "meta_expressions" / "train" / "meta_expressions.json", train)
    labels = rng.integers(0, 3, size=(3, H, W))
    for t, name in enumerate(frames):
        _palette_png(root / "train" / "Annotations" / "a1" / f"{name}.png", labels[t])
    valid = {"videos": {v: {"frames": frames, "expressions": {"0": {"exp": f"thing in {v}", "obj_id": "1"}}}
                        for v in ("vA", "tB", "vC")}}
    _dump(root / "meta_expressions" / "valid" / "meta_expressions.json", valid)
    (root / "valid" / "JPEGImages").mkdir(parents=True)
    _dump(root / "meta_expressions" / "test" / "meta_expressions.json",
          {"videos": {"tB": valid["videos"]["tB"]}})
    return labels


def test_refytvos_train_palette_masks_and_valid_without_test_videos(tmp_path):
    labels = write_refytvos(tmp_path)
    train = load_dataset("refytvos", tmp_path, "train")
    assert train.name == "refytvos" and train.videos["a1"].expressions["0"].obj_ids == ("1",)
    np.testing.assert_array_equal(train.gt_masks("a1", "1"), labels == 2)
    assert train.videos["a1"].frame_paths[1] == tmp_path / "train" / "JPEGImages" / "a1" / "00005.jpg"

    valid = load_dataset("refytvos", tmp_path, "valid")
    assert list(valid.videos) == ["vA", "vC"] and not valid.has_ground_truth
    assert list(load_dataset("refytvos", tmp_path / "valid").videos) == ["vA", "vC"]
    assert len(load_dataset("refytvos", tmp_path, "valid", keep_test_videos=True).videos) == 3


def test_refytvos_errors(tmp_path):
    write_refytvos(tmp_path)
    (tmp_path / "meta_expressions" / "test" / "meta_expressions.json").unlink()
    with pytest.raises(GLUSError) as err:
        load_dataset("refytvos", tmp_path, "valid")
    _one_line_error(err, "305 test videos", "test_meta")

    # a frame listed in the meta without its annotation PNG
    (tmp_path / "train" / "Annotations" / "a1" / "00010.png").unlink()
    ds = load_dataset("refytvos", tmp_path, "train")
    ds.gt_mask("a1", "0", 1)
    with pytest.raises(GLUSError) as err:
        ds.gt_mask("a1", "0", 2)
    _one_line_error(err, str(tmp_path / "train" / "Annotations" / "a1" / "00010.png"), "missing annotation",
                    "frame '00010'")
    with pytest.raises(GLUSError, match="does not take the option"):
        load_dataset("mevis", tmp_path, "train", keep_test_videos=True)


# ---------------------------------------------------------------------------------------------- LV-VIS
def _uncompressed(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with a background run, as YouTube-VIS files store them."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": [H, W], "counts": ([0] + runs) if flat[0] else runs}


def write_lvvis(folder: Path, seed: int = 4) -> dict:
    """YouTube-VIS style: two instances of one category in a video become one expression."""
    rng = np.random.default_rng(seed)
    inst = {7: _masks(rng, 3), 8: _masks(rng, 3), 9: _masks(rng, 3), 11: _masks(rng, 2)}
    inst[8][0] = rng.random((H, W)) < 0.5  # at least one uncompressed RLE below
    seg = {a: [encode_rle(x) if x.any() else None for x in m] for a, m in inst.items()}
    seg[8][0] = _uncompressed(inst[8][0])
    inst[9][1] = rng.random((H, W)) < 0.5  # stored in two parts: the frame's mask is their union
    top = inst[9][1].copy()
    top[H // 2:] = False
    seg[9][1] = [encode_rle(top), encode_rle(inst[9][1] & ~top)]
    inst[11][0] = False  # absent, stored as an empty list
    seg[11][0] = []
    data = {
        "info": {"description": "LV-VIS fixture"},
        "videos": [{"id": 1, "width": W, "height": H, "length": 3,
                    "file_names": [f"00000/{i:05d}.jpg" for i in range(3)]},
                   {"id": 2, "width": W, "height": H, "length": 2,
                    "file_names": ["00001/00000.jpg", "00001/00001.jpg"]}],
        "annotations": [
            {"id": 7, "video_id": 1, "category_id": 3, "segmentations": seg[7], "iscrowd": 0},
            {"id": 8, "video_id": 1, "category_id": 5, "segmentations": seg[8], "iscrowd": 0},
            {"id": 9, "video_id": 1, "category_id": 3, "segmentations": seg[9], "iscrowd": 0},
            {"id": 11, "video_id": 2, "category_id": 5, "segmentations": seg[11], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "bath_towel"}, {"id": 5, "name": "crêpe"}],
    }
    _dump(folder / "train_instances.json", data)
    return inst


def test_lvvis_official_instances_json(tmp_path):
    inst = write_lvvis(tmp_path)
    ds = load_dataset("lvvis", tmp_path)
    assert (ds.name, ds.split) == ("lvvis", "train")
    assert list(ds.videos) == ["00000", "00001"]
    v = ds.videos["00000"]
    assert (v.height, v.width) == (H, W) and v.frame_names == ["00000", "00001", "00002"]
    assert v.frame_paths[1] == tmp_path / "JPEGImages" / "train" / "00000" / "00001.jpg"
    towel, crepe = v.expressions["0"], v.expressions["1"]
    assert (towel.text, towel.obj_ids, towel.anno_ids) == ("bath_towel", (7, 9), ("7", "9"))
    assert (crepe.text, crepe.anno_ids) == ("crêpe", ("8",))
    np.testing.assert_array_equal(ds.gt_masks("00000", "0"), inst[7] | inst[9])
    np.testing.assert_array_equal(ds.gt_masks("00000", "1"), inst[8])
    np.testing.assert_array_equal(ds.gt_masks("00001", "0"), inst[11])


def test_lvvis_errors(tmp_path):
    write_lvvis(tmp_path)
    path = tmp_path / "train_instances.json"
    data = json.loads(path.read_text())
    data["annotations"][3]["segmentations"].append(None)
    _dump(path, data)
    with pytest.raises(GLUSError) as err:
        load_dataset("lvvis", tmp_path)
    _one_line_error(err, str(path), "annotation 11", "3 segmentations", "2 frames")

    data["annotations"][3]["segmentations"].pop()
    data["annotations"][3]["video_id"] = 99
    _dump(path, data)
    with pytest.raises(GLUSError) as err:
        load_dataset("lvvis", tmp_path)
    _one_line_error(err, str(path), "annotation 11", "unknown video id 99")


def test_lvvis_visa_copy_in_mevis_layout(tmp_path):
    folder = tmp_path / "lvvis" / "train"
    objs = write_mevis(folder, seed=5)
    ds = load_dataset("lvvis", folder)
    assert (ds.name, ds.split) == ("lvvis", "train")
    assert ds.videos["v1"].frame_paths[0] == folder / "JPEGImages" / "v1" / "00000.jpg"
    np.testing.assert_array_equal(ds.gt_masks("v1", "1"), objs["0"] | objs["1"])


# ------------------------------------------------------------------------------------------- ReasonVOS
def write_reasonvos(root: Path, seed: int = 6) -> dict:
    rng = np.random.default_rng(seed)
    frames = ["00000", "00001", "00002"]
    meta = {"videos": {"abc123": {"source": "MeViS", "frames": frames, "expressions": [
        {"obj_id": 1, "exp_id": 0, "exp_text": "the animal that is likely to be hungry", "is_sent": True},
        {"obj_id": 2, "exp_id": 1, "exp_text": "dog", "is_sent": False}]}}}
    _dump(root / "meta_expressions.json", meta)
    truth = {}
    for obj in (1, 2):
        m = _masks(rng, 3)
        truth[obj] = m
        for t, name in enumerate(frames):
            p = root / "Annotations" / f"MeViS_abc123_{obj}" / f"{name}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m[t].astype(np.uint8) * 255).save(p)
    return truth


def test_reasonvos_reads_list_expressions_and_png_targets(tmp_path):
    truth = write_reasonvos(tmp_path)
    ds = load_dataset("reasonvos", tmp_path)
    assert (ds.name, ds.split) == ("reasonvos", "valid")
    e = ds.videos["abc123"].expressions["1"]
    assert (e.text, e.obj_ids, e.anno_ids, e.key) == ("dog", (2,), (), "abc123_1")
    np.testing.assert_array_equal(ds.gt_masks("abc123", "0"), truth[1])
    np.testing.assert_array_equal(ds.gt_masks("abc123", "1"), truth[2])
    assert ds.frame_size("abc123") == (H, W)


def test_reasonvos_errors(tmp_path):
    write_reasonvos(tmp_path)
    (tmp_path / "Annotations" / "MeViS_abc123_2" / "00001.png").unlink()
    ds = load_dataset("reasonvos", tmp_path)
    with pytest.raises(GLUSError) as err:
        ds.gt_masks("abc123", "1")
    _one_line_error(err, "MeViS_abc123_2", "00001.png", "missing annotation", "expression '1'")

    meta = json.loads((tmp_path / "meta_expressions.json").read_text())
    meta["videos"]["abc123"]["expressions"][1]["exp_id"] = 0
    _dump(tmp_path / "meta_expressions.json", meta)
    with pytest.raises(GLUSError) as err:
        load_dataset("reasonvos", tmp_path)
    _one_line_error(err, str(tmp_path / "meta_expressions.json"), "'0' is used twice")


# ------------------------------------------------------------------------------------------ load_dataset
def test_load_dataset_rejects_unknown_names_and_folders(tmp_path):
    assert DATASET_NAMES == ("mevis", "refytvos", "davis17", "revos", "lvvis", "reasonvos")
    with pytest.raises(GLUSError, match="unknown dataset 'kitti'"):
        load_dataset("kitti", tmp_path)
    with pytest.raises(GLUSError, match="not found") as err:
        load_dataset("mevis", tmp_path / "nope")
    _one_line_error(err, str(tmp_path / "nope"))


def test_unknown_video_expression_and_frame(tmp_path):
    write_mevis(tmp_path)
    ds = load_dataset("mevis", tmp_path, "valid_u")
    with pytest.raises(GLUSError, match="no video 'zz'"):
        ds.gt_mask("zz", "0", 0)
    with pytest.raises(GLUSError, match="no expression '9'"):
        ds.gt_mask("v1", "9", 0)
    with pytest.raises(IndexError):
        ds.gt_mask("v1", "0", 4)


# ------------------------------------------------------------------------------------ streaming JSON index
@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_iter_members_matches_json_load_at_any_chunk_size(tmp_path, chunk):
    doc = {"é": [1, 2.5e-3, None], "n": 12345678901234, "ann": [{"id": 1, "t": "中"}, [], {}],
           "s": "a\\\"b]}", "z": {}}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    members = list(iter_members(path, expand={"ann"}, chunk=chunk))
    assert [(m.key, m.index) for m in members] == [("é", None), ("n", None), ("ann", 0), ("ann", 1),
                                                    ("ann", 2), ("s", None), ("z", None)]
    assert members[0].value == doc["é"] and members[3].value == [] and members[5].value == doc["s"]
    raw = path.read_bytes()
    for m in members:
        assert json.loads(raw[m.start:m.end]) == m.value


@pytest.mark.parametrize("text, needle", [
    ("[1, 2]", "top level must be a JSON object"),
    ('{"a": 1 "b": 2}', "expected ','"),
    ('{"a": [1, 2}', "for key 'a'"),
    ('{"a": 1} x', "extra data"),
    ('{"a": ', "end of file"),
])
def test_iter_members_errors(tmp_path, text, needle):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(GLUSError, match=needle) as err:
        list(iter_members(path, chunk=4))
    _one_line_error(err, str(path), "invalid JSON")


def test_referformer_mask_source_can_be_forced(tmp_path):
    truth = write_davis(tmp_path)
    with pytest.raises(GLUSError, match="mask file not found"):
        load_dataset("davis17", tmp_path, "train", masks="pkl")
    with pytest.raises(GLUSError, match="annotation folder not found"):
        load_dataset("davis17", tmp_path, "valid", masks="png")
    with pytest.raises(GLUSError, match="masks must be"):
        load_dataset("davis17", tmp_path, "valid", masks="json")
    ds = load_dataset("davis17", tmp_path, "train", masks="png")
    np.testing.assert_array_equal(ds.gt_mask("bear", "0", 0), truth["labels"][0] == 1)
