"""Overlay rendering (glus.inference.render): pixels, mp4/GIF/contact sheet outputs, streaming."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from glus.inference import render
from glus.inference.render import (
    OverlayVideoWriter, contact_sheet, draw_label, draw_legend, draw_masks, expression_colors, overlay_frame,
    render_overlays,
)

from conftest import BEDROOM

H, W = 96, 160
EXPRESSIONS = ["the girl jumping on the bed", "the lamp"]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    out = []
    for f in sorted(BEDROOM.glob("*.jpg"))[:12]:
        with Image.open(f) as im:
            im.draft("RGB", (W, H))
            out.append(np.asarray(im.convert("RGB").resize((W, H), Image.BILINEAR)))
    return out


def make_masks(i: int, h: int = H, w: int = W) -> np.ndarray:
    """(2, h, w): a box moving right (bottom-centre) and a fixed box (right); disjoint from the panels."""
    m = np.zeros((2, h, w), dtype=bool)
    m[0, h // 2: h - 20, 40 + i: 80 + i] = True
    m[1, 30: 70, w - 45: w - 15] = True
    return m


def ring(mask: np.ndarray, width: int = 3) -> np.ndarray:
    kernel = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    m = mask.astype(np.uint8)
    return cv2.dilate(m, kernel).astype(bool) & ~cv2.erode(m, kernel).astype(bool)


def box_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    out = np.zeros((H, W), bool)
    out[box[1]:box[3], box[0]:box[2]] = True
    return out


def test_draw_masks_changes_only_masked_pixels(frames: list[np.ndarray]) -> None:
    frame, masks = frames[0], make_masks(0)
    colors = expression_colors(2)
    out = draw_masks(frame, masks, colors, alpha=0.5)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert not np.shares_memory(out, frame)
    near = ring(masks[0]) | ring(masks[1])
    off = ~(masks[0] | masks[1]) & ~near
    np.testing.assert_array_equal(out[off], frame[off])
    for k, color in enumerate(colors):
        inside = masks[k] & ~near
        expected = (frame[inside].astype(np.float32) * 0.5 + np.float32(color) * 0.5 + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(out[inside], expected)
    # contour pixels carry the colour of their mask
    edge = ring(masks[1], 1) & ~masks[0]
    assert np.abs(out[edge].astype(int) - np.array(colors[1])).mean() < np.abs(
        frame[edge].astype(int) - np.array(colors[1])).mean()


def test_draw_masks_accepts_lists_none_and_validates(frames: list[np.ndarray]) -> None:
    masks = make_masks(0)
    colors = expression_colors(2)
    np.testing.assert_array_equal(draw_masks(frames[0], [masks[0], None], colors),
                                  draw_masks(frames[0], np.stack([masks[0], np.zeros_like(masks[0])]), colors))
    np.testing.assert_array_equal(draw_masks(frames[0], None, colors), frames[0])
    with pytest.raises(ValueError, match="2 expressions"):
        draw_masks(frames[0], masks[:1], colors)
    with pytest.raises(ValueError, match="frame size"):
        draw_masks(frames[0], np.zeros((2, H + 1, W), bool), colors)


def test_overlay_frame_panels_and_untouched_pixels(frames: list[np.ndarray]) -> None:
    frame, masks = frames[3], make_masks(3)
    out = overlay_frame(frame, masks, EXPRESSIONS, label="frame 3")
    colors = expression_colors(2)
    legend = draw_legend(frame.copy(), EXPRESSIONS, colors)
    label = draw_label(frame.copy(), "frame 3")
    assert legend[0] < legend[2] and legend[1] < legend[3]
    assert label[0] > W // 2 and label[1] > H // 2 and label[2] <= W and label[3] <= H  # bottom-right
    decorated = box_mask(legend) | box_mask(label) | masks[0] | masks[1] | ring(masks[0]) | ring(masks[1])
    np.testing.assert_array_equal(out[~decorated], frame[~decorated])
    # the panels darken what is behind them and hold (bright) text
    panel = out[legend[1]:legend[3], legend[0]:legend[2]].astype(int)
    assert panel.mean() < frame[legend[1]:legend[3], legend[0]:legend[2]].mean()
    assert (panel.min(axis=2) > 200).sum() > 20  # white glyph pixels
    inside = masks[0] & ~ring(masks[0]) & ~box_mask(legend) & ~box_mask(label)
    assert (out[inside] != frame[inside]).any(axis=1).mean() > 0.95


def test_legend_shortens_long_text_and_summarises_many_rows(frames: list[np.ndarray]) -> None:
    image = frames[0].copy()
    box = draw_legend(image, ["x" * 500], expression_colors(1))
    assert box[2] <= W and box[3] < H // 2
    many = [f"e{i}" for i in range(30)]
    box = draw_legend(frames[0].copy(), many, expression_colors(30))
    assert box[3] <= H // 2 + 8  # rows beyond half the height are folded into "+N more"
    font = render._font(12)
    short = render._fit_text(font, "a fairly long referring expression", 60)
    assert short.endswith("…") and font.getlength(short) <= 60


def test_expression_colors_are_distinct() -> None:
    colors = expression_colors(25)
    assert len(set(colors)) == 25
    assert colors[:3] == list(render.PALETTE[:3])


def decode_mp4(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_render_overlays_writes_mp4_gif_and_sheet(tmp_path: Path, frames: list[np.ndarray]) -> None:
    names = [f"{5 * i:05d}" for i in range(len(frames))]
    out = render_overlays(iter(frames), (make_masks(i) for i in range(len(frames))), EXPRESSIONS, tmp_path,
                          fps=12, frame_names=names, title="bedroom")
    assert out.num_frames == 12
    assert out.mp4 == tmp_path / "overlay.mp4" and out.gif == tmp_path / "overlay.gif"
    assert out.contact_sheet == tmp_path / "overlay_sheet.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.gif", "overlay.mp4", "overlay_sheet.png"]

    decoded = decode_mp4(out.mp4)
    assert len(decoded) == 12 and decoded[0].shape == (H, W, 3)
    with av.open(str(out.mp4)) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(12)
    # through the lossy codec: the mask region is tinted, the untouched region is (nearly) the frame
    i = 7
    masks = make_masks(i)
    inside = masks[1] & ~ring(masks[1])
    off = np.zeros((H, W), bool)
    off[H // 2:, :30] = True  # bottom-left corner: no mask, no panel
    diff = np.abs(decoded[i].astype(int) - frames[i].astype(int))
    assert diff[inside].mean() > 20
    assert diff[off].mean() < 6
    tint_direction = np.array(expression_colors(2)[1]) - frames[i][inside].mean(axis=0)
    assert np.dot(decoded[i][inside].mean(axis=0) - frames[i][inside].mean(axis=0), tint_direction) > 0

    with Image.open(out.gif) as gif:
        assert gif.n_frames == 12 and gif.size == (W, H) and gif.info["loop"] == 0
        assert gif.info["duration"] == 80  # 1000/12 ms rounded to the GIF's 10 ms grid
    with Image.open(out.contact_sheet) as sheet:
        assert sheet.mode == "RGB" and sheet.width > 3 * W and sheet.height > 2 * H


def test_long_clip_gets_no_gif(tmp_path: Path, frames: list[np.ndarray]) -> None:
    kw = dict(fps=10, gif_max_frames=5, sheet_tiles=3)
    out = render_overlays(frames, (make_masks(i) for i in range(12)), EXPRESSIONS, tmp_path / "a", **kw)
    assert out.gif is None and not (tmp_path / "a" / "overlay.gif").exists()
    assert len(decode_mp4(out.mp4)) == 12
    out = render_overlays(frames[:5], (make_masks(i) for i in range(5)), EXPRESSIONS, tmp_path / "b",
                          num_frames=5, **kw)
    assert out.gif is not None and Image.open(out.gif).n_frames == 5


def test_odd_frame_size_is_padded_for_h264(tmp_path: Path, frames: list[np.ndarray]) -> None:
    odd = [f[: H - 1, : W - 1] for f in frames[:3]]
    out = render_overlays(odd, (make_masks(i, H - 1, W - 1) for i in range(3)), EXPRESSIONS, tmp_path)
    decoded = decode_mp4(out.mp4)
    assert len(decoded) == 3 and decoded[0].shape == (H, W, 3)


def test_rendering_streams_frames_and_masks(tmp_path: Path, frames: list[np.ndarray]) -> None:
    produced = {"frames": 0, "masks": 0}

    def frame_stream() -> Iterator[np.ndarray]:
        for f in frames:
            produced["frames"] += 1
            assert produced["frames"] - produced["masks"] <= 1, "frames read ahead of their masks"
            yield f

    def mask_stream() -> Iterator[np.ndarray]:
        for i in range(len(frames)):
            produced["masks"] += 1
            assert produced["masks"] <= produced["frames"], "masks read ahead of their frames"
            yield make_masks(i)

    out = render_overlays(frame_stream(), mask_stream(), EXPRESSIONS, tmp_path, sheet_tiles=4)
    assert out.num_frames == len(frames) == produced["frames"] == produced["masks"]


def test_length_mismatch_leaves_nothing_behind(tmp_path: Path, frames: list[np.ndarray]) -> None:
    with pytest.raises(ValueError):
        render_overlays(frames[:4], [make_masks(i) for i in range(3)], EXPRESSIONS, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="size"):
        with OverlayVideoWriter(tmp_path / "v.mp4", EXPRESSIONS) as writer:
            writer.add(frames[0], make_masks(0))
            writer.add(frames[1][:50], make_masks(0)[:, :50])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no frame"):
        OverlayVideoWriter(tmp_path / "v.mp4", EXPRESSIONS).close()


def test_contact_sheet_picks_spread_frames_without_known_length(tmp_path: Path) -> None:
    sampler = render._TileSampler(4, None)
    for position in range(100):
        if sampler.wants(position):
            sampler.add(position, position)
    picks = sampler.result()
    assert len(picks) == 4 and picks[0] == 0 and picks[-1] >= 80 and picks == sorted(picks)
    assert len(sampler.kept) < 8  # bounded memory
    known = render._TileSampler(4, 10)
    assert [p for p in range(10) if known.wants(p)] == [0, 3, 6, 9]


def test_contact_sheet_grid(frames: list[np.ndarray]) -> None:
    tiles = [draw_masks(f, make_masks(i), expression_colors(2)) for i, f in enumerate(frames[:5])]
    sheet = contact_sheet(tiles, [f"frame {i}" for i in range(5)], EXPRESSIONS, columns=3, title="t")
    assert sheet.dtype == np.uint8 and sheet.ndim == 3
    assert sheet.shape[1] > 3 * W and sheet.shape[0] > 2 * H
    # the first tile appears unchanged (apart from its label) somewhere in the sheet
    hit = cv2.matchTemplate(sheet, tiles[0][:40], cv2.TM_SQDIFF)
    assert hit.min() == 0
    with pytest.raises(ValueError):
        contact_sheet([], [], EXPRESSIONS)
