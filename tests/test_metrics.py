"""J / F / ReVOS metrics and the mask-PNG reader against plain re-implementations of the official code."""

from __future__ import annotations

import importlib.util
import io
import struct
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.morphology import disk

from glus.eval.metrics import (BoxMask, boundary_f, boundary_radius, disk_footprint, frame_jf, jaccard,
                               revos_accuracy, revos_robustness, revos_round, seg2bmap, sequence_jf)
from glus.eval.predictions import PredictionError, _fast_gray8, decode_mask_png, read_mask_prediction

ROOT = Path(__file__).resolve().parents[1]


def _load_reference():
    spec = importlib.util.spec_from_file_location("official_reference", ROOT / "benchmarks" / "official_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("official_reference", module)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


def official_jf(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    return float(ref.reference_iou(gt[None], pred[None])[0]), ref.reference_f(pred, gt)


def random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = int(rng.integers(6))
    m = np.zeros((h, w), np.uint8)
    if kind == 1:
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8) * 255
    elif kind == 2:
        y0, y1 = sorted(rng.integers(0, h + 1, 2))
        x0, x1 = sorted(rng.integers(0, w + 1, 2))
        m[y0:y1, x0:x1] = rng.integers(1, 256)
    elif kind == 3:
        cv2.circle(m, (int(rng.integers(-5, w + 5)), int(rng.integers(-5, h + 5))), int(rng.integers(1, 40)), 255, -1)
    elif kind == 4:
        m[:] = 1
    elif kind == 5:
        m[int(rng.integers(h)), int(rng.integers(w))] = 255
    return m


# ----------------------------------------------------------------------------------------------- building blocks
@pytest.mark.parametrize("radius", list(range(0, 41)))
def test_disk_footprint_is_skimage_disk(radius):
    assert np.array_equal(disk_footprint(radius), disk(np.float64(radius)).astype(np.uint8))


@pytest.mark.parametrize("hw,radius", [((480, 854), 8), ((854, 480), 8), ((720, 1280), 12), ((1080, 1920), 18),
                                       ((848, 480), 8), ((1, 1), 1)])
def test_tolerance_radius(hw, radius):
    assert boundary_radius(*hw) == radius == int(np.ceil(0.008 * np.linalg.norm(hw)))


def test_seg2bmap_matches_official_on_odd_sizes():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (1, 7), (7, 1), (2, 2), (3, 5), (17, 31), (64, 1)]:
        for _ in range(20):
            m = random_mask(rng, h, w)
            assert np.array_equal(seg2bmap(m), ref.reference_bmap(m)), (h, w)


def test_box_mask_round_trip_and_loose_windows():
    rng = np.random.default_rng(1)
    for _ in range(50):
        m = random_mask(rng, 23, 37)
        box = BoxMask.from_dense(m)
        assert np.array_equal(box.to_dense(), m)
        if not box.is_empty:
            # a window larger than needed (zeros around) scores the same
            loose = BoxMask(box.shape, max(0, box.top - 2), 0, m[max(0, box.top - 2):box.bottom + 3].copy())
            other = random_mask(rng, 23, 37)
            assert frame_jf(loose, other) == frame_jf(m, other)
    assert BoxMask.from_dense(np.zeros((4, 5), bool)).is_empty


# ----------------------------------------------------------------------------------------------- J and F
@pytest.mark.parametrize("case", ["both_empty", "gt_empty", "pred_empty", "full", "single_pixels", "corners",
                                  "border"])
def test_edge_cases_match_official(case):
    h, w = 31, 45
    g = np.zeros((h, w), np.uint8)
    p = np.zeros((h, w), np.uint8)
    if case == "gt_empty":
        p[5:9, 7:20] = 255
    elif case == "pred_empty":
        g[5:9, 7:20] = 1
    elif case == "full":
        g[:] = 1
        p[:] = 255
    elif case == "single_pixels":
        g[10, 10] = 1
        p[12, 13] = 255
    elif case == "corners":
        g[-1, -1] = 1
        g[0, 0] = 1
        p[-1, -2] = 255
        p[0, -1] = 255
    elif case == "border":
        g[:, :4] = 1
        g[-3:, :] = 1
        p[:, :6] = 255
        p[-1, :] = 255
    expected = official_jf(g, p)
    assert frame_jf(g, p) == expected
    assert jaccard(g, p) == expected[0] and boundary_f(g, p) == expected[1]
    if case == "both_empty":
        assert expected == (1.0, 1.0)
    if case in ("gt_empty", "pred_empty"):
        assert expected == (0.0, 0.0)


def test_random_small_masks_match_official_bit_for_bit():
    rng = np.random.default_rng(2)
    for _ in range(600):
        h, w = int(rng.integers(1, 50)), int(rng.integers(1, 50))
        g, p = random_mask(rng, h, w), random_mask(rng, h, w)
        assert frame_jf(g, p) == official_jf(g, p), (h, w)


@pytest.mark.parametrize("hw", [(480, 854), (720, 1280), (1080, 1920)])
def test_full_size_frames_match_official(hw):
    rng = np.random.default_rng(hw[0])
    h, w = hw
    for _ in range(3):
        g = np.zeros(hw, np.uint8)
        cv2.ellipse(g, (int(rng.integers(w)), int(rng.integers(h))), (int(rng.integers(20, 300)),
                    int(rng.integers(20, 300))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        p = np.roll(g, (int(rng.integers(-30, 30)), int(rng.integers(-30, 30))), axis=(0, 1)) * 255
        p = cv2.dilate(p, np.ones((3, 3), np.uint8)) if rng.random() < 0.5 else p
        p[: int(rng.integers(0, 40)), :] = 255  # a band touching the top border
        assert frame_jf(g, p) == official_jf(g, p)


@pytest.mark.parametrize("hw", [(480, 854), (1080, 1920)])
def test_boundaries_near_the_tolerance_match_official(hw):
    """Predicted boundaries at distances around the radius: the cases the square bounds cannot settle."""
    h, w = hw
    radius = boundary_radius(h, w)
    g = np.zeros(hw, np.uint8)
    cv2.ellipse(g, (w // 2, h // 2), (w // 5, h // 4), 30.0, 0, 360, 1, -1)
    for grow in (radius - 3, radius - 1, radius, radius + 1):
        p = cv2.dilate(g, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))) * 255
        assert frame_jf(g, p) == official_jf(g, p), grow
    for shift in ((radius, 0), (radius - 2, radius - 2), (radius + 1, 3)):
        p = np.roll(g, shift, axis=(0, 1)) * 255
        assert frame_jf(g, p) == official_jf(g, p), shift


def test_dilation_hits_exact_for_sparse_and_dense_rings():
    from glus.eval.metrics import _hits

    rng = np.random.default_rng(6)
    for _ in range(300):
        h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
        radius = int(rng.integers(1, 19))
        source = (rng.random((h, w)) < rng.choice([0.001, 0.01, 0.05])).astype(np.uint8)
        probe = (rng.random((h, w)) < rng.choice([0.002, 0.02, 0.2])).astype(np.uint8)
        if not probe.any():
            continue
        expected = int(np.count_nonzero(probe & cv2.dilate(source, disk_footprint(radius))))
        assert _hits(probe, source, radius) == expected


def test_sequence_jf_shapes():
    rng = np.random.default_rng(3)
    g = np.stack([random_mask(rng, 20, 30) for _ in range(5)])
    p = np.stack([random_mask(rng, 20, 30) for _ in range(5)])
    j, f = sequence_jf(g, p)
    assert np.array_equal(j, ref.reference_iou(g, p)) and np.array_equal(f, ref.reference_boundary(g, p))
    with pytest.raises(ValueError):
        sequence_jf(g, p[:, :, :29])
    with pytest.raises(ValueError):
        frame_jf(g[0], p[0, :, :29])


# ----------------------------------------------------------------------------------------------- ReVOS A and R
def test_revos_accuracy_and_robustness_official_arithmetic():
    rng = np.random.default_rng(4)
    for _ in range(200):
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        g = ((random_mask(rng, h, w) > 0).astype(np.uint8) + (random_mask(rng, h, w) > 0)).astype(np.uint8)
        p = random_mask(rng, h, w)
        fg = (random_mask(rng, h, w) > 0).astype(np.uint8)
        # the official formulas, on full uint8 frames
        acc = np.mean(g == p)
        neg = ((1 - g) * p).sum()
        rob = max(1 - neg / (fg.sum() + 1e-6), 0.0)
        gb, pb = BoxMask.from_dense(g), BoxMask.from_dense(p)
        assert revos_accuracy(gb, pb) == acc
        assert revos_robustness(gb, pb, int(fg.sum())) == rob
        # corrected: binary masks
        acc_c = np.mean((g > 0) == (p > 0))
        rob_c = max(1 - np.sum((g == 0) & (p > 0)) / (np.count_nonzero(fg) + 1e-6), 0.0)
        assert revos_accuracy(gb, pb, corrected=True) == acc_c
        assert revos_robustness(gb, pb, int(np.count_nonzero(fg)), corrected=True) == rob_c


def test_revos_overlap_wraps_around_like_the_official_script():
    g = np.zeros((4, 4), np.uint8)
    g[0, 0] = 2  # two objects overlap
    p = np.zeros((4, 4), np.uint8)
    p[0, 0] = 255
    # (1 - 2) * 255 in uint8 = 255 * 255 mod 256 = 1
    assert revos_robustness(BoxMask.from_dense(g), BoxMask.from_dense(p), 10) == 1 - 1 / (10 + 1e-6)
    assert revos_accuracy(BoxMask.from_dense(g), BoxMask.from_dense(p)) == 15 / 16
    assert revos_round(0.123456) == 12.35 and revos_round(1.0) == 100.0


# ----------------------------------------------------------------------------------------------- PNG reader
def _png(rows: list[bytes], w: int, h: int, *, depth: int = 8, color: int = 0, crc_ok: bool = True,
         extra: tuple[bytes, bytes] | None = None) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) ^ (0 if crc_ok or kind != b"IDAT" else 1)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
    if extra:
        body += chunk(*extra)
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")


def _cv2_gray(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)


def test_png_reader_equals_opencv_for_every_writer():
    rng = np.random.default_rng(5)
    fast = 0
    for _ in range(150):
        h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
        m = random_mask(rng, h, w) if rng.random() < 0.7 else rng.integers(0, 256, (h, w)).astype(np.uint8)
        encoded = [cv2.imencode(".png", m)[1].tobytes()]
        for image in (Image.fromarray(m), Image.fromarray(m > 0)):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            encoded.append(buf.getvalue())
        pal = Image.fromarray((m > 0).astype(np.uint8), mode="P")
        pal.putpalette([0, 0, 0, 200, 30, 90])
        buf = io.BytesIO()
        pal.save(buf, format="PNG")
        encoded.append(buf.getvalue())
        # hand-made rows mixing the None (0) and Sub (1) filters
        rows = []
        for y in range(h):
            kind = int(rng.integers(2))
            line = m[y].astype(np.int16)
            if kind == 1:
                line = np.diff(np.concatenate([[0], line]))
            rows.append(bytes([kind]) + line.astype(np.uint8).tobytes())
        encoded.append(_png(rows, w, h))
        for data in encoded:
            fast += _fast_gray8(data) is not None
            assert np.array_equal(decode_mask_png(data).to_dense(), _cv2_gray(data))
    assert fast >= 300  # the OpenCV-written and hand-made files took the fast path


def test_png_reader_falls_back_to_opencv_for_unusual_files():
    m = np.zeros((6, 9), np.uint8)
    m[2:4, 3:7] = 255
    rows = [bytes([0]) + r.tobytes() for r in m]
    bad_crc = _png(rows, 9, 6, crc_ok=False)
    assert _fast_gray8(bad_crc) is None
    if _cv2_gray(bad_crc) is None:  # libpng rejects it: so must glus
        with pytest.raises(PredictionError):
            decode_mask_png(bad_crc)
    else:
        assert np.array_equal(decode_mask_png(bad_crc).to_dense(), _cv2_gray(bad_crc))
    gamma = _png(rows, 9, 6, extra=(b"gAMA", struct.pack(">I", 45455)))
    assert _fast_gray8(gamma) is None
    assert np.array_equal(decode_mask_png(gamma).to_dense(), _cv2_gray(gamma))
    sixteen = cv2.imencode(".png", m.astype(np.uint16) * 257)[1].tobytes()
    assert _fast_gray8(sixteen) is None
    assert np.array_equal(decode_mask_png(sixteen).to_dense(), _cv2_gray(sixteen))
    with pytest.raises(PredictionError):
        decode_mask_png(b"not a png at all")


def test_png_reader_split_idat_chunks():
    m = np.zeros((7, 11), np.uint8)
    m[2:5, 1:9] = 255
    stream = zlib.compress(b"".join(bytes([0]) + r.tobytes() for r in m))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 11, 7, 8, 0, 0, 0, 0))
    halves = chunk(b"IDAT", stream[:9]), chunk(b"IDAT", stream[9:])
    consecutive = head + halves[0] + halves[1] + chunk(b"IEND", b"")
    assert _fast_gray8(consecutive) is not None
    assert np.array_equal(decode_mask_png(consecutive).to_dense(), m)
    interrupted = head + halves[0] + chunk(b"tEXt", b"k\x00v") + halves[1] + chunk(b"IEND", b"")
    assert _fast_gray8(interrupted) is None
    if _cv2_gray(interrupted) is None:
        with pytest.raises(PredictionError):
            decode_mask_png(interrupted)
    else:
        assert np.array_equal(decode_mask_png(interrupted).to_dense(), _cv2_gray(interrupted))


def test_read_mask_prediction_reports_missing_and_unreadable(tmp_path):
    with pytest.raises(PredictionError, match="missing 00000.png"):
        read_mask_prediction(tmp_path / "00000.png")
    (tmp_path / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    with pytest.raises(PredictionError, match="00001.png"):
        read_mask_prediction(tmp_path / "00001.png")
    m = np.zeros((5, 8), np.uint8)
    m[1:3, 2:5] = 255
    cv2.imwrite(str(tmp_path / "00002.png"), m)
    assert np.array_equal(read_mask_prediction(tmp_path / "00002.png").to_dense(), m)
