"""Mask sources: where each format keeps its ground truth, read lazily.

* :class:`RleStore` + :class:`RleMasks` - ``anno_id -> per-frame list of COCO RLE or null`` (MeViS, ReVOS and
  LV-VIS ``mask_dict.json``, LV-VIS ``*_instances.json`` segmentations, Ref-DAVIS17 / Ref-YouTube-VOS
  ``mask_dict.pkl``). JSON stores are indexed by byte range and each annotation's list is parsed when first
  needed (small LRU), so a split's masks are never all in memory.
* :class:`PaletteMasks` - ``Annotations/<video>/<frame>.png`` palette PNGs whose pixel value is the object id
  (Ref-YouTube-VOS, Ref-DAVIS17).
* :class:`BinaryPngMasks` - one folder of 0/255 PNGs per expression target (ReasonVOS).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from glus.data.formats._json import load_span
from glus.data.masks import decode_rle, read_mask_png, rle_size
from glus.data.records import Expression, LRUCache, MaskSource, Video
from glus.errors import GLUSError

__all__ = ["RleEntry", "RleStore", "RleMasks", "PaletteMasks", "BinaryPngMasks", "load_mask_pickle",
           "summarize_rle_list"]


@dataclass(frozen=True)
class RleEntry:
    """What the index knows about one annotation without keeping its masks.

    Attributes:
        length: number of per-frame items in the annotation's list.
        size: ``(H, W)`` of its first non-null RLE, ``None`` if every frame is empty.
        span: byte range of the value in the JSON file, or ``None`` when the store holds lists in memory.
        field: when the span holds an object (an LV-VIS annotation), the key of the per-frame list in it.
    """

    length: int
    size: tuple[int, int] | None
    span: tuple[int, int] | None = None
    field: str | None = None


def summarize_rle_list(value: Any, where: str) -> tuple[int, tuple[int, int] | None]:
    """Check that ``value`` is a per-frame list of RLE-or-null; return its length and first RLE size."""
    if not isinstance(value, list):
        raise GLUSError(f"{where}: expected a list with one RLE (or null) per frame, got {type(value).__name__}")
    for t, item in enumerate(value):
        if item is None or item == []:  # absent on this frame
            continue
        rle = item[0] if isinstance(item, list) else item  # a list of RLE parts shares one size
        return len(value), rle_size(rle, f"{where}, frame {t}")
    return len(value), None


class RleStore:
    """``anno_id -> per-frame RLE list``, from a JSON file indexed by byte range or from memory."""

    def __init__(self, path: Path, entries: dict[str, RleEntry], memory: dict[str, list] | None = None,
                 cache_size: int = 64) -> None:
        self.path = Path(path)
        self.entries = entries
        self._memory = memory
        self._cache: LRUCache[str, list] = LRUCache(cache_size)

    def __contains__(self, anno_id: object) -> bool:
        return anno_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, anno_id: str) -> RleEntry:
        return self.entries[anno_id]

    def frames(self, anno_id: str) -> list:
        """The per-frame list of annotation ``anno_id`` (parsed on first use, then cached)."""
        if self._memory is not None:
            return self._memory[anno_id]
        return self._cache.get_or_create(anno_id, lambda: self._load(anno_id))

    def _load(self, anno_id: str) -> list:
        entry = self.entries[anno_id]
        value = load_span(self.path, *entry.span)
        if entry.field is not None:
            value = value[entry.field]
        if not isinstance(value, list) or len(value) != entry.length:
            raise GLUSError(f"annotation file changed after it was indexed (annotation '{anno_id}')", self.path)
        return value


class RleMasks(MaskSource):
    """Ground truth as per-frame RLE lists keyed by the expressions' ``anno_ids``.

    Args:
        store: the annotation lists.
        positions: ``video_id -> list`` giving, for each frame in :class:`Video` order, its position in the
            annotation file's frame list (the index into every mask list); videos whose file order is already
            sorted are absent.
    """

    def __init__(self, store: RleStore, positions: dict[str, list[int]] | None = None) -> None:
        self.store = store
        self.where = str(store.path)
        self.positions = positions or {}

    def annotation_masks(self, video: Video, expression: Expression, frame_index: int,
                         frame_hw: tuple[int, int]) -> np.ndarray:
        pos = self.positions.get(video.video_id)
        item_index = pos[frame_index] if pos is not None else frame_index
        out = np.zeros((len(expression.anno_ids), *frame_hw), dtype=bool)
        for i, anno_id in enumerate(expression.anno_ids):
            rle = self.store.frames(anno_id)[item_index]
            if rle is not None:
                where = (f"{self.store.path}: annotation '{anno_id}', frame {frame_index} "
                         f"('{video.frame_names[frame_index]}') of video '{video.video_id}'")
                out[i] = decode_rle(rle, frame_hw, where)
        return out

    def size_hint(self, video: Video) -> tuple[int, int] | None:
        for expression in video.expressions.values():
            for anno_id in expression.anno_ids:
                size = self.store.entry(anno_id).size
                if size is not None:
                    return size
        return None


def check_rle_lengths(store: RleStore, video: Video, expression: Expression, meta_path: Path) -> None:
    """Every annotation of ``expression`` exists in ``store`` and has one item per frame of ``video``."""
    for anno_id in expression.anno_ids:
        if anno_id not in store:
            raise GLUSError(f"unknown annotation id '{anno_id}' in expression '{expression.exp_id}' of video "
                            f"'{video.video_id}' (listed in {meta_path.name})", store.path)
        n = store.entry(anno_id).length
        if n != len(video.frame_names):
            raise GLUSError(f"annotation '{anno_id}' has {n} masks but video '{video.video_id}' has "
                            f"{len(video.frame_names)} frames (expression '{expression.exp_id}')", store.path)


class PaletteMasks(MaskSource):
    """``<folder>/<video>/<frame>.png`` palette (or grayscale) PNGs; pixel value = object id."""

    def __init__(self, folder: Path, cache_size: int = 16) -> None:
        self.folder = Path(folder)
        self.where = str(folder)
        self._cache: LRUCache[tuple[str, int], np.ndarray] = LRUCache(cache_size)

    def _png(self, video: Video, frame_index: int) -> Path:
        return self.folder / video.video_id / f"{video.frame_names[frame_index]}.png"

    def _indices(self, video: Video, frame_index: int, frame_hw: tuple[int, int] | None) -> np.ndarray:
        def read() -> np.ndarray:
            path = self._png(video, frame_index)
            if not path.is_file():
                raise GLUSError(f"missing annotation of frame '{video.frame_names[frame_index]}' "
                                f"(index {frame_index}) of video '{video.video_id}'", path)
            return read_mask_png(path, indices=True, expected_hw=frame_hw,
                                 where=f"video '{video.video_id}', frame {frame_index}")

        return self._cache.get_or_create((video.video_id, frame_index), read)

    @staticmethod
    def object_value(obj_id: Any, video: Video, expression: Expression) -> int:
        try:
            value = int(obj_id)
        except (TypeError, ValueError):
            value = -1
        if not 0 <= value <= 255:
            raise GLUSError(f"object id {obj_id!r} of expression '{expression.exp_id}' of video "
                            f"'{video.video_id}' is not a palette index (0-255)")
        return value

    def annotation_masks(self, video: Video, expression: Expression, frame_index: int,
                         frame_hw: tuple[int, int]) -> np.ndarray:
        values = [self.object_value(o, video, expression) for o in expression.obj_ids]
        if not values:
            return np.zeros((0, *frame_hw), dtype=bool)
        indices = self._indices(video, frame_index, frame_hw)
        return np.stack([indices == v for v in values])

    def size_hint(self, video: Video) -> tuple[int, int] | None:
        if not video.frame_names or not self._png(video, 0).is_file():
            return None
        return self._indices(video, 0, None).shape


class BinaryPngMasks(MaskSource):
    """One folder of foreground PNGs (value > 0) per expression target, named by ``folder_of``."""

    def __init__(self, folder: Path, folder_of: Callable[[Video, Expression], str], cache_size: int = 16) -> None:
        self.folder = Path(folder)
        self.where = str(folder)
        self.folder_of = folder_of
        self._cache: LRUCache[Path, np.ndarray] = LRUCache(cache_size)

    def _png(self, video: Video, expression: Expression, frame_index: int) -> Path:
        return self.folder / self.folder_of(video, expression) / f"{video.frame_names[frame_index]}.png"

    def annotation_masks(self, video: Video, expression: Expression, frame_index: int,
                         frame_hw: tuple[int, int]) -> np.ndarray:
        path = self._png(video, expression, frame_index)

        def read() -> np.ndarray:
            if not path.is_file():
                raise GLUSError(f"missing annotation of frame '{video.frame_names[frame_index]}' (index "
                                f"{frame_index}) for expression '{expression.exp_id}' of video "
                                f"'{video.video_id}'", path)
            return read_mask_png(path, expected_hw=frame_hw,
                                 where=f"expression '{expression.exp_id}' of video '{video.video_id}'")

        return self._cache.get_or_create(path, read)[None]

    def size_hint(self, video: Video) -> tuple[int, int] | None:
        for expression in video.expressions.values():
            path = self._png(video, expression, 0)
            if path.is_file():
                return read_mask_png(path).shape
        return None


class _MaskUnpickler(pickle.Unpickler):
    """Unpickler for mask files: plain containers only (no class is ever imported, so no code can run)."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: mask files hold only dicts and lists")


def load_mask_pickle(path: Path) -> dict:
    """Load a VISA-style ``mask_dict.pkl`` (``str -> list of RLE dict or None``) without executing code."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise GLUSError("mask file not found", path) from None
    try:
        value = _MaskUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, ImportError) as exc:
        raise GLUSError(f"not a readable mask pickle: {exc}", path) from None
    if not isinstance(value, dict):
        raise GLUSError(f"expected a dict of per-frame mask lists, got {type(value).__name__}", path)
    return value
