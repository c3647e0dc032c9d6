"""Deterministic synthetic videos (moving coloured shapes) and writers for the official dataset layouts.

Tests and demos need videos whose ground truth is known exactly. :func:`make_video` draws, from a seed, a
textured noisy background and ``K`` flat-coloured shapes (circle, square, triangle) moving in straight lines;
each object's mask is the set of its *visible* pixels (later objects occlude earlier ones, as annotators of
MeViS / Ref-YouTube-VOS mark visible parts), so the masks of one frame never overlap and, because object
colours are saturated and the background is not, ``mask_k == all(frame == colour_k)`` exactly.

Writers reproduce the official layouts:

* MeViS (:func:`write_mevis_split`): ``<split>/JPEGImages/<vid>/<frame>.jpg``, ``<split>/meta_expressions.json``
  (``videos -> {expressions -> {exp, obj_id, anno_id}, frames}``) and ``<split>/mask_dict.json`` (anno_id ->
  per-frame COCO RLE with ``counts`` as text, ``null`` where the object is not visible). The ``valid`` split
  carries neither masks nor ids, as released.
* Ref-YouTube-VOS (:func:`write_refytvos_split`): ``meta_expressions/<split>/meta_expressions.json`` (one object
  per expression, ``obj_id`` a string), ``<split>/JPEGImages`` and ``<split>/Annotations/<vid>/<frame>.png``
  palette PNGs whose pixel value is the object id, plus YouTube-VOS's ``<split>/meta.json``.
* :func:`write_frames` (a frame folder) and :func:`encode_mp4` (H.264 or MPEG-4 Part 2 through PyAV).

Every file is written atomically (:mod:`glus.fileio`). No torch here.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

from glus.data.masks import encode_rle
from glus.fileio import atomic_path, atomic_write_bytes, atomic_write_json

logger = logging.getLogger(__name__)

__all__ = [
    "SHAPES",
    "COLORS",
    "DIRECTIONS",
    "SyntheticObject",
    "SyntheticExpression",
    "SyntheticVideo",
    "make_video",
    "render_shape",
    "write_frames",
    "write_mevis_split",
    "write_refytvos_split",
    "encode_mp4",
    "davis_palette",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Saturated colours: each has a channel outside the background range [_BG_LOW, _BG_HIGH], so no background
# pixel can take an object's colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 40),
    "purple": (160, 40, 210),
    "orange": (250, 140, 20),
    "cyan": (30, 210, 220),
    "white": (245, 245, 245),
}
# direction -> unit step (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS: dict[str, tuple[int, int]] = {
    "right": (1, 0),
    "left": (-1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "still": (0, 0),
}
_BG_LOW, _BG_HIGH = 40, 150


@dataclass(frozen=True)
class SyntheticObject:
    """One moving shape.

    Attributes:
        index: position in the video's object list (MeViS ``obj_id``; Ref-YouTube-VOS uses ``index + 1``).
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS` (unique within a video).
        direction: one of :data:`DIRECTIONS`.
        radius: circumradius in pixels.
        centers: per-frame centre ``(x, y)`` in pixels, ``T`` pairs.
    """

    index: int
    shape: str
    color: str
    direction: str
    radius: float
    centers: tuple[tuple[float, float], ...]

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class SyntheticExpression:
    """A referring expression and the objects (indices into the video's objects) it refers to."""

    text: str
    objects: tuple[int, ...]


@dataclass
class SyntheticVideo:
    """A generated video with exact ground truth.

    Attributes:
        name: video id (no underscore: GLUS splits ``<dataset>_<video>_<exp>`` ids on it).
        frames: ``[T, H, W, 3]`` uint8 RGB.
        masks: ``[K, T, H, W]`` bool, visible pixels of ``objects[k]``; disjoint within a frame.
        objects: the ``K`` objects.
        expressions: referring expressions (single objects, two phrasings each, and a union if ``K >= 2``).
    """

    name: str
    frames: np.ndarray
    masks: np.ndarray
    objects: tuple[SyntheticObject, ...]
    expressions: tuple[SyntheticExpression, ...]

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def frame_names(self, step: int = 1) -> list[str]:
        """Official frame names: five-digit indices (``step`` 5 for Ref-YouTube-VOS's sampled frames)."""
        return [f"{t * step:05d}" for t in range(self.num_frames)]

    def target(self, objects: Sequence[int]) -> np.ndarray:
        """``[T, H, W]`` bool union of the given objects' masks (empty if none)."""
        if len(objects) == 0:
            return np.zeros(self.masks.shape[1:], dtype=bool)
        return self.masks[list(objects)].any(axis=0)


# -------------------------------------------------------------------------------------------- generation


def render_shape(shape: str, center: tuple[float, float], radius: float, height: int, width: int) -> np.ndarray:
    """Rasterise a shape: ``[H, W]`` bool, pixel ``(y, x)`` in the shape when its centre ``(x + .5, y + .5)`` is.

    Circle: disc of ``radius``. Square: axis-aligned, half-side ``radius / sqrt(2)`` (inscribed in the circle).
    Triangle: equilateral, apex up, circumradius ``radius``.
    """
    out = np.zeros((height, width), dtype=bool)
    # only the pixels of the bounding box of the circumcircle can be inside
    x0, x1 = max(int(np.floor(center[0] - radius)), 0), min(int(np.ceil(center[0] + radius)) + 1, width)
    y0, y1 = max(int(np.floor(center[1] - radius)), 0), min(int(np.ceil(center[1] + radius)) + 1, height)
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    if x0 >= x1 or y0 >= y1:
        return out  # entirely out of view
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    dx, dy = xs - center[0], ys - center[1]
    if shape == "circle":
        inside = dx * dx + dy * dy <= radius * radius
    elif shape == "square":
        half = radius / np.sqrt(2.0)
        inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    else:  # triangle: below the two upper edges and above the base (apex at dy = -radius, base at radius / 2)
        s3 = np.sqrt(3.0)
        inside = (dy <= radius / 2) & (s3 * dx - dy <= radius) & (-s3 * dx - dy <= radius)
    out[y0:y1, x0:x1] = inside
    return out


def _background(rng: np.random.Generator, num_frames: int, height: int, width: int) -> np.ndarray:
    """``[T, H, W, 3]`` uint8: a static low-frequency texture plus per-frame sensor noise, in [40, 150]."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    texture = np.zeros((height, width, 3))
    for _ in range(4):  # a few random plane waves per channel give a smooth, non-flat texture
        freq = rng.uniform(0.02, 0.15, size=2) * rng.choice([-1, 1], size=2)
        phase = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(6, 14, size=3)
        texture += np.sin(xs * freq[0] + ys * freq[1] + phase)[..., None] * amp
    texture += rng.uniform(80, 110, size=3)
    texture = texture.astype(np.float32)
    out = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):  # frame by frame: a full-size video's float noise would not fit comfortably
        noise = rng.standard_normal((height, width, 3), dtype=np.float32) * 4.0
        out[t] = np.clip(np.rint(texture + noise), _BG_LOW, _BG_HIGH)
    return out


def _trajectory(
    rng: np.random.Generator, direction: str, radius: float, num_frames: int, height: int, width: int, exits: bool
) -> tuple[tuple[float, float], ...]:
    """Per-frame centres of a straight motion that stays in view (or, if ``exits``, leaves it halfway)."""
    dx, dy = DIRECTIONS[direction]
    lo_x, hi_x = radius, width - radius
    lo_y, hi_y = radius, height - radius
    steps = max(num_frames - 1, 1)
    if exits and (dx or dy):
        # fully out of view from the middle frame on: travel ~1.5 frame widths over the video
        extent = width if dx else height
        speed = (extent + 2 * radius) / max(steps / 2, 1)
        start = rng.uniform(radius, extent / 2)
        along = [start + speed * t for t in range(num_frames)]
        if dx + dy < 0:  # moving left / up: mirror the path
            along = [extent - a for a in along]
        if dx:
            y = rng.uniform(lo_y, hi_y)
            return tuple((a, y) for a in along)
        x = rng.uniform(lo_x, hi_x)
        return tuple((x, a) for a in along)
    # in view throughout: pick a travel length, then a start that keeps the end inside
    span_x, span_y = hi_x - lo_x, hi_y - lo_y
    travel = rng.uniform(0.3, 0.9) * (span_x if dx else span_y if dy else 0.0)
    # the start leaves ``travel`` free on the side the object moves to
    x0 = rng.uniform(lo_x + (travel if dx < 0 else 0.0), hi_x - (travel if dx > 0 else 0.0))
    y0 = rng.uniform(lo_y + (travel if dy < 0 else 0.0), hi_y - (travel if dy > 0 else 0.0))
    return tuple((x0 + dx * travel * t / steps, y0 + dy * travel * t / steps) for t in range(num_frames))


def _expressions(objects: Sequence[SyntheticObject]) -> tuple[SyntheticExpression, ...]:
    out: list[SyntheticExpression] = []
    for obj in objects:
        motion = "staying still" if obj.direction == "still" else f"moving {obj.direction}"
        out.append(SyntheticExpression(f"the {obj.name} {motion}", (obj.index,)))
        out.append(SyntheticExpression(f"the {obj.name}", (obj.index,)))  # same object set, other words
    if len(objects) >= 2:
        a, b = objects[0], objects[1]
        out.append(SyntheticExpression(f"the {a.name} and the {b.name}", (a.index, b.index)))
    return tuple(out)


def make_video(
    seed: int,
    num_frames: int = 8,
    height: int = 64,
    width: int = 96,
    num_objects: int = 2,
    *,
    name: str | None = None,
    num_exiting: int = 0,
) -> SyntheticVideo:
    """Generate a synthetic video; the same arguments always give the same arrays.

    Args:
        seed: random seed (a ``numpy.random.default_rng`` seed).
        num_frames: ``T`` >= 1.
        height, width: frame size ``H, W`` (>= 16 each).
        num_objects: ``K``, 1 to ``len(COLORS)`` (colours are unique within a video).
        name: video id; default ``"syn<seed>"``.
        num_exiting: how many of the last objects move out of view halfway (their later masks are empty,
            ``null`` in a MeViS ``mask_dict``); they never move ``"still"``.

    Returns:
        :class:`SyntheticVideo` with frames ``[T, H, W, 3]`` and masks ``[K, T, H, W]``.
    """
    if num_frames < 1 or height < 16 or width < 16:
        raise ValueError(f"need num_frames >= 1 and a frame of at least 16x16, got T={num_frames}, {height}x{width}")
    if not 1 <= num_objects <= len(COLORS):
        raise ValueError(f"num_objects must be in 1..{len(COLORS)}, got {num_objects}")
    if not 0 <= num_exiting <= num_objects:
        raise ValueError(f"num_exiting must be in 0..{num_objects}, got {num_exiting}")
    if name is not None and "_" in name:
        raise ValueError(f"video name {name!r} must not contain '_'")
    rng = np.random.default_rng(seed)
    frames = _background(rng, num_frames, height, width)
    colors = rng.permutation(list(COLORS))[:num_objects]
    objects: list[SyntheticObject] = []
    for k in range(num_objects):
        exits = k >= num_objects - num_exiting
        moving = [d for d in DIRECTIONS if d != "still"]
        direction = str(rng.choice(moving if exits else list(DIRECTIONS)))
        radius = float(rng.uniform(0.12, 0.2) * min(height, width))
        centers = _trajectory(rng, direction, radius, num_frames, height, width, exits)
        objects.append(SyntheticObject(k, str(rng.choice(SHAPES)), str(colors[k]), direction, radius, centers))

    masks = np.zeros((num_objects, num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        for obj in objects:  # painter's order: a later object hides the earlier ones where they overlap
            m = render_shape(obj.shape, obj.centers[t], obj.radius, height, width)
            masks[: obj.index, t] &= ~m
            masks[obj.index, t] = m
            frames[t][m] = obj.rgb
    return SyntheticVideo(
        name=name if name is not None else f"syn{seed}",
        frames=frames,
        masks=masks,
        objects=tuple(objects),
        expressions=_expressions(objects),
    )


# -------------------------------------------------------------------------------------------- writers


def _encode_image(frame: np.ndarray, ext: str) -> bytes:
    ext = ext.lower().lstrip(".")
    if ext not in ("jpg", "jpeg", "png"):
        raise ValueError(f"unsupported frame extension {ext!r}; use jpg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext in ("jpg", "jpeg") else []
    ok, buf = cv2.imencode("." + ext, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {frame.shape} frame as {ext}")
    return buf.tobytes()


def write_frames(
    folder: str | os.PathLike[str], frames: np.ndarray, ext: str = "jpg", names: Sequence[str] | None = None
) -> list[Path]:
    """Write ``[T, H, W, 3]`` uint8 RGB frames as ``<folder>/<name>.<ext>`` (names default ``00000``, ...).

    Returns:
        The ``T`` written paths, in order.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected [T, H, W, 3] uint8 frames, got {frames.shape} {frames.dtype}")
    names = list(names) if names is not None else [f"{t:05d}" for t in range(len(frames))]
    if len(names) != len(frames):
        raise ValueError(f"{len(names)} names for {len(frames)} frames")
    folder = Path(folder)
    paths = []
    for name, frame in zip(names, frames):
        path = folder / f"{name}.{ext.lstrip('.')}"
        atomic_write_bytes(path, _encode_image(frame, ext))
        paths.append(path)
    return paths


def write_mevis_split(
    root: str | os.PathLike[str],
    videos: Sequence[SyntheticVideo],
    split: str = "valid_u",
    *,
    with_masks: bool | None = None,
    write_images: bool = True,
) -> Path:
    """Write videos as a MeViS split under ``root/<split>``.

    ``anno_id`` values number the objects of the split in order (one annotation per object, as in MeViS);
    ``obj_id`` is the object's index within its video; an expression's ground truth is the union of its
    anno_ids.

    Args:
        root: dataset root (the folder holding ``train/``, ``valid_u/``, ``valid/``).
        videos: the videos (distinct names).
        split: split folder name.
        with_masks: write ``mask_dict.json`` and the ids; default: every split but ``valid`` (as released).
        write_images: write ``JPEGImages`` (skip for metadata-only tests).

    Returns:
        The split folder.
    """
    _check_names(videos)
    with_masks = split != "valid" if with_masks is None else with_masks
    split_dir = Path(root) / split
    meta: dict[str, Any] = {"videos": {}}
    mask_dict: dict[str, Any] = {}
    next_anno = 0
    for video in videos:
        anno_ids = list(range(next_anno, next_anno + len(video.objects)))
        next_anno += len(video.objects)
        expressions: dict[str, Any] = {}
        for e, exp in enumerate(video.expressions):
            entry: dict[str, Any] = {"exp": exp.text}
            if with_masks:
                entry["obj_id"] = list(exp.objects)
                entry["anno_id"] = [anno_ids[k] for k in exp.objects]
            expressions[str(e)] = entry
        meta["videos"][video.name] = {"expressions": expressions, "frames": video.frame_names()}
        if with_masks:
            for k, anno in enumerate(anno_ids):
                mask_dict[str(anno)] = [encode_rle(m) if m.any() else None for m in video.masks[k]]
        if write_images:
            write_frames(split_dir / "JPEGImages" / video.name, video.frames, "jpg", video.frame_names())
    atomic_write_json(split_dir / "meta_expressions.json", meta)
    if with_masks:
        atomic_write_json(split_dir / "mask_dict.json", mask_dict)
    logger.info("wrote MeViS split %s: %d videos", split_dir, len(videos))
    return split_dir


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS / YouTube-VOS annotation PNGs (PASCAL VOC bit-interleaved), 768 ints."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _palette_png(ids: np.ndarray) -> bytes:
    img = Image.fromarray(ids.astype(np.uint8), mode="L")
    img.putpalette(davis_palette())  # turns the image into mode "P", pixel value = object id
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_refytvos_split(
    root: str | os.PathLike[str],
    videos: Sequence[SyntheticVideo],
    split: str = "train",
    *,
    with_annotations: bool | None = None,
    frame_step: int = 5,
    write_images: bool = True,
) -> Path:
    """Write videos as a Ref-YouTube-VOS split under ``root``.

    Only single-object expressions are written (Ref-YouTube-VOS has no union expressions); object ``k`` of a
    video has id ``k + 1`` (``obj_id`` string in the meta, pixel value in the PNGs, 0 = background). Frame names
    advance by ``frame_step`` (the released frames are every 5th frame of the source video).

    Args:
        root: dataset root (holding ``meta_expressions/``, ``train/``, ``valid/``).
        videos: the videos (distinct names).
        split: split name.
        with_annotations: write ``obj_id``, ``Annotations`` and ``meta.json``; default only for ``train``
            (the released ``valid`` split has expressions only).
        frame_step: step of the frame names.
        write_images: write ``JPEGImages``.

    Returns:
        ``root``.
    """
    _check_names(videos)
    with_annotations = split == "train" if with_annotations is None else with_annotations
    root = Path(root)
    meta: dict[str, Any] = {"videos": {}}
    ytvos_meta: dict[str, Any] = {"videos": {}}
    for video in videos:
        names = video.frame_names(frame_step)
        expressions: dict[str, Any] = {}
        for exp in video.expressions:
            if len(exp.objects) != 1:
                continue
            entry: dict[str, Any] = {"exp": exp.text}
            if with_annotations:
                entry["obj_id"] = str(exp.objects[0] + 1)
            expressions[str(len(expressions))] = entry
        meta["videos"][video.name] = {"expressions": expressions, "frames": names}
        if write_images:
            write_frames(root / split / "JPEGImages" / video.name, video.frames, "jpg", names)
        if with_annotations:
            ids = np.zeros(video.masks.shape[1:], dtype=np.uint8)  # [T, H, W]
            for k in range(len(video.objects)):
                ids[video.masks[k]] = k + 1  # visible masks are disjoint: no pixel is claimed twice
            for name, frame_ids in zip(names, ids):
                atomic_write_bytes(root / split / "Annotations" / video.name / f"{name}.png", _palette_png(frame_ids))
            ytvos_meta["videos"][video.name] = {
                "objects": {
                    str(obj.index + 1): {
                        "category": obj.shape,
                        "frames": [n for n, m in zip(names, video.masks[obj.index]) if m.any()],
                    }
                    for obj in video.objects
                }
            }
    atomic_write_json(root / "meta_expressions" / split / "meta_expressions.json", meta)
    if with_annotations:
        atomic_write_json(root / split / "meta.json", ytvos_meta)
    logger.info("wrote Ref-YouTube-VOS split %s/%s: %d videos", root, split, len(videos))
    return root


def _check_names(videos: Sequence[SyntheticVideo]) -> None:
    names = [v.name for v in videos]
    if len(set(names)) != len(names):
        raise ValueError(f"video names must be distinct, got {names}")


def encode_mp4(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 6.0) -> Path:
    """Encode ``[T, H, W, 3]`` uint8 RGB frames (``H``, ``W`` even) as an MP4 with PyAV.

    Uses H.264 (``libx264``, CRF 17) when the PyAV build has it, else MPEG-4 Part 2; ``yuv420p`` either way
    (what players and decoders expect, and why the sizes must be even).

    Returns:
        ``path``.
    """
    import av  # local: only this function needs PyAV

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected non-empty [T, H, W, 3] uint8 frames, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {height}x{width}")
    path = Path(path)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "17", "preset": "fast"}
        else:
            stream.bit_rate = max(2_000_000, 12 * width * height)
            stream.options = {"qmax": "4"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)
    return path
