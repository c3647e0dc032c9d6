"""Random access to a video's frames without holding the video in memory.

Key-frame passes visit frames backwards, and the prompt window revisits the last few frames; a video file,
however, decodes only forwards. :class:`FrameStore` therefore decodes a video file once and spills the raw
RGB frames to a temporary file of fixed-size records, from which any frame is read back with one ``pread``.
Frame folders and in-memory lists are read directly.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from glus.data.video import ImageSequenceSource, VideoSource
from glus.errors import GLUSError


class FrameStore:
    """Frames ``0..T-1`` of one video as ``(H, W, 3)`` uint8 RGB arrays, read on demand.

    Args:
        source: a :class:`~glus.data.video.VideoSource` or a sequence of RGB arrays of one size.
        spill_dir: where a video file's frames are spilled (default: the system temp folder).
    """

    def __init__(self, source: VideoSource | Sequence[np.ndarray], spill_dir: str | Path | None = None) -> None:
        self._source: VideoSource | None = None
        self._arrays: Sequence[np.ndarray] | None = None
        self._spill: int | None = None  # file descriptor of the spilled frames
        if isinstance(source, VideoSource):
            self.frame_names = list(source.frame_names)
            self.size = tuple(source.size)
            self.fps = source.fps
            if isinstance(source, ImageSequenceSource):
                self._source = source
            else:
                self._spill_frames(source, spill_dir)
        else:
            arrays = list(source)
            if not arrays:
                raise GLUSError("the video has no frames")
            shapes = {tuple(a.shape) for a in arrays}
            if len(shapes) != 1:
                raise GLUSError(f"frames of different sizes: {sorted(shapes)}")
            (shape,) = shapes
            if len(shape) != 3 or shape[2] != 3 or arrays[0].dtype != np.uint8:
                raise GLUSError(f"frames must be (H, W, 3) uint8 RGB arrays, got {shape} {arrays[0].dtype}")
            self._arrays = arrays
            self.frame_names = [f"{i:05d}" for i in range(len(arrays))]
            self.size = shape[:2]
            self.fps = None
        if not self.frame_names:
            raise GLUSError("the video has no frames")

    def _spill_frames(self, source: VideoSource, spill_dir: str | Path | None) -> None:
        fd, path = tempfile.mkstemp(prefix="glus-frames-", suffix=".rgb", dir=spill_dir)
        os.unlink(path)  # the open descriptor keeps the data; nothing is left behind on a crash
        self._spill = fd
        height, width = self.size
        count = 0
        for frame in source.iter_frames():
            if frame.shape != (height, width, 3):
                raise GLUSError(f"frame {count} has size {frame.shape[:2]}, the first {self.size}", source.path)
            os.pwrite(fd, np.ascontiguousarray(frame).tobytes(), count * height * width * 3)
            count += 1
        if count != len(self.frame_names):
            raise GLUSError(f"decoded {count} frames, expected {len(self.frame_names)}", source.path)

    def __len__(self) -> int:
        return len(self.frame_names)

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range for {len(self)} frames")
        if self._arrays is not None:
            return self._arrays[index]
        if self._source is not None:
            return self._source.read(index)
        height, width = self.size
        nbytes = height * width * 3
        data = os.pread(self._spill, nbytes, index * nbytes)
        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)

    def close(self) -> None:
        if self._spill is not None:
            os.close(self._spill)
            self._spill = None

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
