"""Draw predicted masks over video frames: an mp4 (and a GIF for short clips) plus a contact-sheet PNG.

Each expression gets one colour (:func:`expression_colors`). A frame's overlay is a semi-transparent fill of
every mask with an anti-aliased contour in the same colour, a legend panel (top-left) listing the expressions
with their colour, and a frame label (bottom-right). Pixels away from masks, contours and the two panels are
left exactly as in the frame.

Everything streams: :class:`OverlayVideoWriter` takes one frame and its masks at a time and encodes it at
once. Only small things are kept: downscaled GIF frames while the clip is short enough to get a GIF
(``gif_max_frames``, default 120), and the few downscaled tiles of the contact sheet.

Video frames are RGB ``uint8`` ``(H, W, 3)``; masks of one frame are ``(K, H, W)`` (or a sequence of ``K``
``(H, W)`` arrays, ``None`` for "no mask"), ``K`` = number of expressions, any non-zero value is foreground.
H.264 in yuv420p needs even sizes: an odd height or width is padded by one replicated row/column in the mp4.
"""

from __future__ import annotations

import colorsys
import logging
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from glus.fileio import FILE_MODE, atomic_write_bytes

logger = logging.getLogger(__name__)

Color = tuple[int, int, int]

# Distinct, saturated colours that stay readable over typical video content (first ones most distinct).
PALETTE: tuple[Color, ...] = (
    (255, 56, 56), (44, 160, 255), (72, 219, 88), (255, 178, 29), (200, 80, 255),
    (0, 220, 200), (255, 105, 180), (190, 235, 40), (255, 120, 40), (120, 120, 255),
)
PANEL_OPACITY = 0.6  # how much the legend/label panels darken the frame behind them
DEFAULT_ALPHA = 0.45  # mask fill opacity


def expression_colors(count: int) -> list[Color]:
    """``count`` distinct RGB colours: :data:`PALETTE` first, then golden-ratio hues."""
    colors = list(PALETTE[:count])
    for i in range(len(PALETTE), count):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 1.0)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled scalable font: no system font needed (falls back to a bitmap font without FreeType).
    return ImageFont.load_default(size=size)


def _font_size(height: int) -> int:
    return max(11, min(28, round(height * 0.034)))


def _text_width(font: Any, text: str) -> float:
    return float(font.getlength(text))


def _fit_text(font: Any, text: str, max_width: float) -> str:
    """``text`` shortened with an ellipsis so that it fits in ``max_width`` pixels."""
    if _text_width(font, text) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if _text_width(font, text[:mid].rstrip() + "…") <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + "…"


def _as_mask_list(masks: Any, count: int, shape: tuple[int, int]) -> list[np.ndarray | None]:
    """Normalise one frame's masks to ``count`` boolean ``(H, W)`` arrays (``None`` = no mask)."""
    if masks is None:
        return [None] * count
    if hasattr(masks, "shape"):  # one array (or CPU tensor): (K, H, W), or (H, W) for a single expression
        array = np.asarray(masks)
        items: list[Any] = [array] if array.ndim == 2 else list(array)
    else:
        items = list(masks)
    if len(items) != count:
        raise ValueError(f"got {len(items)} masks for {count} expressions")
    out: list[np.ndarray | None] = []
    for m in items:
        if m is None:
            out.append(None)
            continue
        array = np.asarray(m)
        if array.shape != shape:
            raise ValueError(f"mask shape {array.shape} does not match the frame size {shape}")
        out.append(array != 0)
    return out


def draw_masks(frame: np.ndarray, masks: Any, colors: Sequence[Color], *, alpha: float = DEFAULT_ALPHA,
               contour_width: int | None = None) -> np.ndarray:
    """Blend each mask's colour over ``frame`` and outline it; later masks are drawn on top.

    Args:
        frame: RGB ``uint8`` ``(H, W, 3)``; not modified.
        masks: ``(K, H, W)`` or ``K`` arrays of ``(H, W)`` (``None`` entries are skipped), ``K == len(colors)``.
        colors: one RGB colour per mask.
        alpha: fill opacity in ``[0, 1]``.
        contour_width: outline thickness in pixels (default scales with the frame, 2 px at 540p).

    Returns:
        A new RGB ``uint8`` ``(H, W, 3)`` array.
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    height, width = frame.shape[:2]
    width_px = contour_width if contour_width is not None else max(1, round(min(height, width) / 270))
    out = frame.copy()
    for mask, color in zip(_as_mask_list(masks, len(colors), (height, width)), colors):
        if mask is None or not mask.any():
            continue
        tint = np.asarray(color, dtype=np.float32)
        out[mask] = (out[mask].astype(np.float32) * (1.0 - alpha) + tint * alpha + 0.5).astype(np.uint8)
        if width_px > 0:
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), width_px, cv2.LINE_AA)
    return out


def _darken(image: np.ndarray, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    region = image[y0:y1, x0:x1]
    region[...] = (region.astype(np.float32) * (1.0 - PANEL_OPACITY)).astype(np.uint8)


def draw_legend(image: np.ndarray, expressions: Sequence[str], colors: Sequence[Color], *,
                font_size: int | None = None) -> tuple[int, int, int, int]:
    """Draw a legend panel (colour swatch + expression text per row) in the top-left corner, in place.

    Long texts are shortened with an ellipsis; rows that do not fit in the frame are summarised as
    "+N more". Returns the panel box ``(x0, y0, x1, y1)`` (exclusive ends); an empty box when nothing is drawn.
    """
    if not expressions:
        return (0, 0, 0, 0)
    height, width = image.shape[:2]
    size = font_size or _font_size(height)
    font = _font(size)
    pad, gap, row_h = max(4, size // 2), max(4, size // 2), round(size * 1.35)
    swatch = size
    # At most ~60% of the frame width, so that the top of the frame stays visible beside the panel.
    panel_max = max(min(width - 2 * pad, 240), round(width * 0.6))
    max_text = panel_max - swatch - gap - 2 * pad
    max_rows = max(1, (height // 2 - 2 * pad) // row_h)
    rows = [(_fit_text(font, f"{i}: {text}", max_text), colors[i]) for i, text in enumerate(expressions)]
    if len(rows) > max_rows:
        hidden = len(rows) - (max_rows - 1)
        rows = rows[: max_rows - 1] + [(f"+{hidden} more", None)]
    text_w = max(_text_width(font, t) for t, _ in rows)
    panel_w = int(pad + swatch + gap + text_w + pad)
    panel_h = pad + (len(rows) - 1) * row_h + size + pad
    box = (pad, pad, min(width, pad + panel_w), min(height, pad + panel_h))
    _darken(image, box)
    canvas = Image.fromarray(image[box[1]:box[3], box[0]:box[2]])
    draw = ImageDraw.Draw(canvas)
    for r, (text, color) in enumerate(rows):
        y = pad + r * row_h
        if color is not None:
            draw.rectangle((pad, y, pad + swatch - 1, y + swatch - 1), fill=color, outline=(255, 255, 255))
        draw.text((pad + swatch + gap, y + size / 2), text, font=font, fill=(255, 255, 255), anchor="lm")
    image[box[1]:box[3], box[0]:box[2]] = np.asarray(canvas)
    return box


def draw_label(image: np.ndarray, text: str, *, font_size: int | None = None) -> tuple[int, int, int, int]:
    """Draw ``text`` on a dark panel in the bottom-right corner, in place; returns the panel box."""
    height, width = image.shape[:2]
    size = font_size or _font_size(height)
    font = _font(size)
    pad = max(3, size // 3)
    text = _fit_text(font, text, width - 4 * pad)
    w = int(_text_width(font, text)) + 2 * pad
    h = size + 2 * pad
    box = (max(0, width - pad - w), max(0, height - pad - h), width - pad, height - pad)
    _darken(image, box)
    canvas = Image.fromarray(image[box[1]:box[3], box[0]:box[2]])
    ImageDraw.Draw(canvas).text((pad, (box[3] - box[1]) / 2), text, font=font, fill=(255, 255, 255), anchor="lm")
    image[box[1]:box[3], box[0]:box[2]] = np.asarray(canvas)
    return box


def overlay_frame(frame: np.ndarray, masks: Any, expressions: Sequence[str], *,
                  colors: Sequence[Color] | None = None, label: str | None = None,
                  alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """One finished overlay frame: masks, legend and (if given) the frame label. Returns RGB ``(H, W, 3)``."""
    colors = colors or expression_colors(len(expressions))
    out = draw_masks(frame, masks, colors, alpha=alpha)
    draw_legend(out, expressions, colors)
    if label:
        draw_label(out, label)
    return out


def contact_sheet(tiles: Sequence[np.ndarray], labels: Sequence[str], expressions: Sequence[str],
                  colors: Sequence[Color] | None = None, *, columns: int = 3,
                  title: str | None = None) -> np.ndarray:
    """Arrange overlay tiles in a grid under a legend header.

    Args:
        tiles: RGB ``uint8`` images of one size ``(h, w, 3)`` (masks drawn, no legend).
        labels: one caption per tile (e.g. the frame name), drawn in the tile's corner.
        expressions: texts listed in the header with their colours.
        columns: grid width (fewer when there are fewer tiles).
        title: optional first header line (e.g. the video name).

    Returns:
        The sheet, RGB ``uint8`` ``(H_sheet, W_sheet, 3)``.
    """
    if not tiles:
        raise ValueError("a contact sheet needs at least one tile")
    colors = colors or expression_colors(len(expressions))
    th, tw = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    gap = max(6, tw // 60)
    width = columns * tw + (columns + 1) * gap
    size = max(14, min(24, round(width * 0.016)))
    font = _font(size)
    line = round(size * 1.5)
    header_lines = ([title] if title else []) + list(expressions)
    header_h = gap + line * len(header_lines) + gap // 2
    sheet = Image.new("RGB", (width, header_h + rows * (th + gap) + gap // 2), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    y = gap
    if title:
        draw.text((gap, y + line / 2), _fit_text(font, title, width - 2 * gap), font=font,
                  fill=(235, 235, 235), anchor="lm")
        y += line
    for i, (text, color) in enumerate(zip(expressions, colors)):
        draw.rectangle((gap, y + (line - size) // 2, gap + size - 1, y + (line - size) // 2 + size - 1),
                       fill=color, outline=(255, 255, 255))
        draw.text((gap + size + gap, y + line / 2), _fit_text(font, f"{i}: {text}", width - 3 * gap - size),
                  font=font, fill=(235, 235, 235), anchor="lm")
        y += line
    for k, (tile, label) in enumerate(zip(tiles, labels)):
        if tile.shape[:2] != (th, tw):
            raise ValueError(f"tile {k} has size {tile.shape[:2]}, the first {th, tw}")
        tile = tile.copy()
        draw_label(tile, label, font_size=max(11, size - 4))
        r, c = divmod(k, columns)
        sheet.paste(Image.fromarray(tile), (gap + c * (tw + gap), header_h + r * (th + gap)))
    return np.asarray(sheet)


def _resize_to_width(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    if w <= width:
        return image
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


class _TileSampler:
    """Keep about ``count`` evenly spaced items of a stream of unknown length with bounded memory.

    Items are kept every ``step`` positions; when ``2 * count`` are kept, every other one is dropped and the
    step doubles. With a known length the positions are chosen up front instead.
    """

    def __init__(self, count: int, total: int | None) -> None:
        self.count = count
        self.wanted: set[int] | None = None
        if total is not None:
            self.wanted = set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist())
        self.step = 1
        self.kept: list[tuple[int, Any]] = []

    def wants(self, position: int) -> bool:
        return position in self.wanted if self.wanted is not None else position % self.step == 0

    def add(self, position: int, item: Any) -> None:
        self.kept.append((position, item))
        if self.wanted is None and len(self.kept) >= 2 * self.count:
            self.step *= 2
            self.kept = [(p, x) for p, x in self.kept if p % self.step == 0]

    def result(self) -> list[Any]:
        if len(self.kept) <= self.count:
            return [x for _, x in self.kept]
        picks = np.linspace(0, len(self.kept) - 1, self.count).round().astype(int)
        return [self.kept[i][1] for i in picks]


@dataclass(frozen=True)
class RenderOutputs:
    """What :class:`OverlayVideoWriter` wrote (``None`` for outputs not requested or skipped)."""

    mp4: Path
    gif: Path | None
    contact_sheet: Path | None
    num_frames: int


def _tmp_path(path: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


class OverlayVideoWriter:
    """Encode overlay frames one at a time into an mp4, plus a GIF (short clips) and a contact sheet.

    Outputs appear atomically when :meth:`close` succeeds; if the ``with`` block raises, temporary files are
    removed and nothing is left behind.

    Args:
        mp4_path: the H.264 (or MPEG-4 Part 2 when libx264 is missing) video to write.
        expressions: one text per mask channel, listed in the legend.
        fps: playback rate.
        gif_path: also write a GIF here when the clip has at most ``gif_max_frames`` frames.
        gif_max_frames: longest clip that gets a GIF.
        gif_width: GIF frames are downscaled to at most this width (keeps the file small).
        sheet_path: also write a contact-sheet PNG here.
        sheet_tiles: number of frames in the contact sheet.
        num_frames: length of the clip if known (lets the sheet pick evenly spaced frames up front and skips
            GIF buffering for long clips).
        title: first line of the contact sheet header.
        alpha: mask fill opacity.
    """

    def __init__(self, mp4_path: str | Path, expressions: Sequence[str], *, fps: float = 10.0,
                 gif_path: str | Path | None = None, gif_max_frames: int = 120, gif_width: int = 480,
                 sheet_path: str | Path | None = None, sheet_tiles: int = 6, sheet_tile_width: int = 480,
                 num_frames: int | None = None, title: str | None = None,
                 alpha: float = DEFAULT_ALPHA) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.mp4_path = Path(mp4_path)
        self.expressions = list(expressions)
        self.colors = expression_colors(len(self.expressions))
        self.fps = fps
        self.alpha = alpha
        self.gif_path = None if gif_path is None else Path(gif_path)
        self.gif_max_frames = gif_max_frames
        self.gif_width = gif_width
        self.sheet_path = None if sheet_path is None else Path(sheet_path)
        self.sheet_tile_width = sheet_tile_width
        self.title = title
        self.count = 0
        self._gif_frames: list[Image.Image] | None = (
            [] if self.gif_path is not None and (num_frames is None or num_frames <= gif_max_frames) else None)
        self._tiles = _TileSampler(sheet_tiles, num_frames) if self.sheet_path is not None else None
        self._container: Any = None
        self._stream: Any = None
        self._mp4_tmp: Path | None = None
        self._size: tuple[int, int] | None = None

    # ---- encoding ---------------------------------------------------------------------------------------
    def _open(self, height: int, width: int) -> None:
        import av

        self._mp4_tmp = _tmp_path(self.mp4_path)
        self._container = av.open(str(self._mp4_tmp), "w", format="mp4", options={"movflags": "+faststart"})
        rate = Fraction(self.fps).limit_denominator(1001)
        try:
            stream = self._container.add_stream("libx264", rate=rate)
            stream.options = {"crf": "20", "preset": "veryfast"}
        except (av.error.FFmpegError, ValueError):  # PyAV build without libx264
            stream = self._container.add_stream("mpeg4", rate=rate)
            stream.bit_rate = 8 * height * width  # ~8 bits per pixel per second: crisp at small sizes
        stream.height, stream.width = height + height % 2, width + width % 2
        stream.pix_fmt = "yuv420p"
        self._stream = stream

    def add(self, frame: np.ndarray, masks: Any, label: str | None = None) -> np.ndarray:
        """Draw and encode one frame. ``frame``: RGB ``uint8`` ``(H, W, 3)``; ``masks``: ``(K, H, W)``.

        Returns the overlay frame (RGB ``(H, W, 3)``) that was encoded.
        """
        import av

        frame = np.asarray(frame)
        if self._size is None:
            self._size = (int(frame.shape[0]), int(frame.shape[1]))
            self._open(*self._size)
        elif frame.shape[:2] != self._size:
            raise ValueError(f"frame {self.count} has size {frame.shape[:2]}, earlier frames {self._size}")
        label = label if label is not None else f"frame {self.count}"
        masked = draw_masks(frame, masks, self.colors, alpha=self.alpha)
        if self._tiles is not None and self._tiles.wants(self.count):
            tile = _resize_to_width(masked, self.sheet_tile_width)
            self._tiles.add(self.count, (tile.copy() if tile is masked else tile, label))
        if self._gif_frames is not None and len(self._gif_frames) < self.gif_max_frames:
            # text is drawn at the GIF's own size so that it stays legible after downscaling
            small = _resize_to_width(masked, self.gif_width)
            small = small.copy() if small is masked else small
            self._decorate(small, label)
            self._gif_frames.append(Image.fromarray(small).quantize())
        elif self._gif_frames is not None:
            logger.info("%s: clip longer than %d frames, no GIF written", self.gif_path, self.gif_max_frames)
            self._gif_frames = None
        overlay = self._decorate(masked, label)  # masked is not used after this: draw in place
        height, width = self._size
        padded = np.pad(overlay, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(padded, format="rgb24")):
            self._container.mux(packet)
        self.count += 1
        return overlay

    def _decorate(self, image: np.ndarray, label: str) -> np.ndarray:
        draw_legend(image, self.expressions, self.colors)
        draw_label(image, label)
        return image

    def close(self) -> RenderOutputs:
        """Flush the encoder and move every output into place. Raises ``ValueError`` if no frame was added."""
        if self._container is None:
            raise ValueError(f"{self.mp4_path}: no frame was added")
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        assert self._mp4_tmp is not None
        os.chmod(self._mp4_tmp, FILE_MODE)
        gif = self._write_gif()
        sheet = self._write_sheet()
        os.replace(self._mp4_tmp, self.mp4_path)
        self._mp4_tmp = None
        return RenderOutputs(self.mp4_path, gif, sheet, self.count)

    def _write_gif(self) -> Path | None:
        if self.gif_path is None or not self._gif_frames:
            return None
        frames, self._gif_frames = self._gif_frames, None
        tmp = _tmp_path(self.gif_path)
        try:
            # GIF delays are in 1/100 s; browsers treat delays below 20 ms as 100 ms, hence the floor.
            frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                           duration=max(20, round(1000 / self.fps, -1)))
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, self.gif_path)
        finally:
            tmp.unlink(missing_ok=True)
        return self.gif_path

    def _write_sheet(self) -> Path | None:
        if self.sheet_path is None or self._tiles is None:
            return None
        tiles = self._tiles.result()
        sheet = contact_sheet([t for t, _ in tiles], [lab for _, lab in tiles], self.expressions, self.colors,
                              title=self.title)
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {self.sheet_path}")
        atomic_write_bytes(self.sheet_path, encoded.tobytes())
        return self.sheet_path

    def abort(self) -> None:
        """Stop without writing anything; temporary files are removed."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - the file is discarded anyway
                logger.debug("closing an aborted mp4 failed", exc_info=True)
            self._container = None
        if self._mp4_tmp is not None:
            self._mp4_tmp.unlink(missing_ok=True)
            self._mp4_tmp = None
        self._gif_frames = None

    def __enter__(self) -> "OverlayVideoWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()


def render_overlays(frames: Iterable[np.ndarray], masks: Iterable[Any], expressions: Sequence[str],
                    out_dir: str | Path, *, name: str = "overlay", fps: float | None = None,
                    frame_names: Sequence[str] | None = None, num_frames: int | None = None,
                    gif_max_frames: int = 120, sheet_tiles: int = 6, title: str | None = None,
                    alpha: float = DEFAULT_ALPHA) -> RenderOutputs:
    """Render ``<out_dir>/<name>.mp4``, ``<name>.gif`` (clips of at most ``gif_max_frames`` frames) and
    ``<name>_sheet.png`` from two parallel streams, consuming one frame and its masks at a time.

    Args:
        frames: RGB ``uint8`` ``(H, W, 3)`` frames (e.g. ``VideoSource.iter_frames()``).
        masks: per frame, ``(K, H, W)`` masks for the ``K`` expressions.
        expressions: the ``K`` expression texts.
        out_dir: existing or new folder for the three files.
        fps: playback rate (default 10 when the source has none).
        frame_names: per-frame labels shown as "frame <i> · <name>" (default: the index).
        num_frames: the clip length when known (frames are still consumed lazily).

    Raises:
        ValueError: ``frames`` and ``masks`` have different lengths, or sizes disagree.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if num_frames is None and frame_names is not None:
        num_frames = len(frame_names)
    writer = OverlayVideoWriter(out_dir / f"{name}.mp4", expressions, fps=fps or 10.0,
                                gif_path=out_dir / f"{name}.gif", gif_max_frames=gif_max_frames,
                                sheet_path=out_dir / f"{name}_sheet.png", sheet_tiles=sheet_tiles,
                                num_frames=num_frames, title=title, alpha=alpha)
    with writer:
        for i, (frame, frame_masks) in enumerate(zip(frames, masks, strict=True)):
            label = f"frame {i}" if frame_names is None else f"frame {i} · {frame_names[i]}"
            writer.add(frame, frame_masks, label)
        return writer.close()


__all__ = [
    "DEFAULT_ALPHA", "PALETTE", "OverlayVideoWriter", "RenderOutputs", "contact_sheet", "draw_label",
    "draw_legend", "draw_masks", "expression_colors", "overlay_frame", "render_overlays",
]
