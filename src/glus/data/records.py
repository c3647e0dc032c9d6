"""The data model every dataset reader produces: videos, expressions, and ground truth on demand.

* :class:`Expression` - one referring expression: its text, the objects it refers to and the annotation ids
  whose masks form its ground truth (the union over them).
* :class:`Video` - ordered frame names and image paths, the expressions of the video, and its frame size when
  the annotation files state it.
* :class:`Dataset` - one split of one dataset. Ground truth is produced per frame on demand through a
  :class:`MaskSource`; no reader decodes (or even parses) a whole split's masks up front.

Frame order is the order of the frame names, sorted as strings, which is what every official loader does
(MeViS, Ref-YouTube-VOS, ReVOS, LV-VIS loaders all call ``sorted(frames)``); mask lists stored per frame are
looked up through the frame's position in the annotation file, so a file whose frame list is not sorted
still pairs every mask with the right frame.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Hashable, Iterator, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from glus.errors import GLUSError

__all__ = ["Expression", "Video", "Dataset", "MaskSource", "LRUCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Expression:
    """One referring expression of one video.

    Attributes:
        video_id: id of the video (its folder name under ``JPEGImages``).
        exp_id: id of the expression within the video, as the annotation file spells it (a string).
        text: the expression, exactly as stored (no lower-casing or punctuation clean-up here).
        obj_ids: object ids as the dataset gives them (``int`` for MeViS / ReVOS, ``str`` for Ref-YouTube-VOS
            and Ref-DAVIS17).
        anno_ids: annotation ids (keys of a ``mask_dict``) whose masks' union is the ground truth; ``()``
            where masks come from palette PNGs (the object ids are then the pixel values) or where the
            expression has no target (ReVOS ``type_id`` 2).
        type_id: ReVOS only: 0 referring, 1 reasoning, 2 no target; ``None`` elsewhere.
    """

    video_id: str
    exp_id: str
    text: str
    obj_ids: tuple
    anno_ids: tuple[str, ...] = ()
    type_id: int | None = None

    @property
    def key(self) -> str:
        """``f"{video_id}_{exp_id}"``: the key evaluators and key-frame files use."""
        return f"{self.video_id}_{self.exp_id}"


@dataclass
class Video:
    """One video of a split.

    Attributes:
        video_id: folder name of the video.
        frame_names: frame names without extension (``"00000"``), in temporal order; ``T = len(frame_names)``.
        frame_paths: image file of each frame (``T`` paths); they are not required to exist (annotation-only
            copies of a split are valid input).
        expressions: ``exp_id -> Expression``, in file order.
        height, width: frame size when the annotation file states it (ReVOS, LV-VIS); otherwise ``None`` and
            :meth:`Dataset.frame_size` finds it from the first frame or the first mask.
    """

    video_id: str
    frame_names: list[str]
    frame_paths: list[Path]
    expressions: dict[str, Expression] = field(default_factory=dict)
    height: int | None = None
    width: int | None = None

    def __len__(self) -> int:
        return len(self.frame_names)


class LRUCache(Generic[K, V]):
    """A small thread-safe least-recently-used cache (``get_or_create``) that pickles without its lock."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("LRUCache capacity must be >= 1")
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_create(self, key: K, create: Callable[[], V]) -> V:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = create()  # outside the lock: creation may read files
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __getstate__(self) -> dict:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["capacity"])


class MaskSource(ABC):
    """Where a dataset's ground truth lives; gives the per-annotation masks of one expression on one frame."""

    where: str  # the file or folder the masks come from, named in error messages

    @abstractmethod
    def annotation_masks(self, video: Video, expression: Expression, frame_index: int,
                         frame_hw: tuple[int, int]) -> np.ndarray:
        """Return the masks of the expression's annotations on frame ``frame_index``.

        Returns:
            ``(N, H, W)`` bool, one mask per annotation (N >= 0; an empty annotation is all False).
        """

    def size_hint(self, video: Video) -> tuple[int, int] | None:
        """The frame size ``(H, W)`` as the stored masks of ``video`` state it, or ``None`` if they cannot."""
        return None


class Dataset:
    """One split of one dataset: videos, expressions, and ground-truth masks produced on demand.

    Subclasses (one per format, in :mod:`glus.data.formats`) fill ``videos`` and set a :class:`MaskSource`;
    splits without ground truth (MeViS ``valid``, Ref-YouTube-VOS ``valid``) have none, and asking for their
    masks raises :class:`GLUSError`.
    """

    name: str = "dataset"

    def __init__(self, split: str, root: Path, videos: dict[str, Video],
                 masks: MaskSource | None = None) -> None:
        self.split = split
        self.root = Path(root)
        self.videos = videos
        self.masks = masks
        self._sizes: dict[str, tuple[int, int] | None] = {}

    # ------------------------------------------------------------------ records
    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, root='{self.root}', videos={len(self.videos)}, "
                f"expressions={self.num_expressions}, ground_truth={self.has_ground_truth})")

    @property
    def num_expressions(self) -> int:
        return sum(len(v.expressions) for v in self.videos.values())

    @property
    def has_ground_truth(self) -> bool:
        return self.masks is not None

    def expressions(self) -> Iterator[Expression]:
        """All expressions, video by video in file order, then in file order within the video."""
        for video in self.videos.values():
            yield from video.expressions.values()

    def video(self, video_id: str) -> Video:
        try:
            return self.videos[video_id]
        except KeyError:
            raise GLUSError(f"no video '{video_id}' in {self.name} {self.split}", self.root) from None

    def expression(self, video_id: str, exp_id: str) -> Expression:
        video = self.video(video_id)
        try:
            return video.expressions[str(exp_id)]
        except KeyError:
            raise GLUSError(f"video '{video_id}' of {self.name} {self.split} has no expression '{exp_id}'",
                            self.root) from None

    # ------------------------------------------------------------------ frame size
    def frame_size(self, video_id: str) -> tuple[int, int] | None:
        """``(H, W)`` of the video's frames, or ``None`` if neither annotations nor frames tell it.

        Taken, in order, from the annotation file's per-video height/width, the header of the first frame
        image (when it exists), then the stored masks. Cached per video.
        """
        if video_id in self._sizes:
            return self._sizes[video_id]
        video = self.video(video_id)
        size: tuple[int, int] | None = None
        if video.height is not None and video.width is not None:
            size = (int(video.height), int(video.width))
        elif video.frame_paths and video.frame_paths[0].is_file():
            try:
                with Image.open(video.frame_paths[0]) as im:
                    size = (im.height, im.width)
            except (UnidentifiedImageError, OSError) as exc:
                raise GLUSError(f"cannot read frame: {exc}", video.frame_paths[0]) from None
        elif self.masks is not None:
            size = self.masks.size_hint(video)
        self._sizes[video_id] = size
        return size

    # ------------------------------------------------------------------ ground truth
    def _require_masks(self) -> MaskSource:
        if self.masks is None:
            raise GLUSError(f"the {self.name} {self.split} split has no ground-truth masks", self.root)
        return self.masks

    def _frame_hw(self, video: Video) -> tuple[int, int]:
        hw = self.frame_size(video.video_id)
        if hw is None:
            raise GLUSError(f"cannot tell the frame size of video '{video.video_id}': no height/width in the "
                            f"annotations, no frame images and no stored mask", self.root)
        return hw

    def _check_frame(self, video: Video, frame_index: int) -> None:
        if not 0 <= frame_index < len(video.frame_names):
            raise IndexError(f"frame index {frame_index} out of range for video '{video.video_id}' "
                             f"({len(video.frame_names)} frames)")

    def annotation_masks(self, video_id: str, exp_id: str, frame_index: int) -> np.ndarray:
        """Per-annotation ground truth of one expression on one frame.

        Returns:
            ``(N, H, W)`` bool, one mask per annotation of the expression (``N = 0`` for a no-target
            expression). Evaluators that reproduce official code which *adds* masks (``uint8`` sums) use
            this; everything else uses :meth:`gt_mask`.
        """
        source = self._require_masks()
        video = self.video(video_id)
        expression = self.expression(video_id, exp_id)
        frame_index = int(frame_index)
        self._check_frame(video, frame_index)
        return source.annotation_masks(video, expression, frame_index, self._frame_hw(video))

    def gt_mask(self, video_id: str, exp_id: str, frame_index: int) -> np.ndarray:
        """Ground truth of one expression on one frame: the union over its annotations, ``(H, W)`` bool."""
        masks = self.annotation_masks(video_id, exp_id, frame_index)
        if masks.shape[0] == 0:
            return np.zeros(masks.shape[1:], dtype=bool)
        return masks.any(axis=0)

    def gt_masks(self, video_id: str, exp_id: str) -> np.ndarray:
        """Ground truth of one expression on every frame of its video, ``(T, H, W)`` bool."""
        video = self.video(video_id)
        self._require_masks()
        hw = self._frame_hw(video)
        out = np.zeros((len(video.frame_names), *hw), dtype=bool)
        for t in range(len(video.frame_names)):
            out[t] = self.gt_mask(video_id, exp_id, t)
        return out


def describe(value: Any, limit: int = 60) -> str:
    """Short ``repr`` of a JSON value for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
