"""Open a video source and stream its frames as RGB ``uint8`` arrays of shape ``(H, W, 3)``.

Three kinds of source are accepted by :func:`open_video`:

* a video file (``.mp4 .mov .webm .avi .mkv``), decoded with PyAV; when PyAV cannot open the file, OpenCV's
  ``VideoCapture`` is tried before giving up;
* a folder of frames (``.jpg .jpeg .png .bmp .webp``), ordered by file name in natural order
  (``frame2`` before ``frame10``);
* an explicit list of image files, kept in the order given (a single image path is a one-frame list).

Frames are selected with ``start`` (index of the first frame kept, in source frames), ``stride`` (keep every
``stride``-th frame from there) and ``max_frames`` (keep at most that many). :meth:`VideoSource.iter_frames`
decodes one frame at a time, so memory does not grow with the length of the video.

Pixel conversions (applied to every frame, whatever its storage):

* grayscale (``1``, ``L``) -> RGB by repeating the channel;
* RGBA / LA -> RGB by **dropping** the alpha channel (no compositing over a background: the stored colour
  values are what the model sees);
* 16-bit images -> 8-bit by rounding ``v / 257`` (maps 0..65535 onto 0..255 exactly, ``257 * k`` -> ``k``);
* palette images -> RGB through their palette; CMYK / YCbCr -> RGB.

Video files are turned upright according to their display-matrix rotation (as players and OpenCV show them),
so portrait phone videos come out portrait. EXIF orientation of images is deliberately *not* applied: dataset
annotations are stored in the pixel orientation of the file, and rotating the frame would misalign them.

Folders may hold files that are clearly not frames (``.txt``, ``.json``, ``.csv``, ... and hidden files such
as ``.DS_Store``); those are ignored. Sub-folders are ignored. Any other file raises :class:`GLUSError`,
because silently skipping, say, a ``.tif`` frame would shift every later frame index.

Every problem with the input raises :class:`GLUSError` whose one-line message names the file.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from glus.errors import GLUSError

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".webm", ".avi", ".mkv"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# Files that commonly sit next to frames and are clearly not images: ignored in frame folders.
IGNORED_EXTENSIONS = frozenset({
    ".txt", ".json", ".jsonl", ".csv", ".tsv", ".md", ".yaml", ".yml", ".xml", ".log", ".ini", ".cfg",
    ".db", ".pkl", ".pickle", ".npy", ".npz", ".pt", ".pth", ".zip", ".tar", ".gz", ".html", ".py", ".sh",
})

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``["f2", "f10", "f1"]`` sorts as ``f1, f2, f10``.

    Ties (e.g. ``f01`` vs ``f1``) are broken by the plain name so the order is total and reproducible.
    """
    parts = _DIGITS.split(name.lower())
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != ""), name


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any supported mode to an RGB ``uint8`` array of shape ``(H, W, 3)``.

    16-bit modes are scaled to 8 bits by rounding ``v / 257``; alpha is dropped; palettes are expanded.
    """
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale PNGs open as "I;16" or (older Pillow) "I" holding 0..65535.
        values = np.asarray(image).astype(np.int64)
        gray = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise ValueError("floating-point images are not supported")
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")  # expand the palette (and its transparency) first
    if image.mode != "RGB":
        image = image.convert("RGB")  # L, 1, LA, RGBA (alpha dropped), CMYK, YCbCr, ...
    return np.asarray(image, dtype=np.uint8).copy()


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode one image file (by content, whatever its extension) into an RGB ``uint8`` ``(H, W, 3)`` array."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb_uint8(image)
    except FileNotFoundError:
        raise GLUSError("image does not exist", path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise GLUSError(f"cannot read image ({_one_line(exc)})", path) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _select(total: int, start: int, stride: int, max_frames: int | None) -> range:
    """Indices of the kept source frames."""
    selected = range(start, total, stride)
    return selected if max_frames is None else selected[:max_frames]


class VideoSource(ABC):
    """A finite sequence of RGB frames with names.

    Attributes:
        path: the video file, frame folder, or first image of an explicit list.
        frame_names: one name per kept frame; ``"00000"``-style source indices for video files, file stems
            for images. Masks are written under these names.
        source_indices: index of each kept frame in the source (before start/stride/max_frames).
        fps: frames per second of the *kept* frames (source rate divided by ``stride``); ``None`` when the
            source has no rate (image folders without an explicit ``fps``).
    """

    path: Path
    frame_names: list[str]
    source_indices: list[int]
    fps: float | None
    _size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        """Number of kept frames."""
        return len(self.frame_names)

    @property
    def size(self) -> tuple[int, int]:
        """Frame size ``(H, W)``; all frames of a source share it."""
        return self._size

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.iter_frames()

    @abstractmethod
    def iter_frames(self) -> Iterator[np.ndarray]:
        """Yield the kept frames in order, one RGB ``uint8`` ``(H, W, 3)`` array at a time."""

    @abstractmethod
    def read(self, index: int) -> np.ndarray:
        """Return kept frame ``index`` (``0 <= index < num_frames``) as an RGB ``uint8`` ``(H, W, 3)`` array."""

    def close(self) -> None:
        """Release open files (a no-op for image sources)."""

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_index(self, index: int) -> int:
        if not -self.num_frames <= index < self.num_frames:
            raise IndexError(f"frame {index} out of range for {self.num_frames} frames of {self.path}")
        return index % self.num_frames


class ImageSequenceSource(VideoSource):
    """Frames stored as image files, decoded on demand (nothing is cached)."""

    def __init__(self, files: Sequence[Path], *, path: Path, fps: float | None = None,
                 source_indices: Sequence[int] | None = None) -> None:
        self.path = path
        self.files = list(files)
        self.frame_names = [f.stem for f in self.files]
        self.source_indices = list(range(len(self.files)) if source_indices is None else source_indices)
        self.fps = fps
        self._size = self._check_sizes()

    def _check_sizes(self) -> tuple[int, int]:
        """Read every header (not the pixels) so that bad files and size mismatches fail before any work."""
        first: tuple[int, int] | None = None
        for file in self.files:
            try:
                with Image.open(file) as image:
                    size = (image.height, image.width)
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                raise GLUSError(f"cannot read image ({_one_line(exc)})", file) from None
            if first is None:
                first = size
            elif size != first:
                raise GLUSError(
                    f"frame size {size[0]}x{size[1]} (HxW) differs from the first frame "
                    f"{self.files[0].name} ({first[0]}x{first[1]})", file)
        assert first is not None
        return first

    def iter_frames(self) -> Iterator[np.ndarray]:
        for file in self.files:
            yield self._decode(file)

    def read(self, index: int) -> np.ndarray:
        return self._decode(self.files[self._check_index(index)])

    def _decode(self, file: Path) -> np.ndarray:
        frame = read_image_rgb(file)
        if frame.shape[:2] != self._size:  # the file changed on disk since it was opened
            raise GLUSError(f"frame size {frame.shape[0]}x{frame.shape[1]} (HxW) differs from "
                            f"{self._size[0]}x{self._size[1]}", file)
        return frame


class VideoFileSource(VideoSource):
    """A video file decoded sequentially with PyAV (or OpenCV when PyAV cannot open it).

    Frame counting demuxes the file once without decoding (cheap); the first frame is decoded at open time so
    that undecodable files fail immediately. :meth:`read` decodes forward from a cursor and restarts from the
    beginning for a backward jump: fine for occasional access, use :meth:`iter_frames` for a full pass.
    """

    def __init__(self, path: Path, *, start: int = 0, stride: int = 1, max_frames: int | None = None) -> None:
        self.path = path
        self.backend = "pyav"
        try:
            total, rate = self._probe_pyav()
        except _PyAVCannotOpen as exc:
            total, rate = self._probe_opencv(str(exc))
            self.backend = "opencv"
        if total == 0:
            raise GLUSError("video has zero frames", path)
        selected = _select(total, start, stride, max_frames)
        if len(selected) == 0:
            raise GLUSError(f"no frames selected: start={start} is past the video's {total} frames", path)
        self.total_frames = total
        self.source_indices = list(selected)
        self.frame_names = [f"{i:05d}" for i in selected]
        self.fps = None if rate is None else rate / stride
        self._cursor: Iterator[tuple[int, np.ndarray]] | None = None
        self._cursor_pos = -1
        probe = self._decode_selected()
        try:
            first = next(probe, None)
        finally:
            probe.close()
        if first is None:
            raise GLUSError("no frame could be decoded", path)
        self._size = (int(first[1].shape[0]), int(first[1].shape[1]))

    # ---- probing -------------------------------------------------------------------------------------
    def _probe_pyav(self) -> tuple[int, float | None]:
        import av

        try:
            container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            raise _PyAVCannotOpen(_one_line(exc)) from None
        try:
            if not container.streams.video:
                raise GLUSError("file has no video stream", self.path)
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            # Count packets instead of trusting the header (mkv/webm store no count, others may be wrong);
            # discarded packets (edit-list pre-roll) produce no output frame.
            total = 0
            try:
                for packet in container.demux(stream):
                    if packet.size and not packet.is_discard:
                        total += 1
            except av.error.FFmpegError as exc:
                raise GLUSError(f"corrupt video: {_one_line(exc)}", self.path) from None
            return total, (float(rate) if rate else None)
        finally:
            container.close()

    def _probe_opencv(self, pyav_reason: str) -> tuple[int, float | None]:
        import cv2

        capture = cv2.VideoCapture(str(self.path))
        try:
            if not capture.isOpened():
                raise GLUSError(f"unreadable or corrupt video (PyAV: {pyav_reason}; OpenCV could not open it)",
                                self.path)
            logger.info("%s: PyAV cannot open it (%s); decoding with OpenCV", self.path, pyav_reason)
            rate = capture.get(cv2.CAP_PROP_FPS)
            total = 0
            while capture.grab():  # CAP_PROP_FRAME_COUNT is an estimate for many containers: count exactly
                total += 1
            return total, (float(rate) if rate and rate > 0 else None)
        finally:
            capture.release()

    # ---- decoding ------------------------------------------------------------------------------------
    def _decode_all(self) -> Iterator[tuple[int, object]]:
        """Yield ``(source_index, frame)`` where ``frame`` converts lazily (PyAV frame or BGR array)."""
        if self.backend == "pyav":
            import av

            try:
                container = av.open(str(self.path))
            except (av.error.FFmpegError, OSError) as exc:
                raise GLUSError(f"unreadable or corrupt video: {_one_line(exc)}", self.path) from None
            try:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                index = 0
                try:
                    for frame in container.decode(stream):
                        yield index, frame
                        index += 1
                except av.error.FFmpegError as exc:
                    raise GLUSError(f"corrupt video at frame {index}: {_one_line(exc)}", self.path) from None
            finally:
                container.close()
        else:
            import cv2

            capture = cv2.VideoCapture(str(self.path))
            try:
                index = 0
                while True:
                    ok, bgr = capture.read()
                    if not ok:
                        break
                    yield index, bgr
                    index += 1
            finally:
                capture.release()

    def _to_rgb(self, frame: object) -> np.ndarray:
        if self.backend == "pyav":
            rgb = frame.to_ndarray(format="rgb24")  # type: ignore[attr-defined]
            # Display-matrix rotation (phone videos): PyAV reports the counter-clockwise angle; np.rot90 turns
            # counter-clockwise, which gives the upright picture players (and OpenCV's backend) show.
            turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # PyAV >= 13 reports it
            return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb
        import cv2

        bgr = np.asarray(frame)
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _decode_selected(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(kept_index, rgb)`` for the kept frames; frames in between are decoded but not converted."""
        wanted = iter(enumerate(self.source_indices))
        position, target = next(wanted)
        frames = self._decode_all()
        try:
            for index, frame in frames:
                if index != target:
                    continue
                yield position, self._to_rgb(frame)
                step = next(wanted, None)
                if step is None:
                    return
                position, target = step
        finally:
            frames.close()  # type: ignore[attr-defined]
        raise GLUSError(f"video ends before frame {target} although its container lists "
                        f"{self.total_frames} frames (truncated or corrupt)", self.path)

    def iter_frames(self) -> Iterator[np.ndarray]:
        size = getattr(self, "_size", None)
        for _, rgb in self._decode_selected():
            if size is not None and rgb.shape[:2] != size:
                raise GLUSError(f"frame size changes mid-stream from {size[0]}x{size[1]} to "
                                f"{rgb.shape[0]}x{rgb.shape[1]} (HxW)", self.path)
            yield rgb

    def read(self, index: int) -> np.ndarray:
        index = self._check_index(index)
        if self._cursor is None or index <= self._cursor_pos:
            self._close_cursor()
            self._cursor = self._decode_selected()
        assert self._cursor is not None
        for position, rgb in self._cursor:
            self._cursor_pos = position
            if position == index:
                return rgb
        raise GLUSError(f"frame {self.frame_names[index]} could not be decoded", self.path)

    def _close_cursor(self) -> None:
        if self._cursor is not None:
            self._cursor.close()  # type: ignore[attr-defined]
        self._cursor, self._cursor_pos = None, -1

    def close(self) -> None:
        self._close_cursor()


class _PyAVCannotOpen(Exception):
    """PyAV refused the file; the message says why (used to fall back to OpenCV)."""


def _frame_folder_files(folder: Path) -> list[Path]:
    frames: list[Path] = []
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.is_dir():
            continue
        suffix = entry.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            frames.append(entry)
        elif suffix in IGNORED_EXTENSIONS:
            logger.debug("%s: not an image, ignored", entry)
        else:
            raise GLUSError(f"not a supported frame image (expected one of "
                            f"{' '.join(sorted(IMAGE_EXTENSIONS))})", entry)
    return sorted(frames, key=lambda p: natural_key(p.name))


def _check_image_list(files: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for file in files:
        if not file.exists():
            raise GLUSError("image does not exist", file)
        if not file.is_file():
            raise GLUSError("not a file", file)
        if file.suffix.lower() not in IMAGE_EXTENSIONS:
            raise GLUSError(f"unsupported image extension '{file.suffix}' (expected one of "
                            f"{' '.join(sorted(IMAGE_EXTENSIONS))})", file)
        if file.stem in seen:  # masks are written as <stem>.png: two frames must not share a name
            raise GLUSError(f"two frames share the name '{file.stem}' (also {seen[file.stem].name})", file)
        seen[file.stem] = file


def open_video(source: str | Path | Sequence[str | Path], *, start: int = 0, stride: int = 1,
               max_frames: int | None = None, fps: float | None = None) -> VideoSource:
    """Open a video file, a folder of frames, or a list of image files.

    Args:
        source: path of a video file or frame folder, a single image, or a sequence of image paths.
        start: index (in source frames) of the first frame kept.
        stride: keep every ``stride``-th frame from ``start``.
        max_frames: keep at most this many frames (``None``: all).
        fps: playback rate of an image source at stride 1 (ignored for video files, which carry their own).

    Returns:
        A :class:`VideoSource`; close it (or use it as a context manager) when done with :meth:`read`.

    Raises:
        GLUSError: the path does not exist, has an unsupported extension, cannot be decoded, holds no frames,
            or holds frames of different sizes.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")

    if not isinstance(source, (str, Path)):
        files = [Path(p) for p in source]
        if not files:
            raise GLUSError("the list of frame images is empty")
        return _image_source(files, files[0], start, stride, max_frames, fps)

    path = Path(source)
    if not path.exists():
        raise GLUSError("path does not exist", path)
    if path.is_dir():
        files = _frame_folder_files(path)
        if not files:
            raise GLUSError(f"folder holds no frame images ({' '.join(sorted(IMAGE_EXTENSIONS))})", path)
        return _image_source(files, path, start, stride, max_frames, fps)
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return VideoFileSource(path, start=start, stride=stride, max_frames=max_frames)
    if suffix in IMAGE_EXTENSIONS:
        return _image_source([path], path, start, stride, max_frames, fps)
    raise GLUSError(f"unsupported extension '{path.suffix}' (expected a folder of frames, a video "
                    f"{' '.join(sorted(VIDEO_EXTENSIONS))} or an image {' '.join(sorted(IMAGE_EXTENSIONS))})",
                    path)


def _image_source(files: list[Path], path: Path, start: int, stride: int, max_frames: int | None,
                  fps: float | None) -> ImageSequenceSource:
    selected = _select(len(files), start, stride, max_frames)
    if len(selected) == 0:
        raise GLUSError(f"no frames selected: start={start} is past the {len(files)} frames", path)
    kept = [files[i] for i in selected]
    _check_image_list(kept)
    return ImageSequenceSource(kept, path=path, fps=None if fps is None else fps / stride,
                               source_indices=list(selected))


__all__ = [
    "IGNORED_EXTENSIONS", "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "ImageSequenceSource", "VideoFileSource",
    "VideoSource", "natural_key", "open_video", "read_image_rgb", "to_rgb_uint8",
]
