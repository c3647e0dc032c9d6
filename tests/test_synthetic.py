"""Synthetic videos and the dataset-layout writers used by other modules' tests."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as cocomask

from glus.data.synthetic import (
    COLORS,
    SHAPES,
    davis_palette,
    encode_mp4,
    make_video,
    render_shape,
    write_frames,
    write_mevis_split,
    write_refytvos_split,
)


def _no_temp_files(root: Path) -> bool:
    return not any(".tmp" in p.name for p in root.rglob("*"))


# ------------------------------------------------------------------ generation


def test_same_seed_same_video_other_seed_other_video():
    a, b = make_video(7, 6, 48, 64, 3), make_video(7, 6, 48, 64, 3)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks)
    assert a.objects == b.objects and a.expressions == b.expressions and a.name == b.name == "syn7"
    c = make_video(8, 6, 48, 64, 3)
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (6, 48, 64, 3) and a.frames.dtype == np.uint8
    assert a.masks.shape == (3, 6, 48, 64) and a.masks.dtype == bool


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_masks_are_exactly_the_visible_drawn_pixels(seed):
    v = make_video(seed, 5, 40, 56, 4)
    assert v.masks.sum(axis=0).max() <= 1  # visible masks never overlap
    for k, obj in enumerate(v.objects):
        painted = (v.frames == np.array(obj.rgb, dtype=np.uint8)).all(axis=-1)
        assert np.array_equal(v.masks[k], painted)
        # each visible mask is the drawn shape minus what later objects cover
        for t in range(v.num_frames):
            shape = render_shape(obj.shape, obj.centers[t], obj.radius, 40, 56)
            covered = v.masks[k + 1 :, t].any(axis=0) if k + 1 < len(v.objects) else np.zeros_like(shape)
            assert np.array_equal(v.masks[k, t], shape & ~covered)
    assert len({o.color for o in v.objects}) == 4
    # background pixels are never an object colour: every non-object pixel is inside the background range
    bg = ~v.masks.any(axis=0)
    assert v.frames[bg].min() >= 40 and v.frames[bg].max() <= 150
    assert v.frames[bg].std() > 5  # textured and noisy, not flat


def test_objects_move_as_described_and_stay_in_view():
    for seed in range(6):
        v = make_video(seed, 6, 64, 96, 1)
        obj = v.objects[0]
        m = v.masks[0]
        assert m.any(axis=(1, 2)).all()  # in view on every frame
        # a lone object is never cut by the frame border: its area is the shape's, up to rasterisation
        analytic = {"circle": np.pi, "square": 2.0, "triangle": 3 * np.sqrt(3) / 4}[obj.shape] * obj.radius**2
        assert np.allclose(m.sum(axis=(1, 2)), analytic, rtol=0.15)
        ys, xs = zip(*(np.nonzero(f) for f in m))
        cx = np.array([x.mean() for x in xs])
        cy = np.array([y.mean() for y in ys])
        step = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[obj.direction]
        for axis_pos, sign in ((cx, step[0]), (cy, step[1])):
            if sign == 0:
                assert np.ptp(axis_pos) < 1.0
            else:
                assert np.all(np.diff(axis_pos) * sign > 0)
        words = v.expressions[0].text
        assert words.startswith(f"the {obj.color} {obj.shape}") and (obj.direction in words or "still" in words)


def test_exiting_objects_leave_view_halfway():
    v = make_video(3, 8, 48, 64, 2, num_exiting=1)
    visible = v.masks[1].any(axis=(1, 2))
    assert visible[0] and not visible[4:].any()
    assert v.objects[1].direction != "still"


def test_shape_geometry():
    r, h, w = 20.0, 64, 64
    c = (32.0, 32.0)
    assert render_shape("circle", c, r, h, w).sum() == pytest.approx(np.pi * r * r, rel=0.03)
    assert render_shape("square", c, r, h, w).sum() == pytest.approx(2 * r * r, rel=0.06)
    tri = render_shape("triangle", c, r, h, w)
    assert tri.sum() == pytest.approx(3 * np.sqrt(3) / 4 * r * r, rel=0.06)
    rows = tri.sum(axis=1)
    top, bottom = np.nonzero(rows)[0][[0, -1]]
    assert rows[top] < rows[bottom]  # apex up
    assert not render_shape("circle", (-50.0, -50.0), 5.0, h, w).any()
    with pytest.raises(ValueError):
        render_shape("star", c, r, h, w)


def test_expressions_and_targets():
    v = make_video(5, 4, 32, 48, 3)
    texts = [e.text for e in v.expressions]
    assert len(texts) == len(set(texts)) == 2 * 3 + 1
    union = v.expressions[-1]
    assert union.objects == (0, 1) and " and " in union.text
    assert np.array_equal(v.target(union.objects), v.masks[0] | v.masks[1])
    assert not v.target(()).any()
    assert all(e.text.split()[1] in COLORS and e.text.split()[2] in SHAPES for e in v.expressions)


def test_bad_arguments():
    with pytest.raises(ValueError):
        make_video(0, num_objects=0)
    with pytest.raises(ValueError):
        make_video(0, num_objects=len(COLORS) + 1)
    with pytest.raises(ValueError):
        make_video(0, name="a_b")
    with pytest.raises(ValueError):
        make_video(0, height=8)


# ------------------------------------------------------------------ writers


def test_write_mevis_split_round_trips_through_pycocotools(tmp_path):
    videos = [make_video(0, 5, 32, 48, 3, num_exiting=1), make_video(1, 4, 40, 56, 2, name="other")]
    split = write_mevis_split(tmp_path, videos, split="valid_u")
    assert split == tmp_path / "valid_u"
    meta = json.loads((split / "meta_expressions.json").read_text())["videos"]
    mask_dict = json.loads((split / "mask_dict.json").read_text())
    assert list(meta) == ["syn0", "other"]
    all_anno = []
    for video in videos:
        vm = meta[video.name]
        assert vm["frames"] == [f"{t:05d}" for t in range(video.num_frames)]
        assert len(vm["expressions"]) == len(video.expressions)
        for exp_id, exp in vm["expressions"].items():
            src = video.expressions[int(exp_id)]
            assert exp["exp"] == src.text and exp["obj_id"] == list(src.objects)
            all_anno += exp["anno_id"]
            h, w = video.size
            for t in range(video.num_frames):
                union = np.zeros((h, w), dtype=bool)
                for anno in exp["anno_id"]:
                    rle = mask_dict[str(anno)][t]
                    if rle is None:
                        continue
                    assert rle["size"] == [h, w] and isinstance(rle["counts"], str)
                    union |= cocomask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
                assert np.array_equal(union, video.target(src.objects)[t])
        for t, name in enumerate(vm["frames"]):
            img = cv2.imread(str(split / "JPEGImages" / video.name / f"{name}.jpg"))[..., ::-1]
            assert img.shape == video.frames[t].shape
            assert np.abs(img.astype(int) - video.frames[t]).mean() < 8.0
    # one annotation per object, numbered across the split; the exiting object is null once gone
    assert len(mask_dict) == 5 and sorted(set(all_anno)) == list(range(5))
    assert mask_dict["2"][0] is not None and mask_dict["2"][-1] is None
    assert _no_temp_files(tmp_path)


def test_write_mevis_valid_split_has_no_ground_truth(tmp_path):
    split = write_mevis_split(tmp_path, [make_video(0, 3, 32, 32, 2)], split="valid", write_images=False)
    meta = json.loads((split / "meta_expressions.json").read_text())
    exps = meta["videos"]["syn0"]["expressions"]
    assert all(set(e) == {"exp"} for e in exps.values())
    assert not (split / "mask_dict.json").exists() and not (split / "JPEGImages").exists()
    with pytest.raises(ValueError):
        write_mevis_split(tmp_path, [make_video(0, 3, 32, 32), make_video(0, 3, 32, 32)])


def test_write_refytvos_split(tmp_path):
    videos = [make_video(2, 4, 32, 48, 3), make_video(4, 3, 32, 32, 1)]
    root = write_refytvos_split(tmp_path, videos, split="train")
    meta = json.loads((root / "meta_expressions" / "train" / "meta_expressions.json").read_text())["videos"]
    ytvos = json.loads((root / "train" / "meta.json").read_text())["videos"]
    palette = davis_palette()
    assert palette[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] and len(palette) == 768
    for video in videos:
        vm = meta[video.name]
        assert vm["frames"] == [f"{5 * t:05d}" for t in range(video.num_frames)]
        singles = [e for e in video.expressions if len(e.objects) == 1]
        assert [e["exp"] for e in vm["expressions"].values()] == [e.text for e in singles]
        assert [e["obj_id"] for e in vm["expressions"].values()] == [str(e.objects[0] + 1) for e in singles]
        assert set(ytvos[video.name]["objects"]) == {str(k + 1) for k in range(len(video.objects))}
        for t, name in enumerate(vm["frames"]):
            png = Image.open(root / "train" / "Annotations" / video.name / f"{name}.png")
            assert png.mode == "P" and png.getpalette()[:768] == palette
            ids = np.array(png)
            for k in range(len(video.objects)):
                assert np.array_equal(ids == k + 1, video.masks[k, t])
            assert np.array_equal(ids == 0, ~video.masks[:, t].any(axis=0))
            assert (root / "train" / "JPEGImages" / video.name / f"{name}.jpg").is_file()
    valid = write_refytvos_split(tmp_path, videos[:1], split="valid", write_images=False)
    vmeta = json.loads((valid / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    assert all(set(e) == {"exp"} for e in vmeta["videos"]["syn2"]["expressions"].values())
    assert not (valid / "valid" / "Annotations").exists()
    assert _no_temp_files(tmp_path)


def test_write_frames_png_is_lossless(tmp_path):
    v = make_video(9, 3, 24, 30, 2)
    paths = write_frames(tmp_path / "f", v.frames, "png")
    assert [p.name for p in paths] == ["00000.png", "00001.png", "00002.png"]
    for p, frame in zip(paths, v.frames):
        assert np.array_equal(np.array(Image.open(p).convert("RGB")), frame)
    with pytest.raises(ValueError):
        write_frames(tmp_path / "g", v.frames, "gif")
    with pytest.raises(ValueError):
        write_frames(tmp_path / "g", v.frames[..., 0], "png")


@pytest.mark.parametrize("codec", ["h264", "mpeg4"])
def test_encode_mp4_decodes_back(tmp_path, monkeypatch, codec):
    if codec == "mpeg4":  # a PyAV build without libx264 falls back to MPEG-4 Part 2
        monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    elif "libx264" not in av.codecs_available:
        pytest.skip("this PyAV build has no libx264")
    v = make_video(11, 10, 64, 96, 3)
    path = encode_mp4(tmp_path / "clip.mp4", v.frames, fps=6)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        assert stream.codec_context.pix_fmt == "yuv420p"
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        assert float(stream.average_rate) == pytest.approx(6.0)
    assert decoded.shape == v.frames.shape
    diff = np.abs(decoded.astype(int) - v.frames.astype(int))
    assert diff.mean() < 6.0
    # objects survive compression: the object pixels stay near their colour
    obj = v.objects[0]
    assert np.abs(decoded[v.masks[0]].astype(int) - np.array(obj.rgb)).mean() < 20
    with pytest.raises(ValueError):
        encode_mp4(tmp_path / "odd.mp4", v.frames[:, :63])
    assert not (tmp_path / "odd.mp4").exists() and _no_temp_files(tmp_path)
