"""ReVOS (``train`` / ``valid``, as released with VISA): MeViS-style masks plus expression types.

Official layout (one folder for every split)::

    ReVOS/meta_expressions_<split>_.json  {"videos": {vid: {"height": H, "width": W, "frames": [...],
                                             "expressions": {exp_id: {"exp", "obj_id", "anno_id",
                                                                      "type_id"}}}}}
    ReVOS/mask_dict.json                  {anno_id: [RLE or null per frame]}   (train and valid together)
    ReVOS/mask_dict_foreground.json       {vid: {"masks_rle": [RLE per frame], "foreground_ratio": [...]}}
    ReVOS/JPEGImages/<vid>/<frame>.jpg

``type_id``: 0 referring, 1 reasoning, 2 no target (``anno_id`` empty: the ground truth is empty on every
frame). The foreground masks (every annotated object of the video) feed the evaluator's robustness score R.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glus.data.formats._json import iter_members, load_span, read_json
from glus.data.formats.mevis import attach_mask_dict, parse_mevis_meta
from glus.data.masks import decode_rle
from glus.data.records import Dataset, LRUCache, Video
from glus.errors import GLUSError

MASKS = "mask_dict.json"
FOREGROUND = "mask_dict_foreground.json"


def meta_name(split: str) -> str:
    return f"meta_expressions_{split}_.json"


class RevosDataset(Dataset):
    name = "revos"

    def __init__(self, split: str, root: Path, videos: dict[str, Video], masks, foreground_path: Path | None):
        super().__init__(split, root, videos, masks)
        self.foreground_path = foreground_path
        self._fg_spans: dict[str, tuple[int, int]] | None = None
        self._fg_cache: LRUCache[str, list] = LRUCache(8)

    def _foreground_rles(self, video_id: str) -> list:
        if self.foreground_path is None:
            raise GLUSError(f"no {FOREGROUND} beside the annotations", self.root)
        path = self.foreground_path
        if self._fg_spans is None:  # indexed on first use: only the evaluator needs it
            self._fg_spans = {m.key: (m.start, m.end) for m in iter_members(path)}
        if video_id not in self._fg_spans:
            raise GLUSError(f"no foreground masks for video '{video_id}'", path)

        def load() -> list:
            entry = load_span(path, *self._fg_spans[video_id])
            rles = entry.get("masks_rle") if isinstance(entry, dict) else None
            n = len(self.videos[video_id].frame_names)
            if not isinstance(rles, list) or len(rles) != n:
                got = f"{len(rles)} masks" if isinstance(rles, list) else "no \"masks_rle\" list"
                raise GLUSError(f"video '{video_id}': {got} for {n} frames", path)
            return rles

        return self._fg_cache.get_or_create(video_id, load)

    def foreground_mask(self, video_id: str, frame_index: int) -> np.ndarray:
        """Foreground of one frame (every annotated object of the video) from ``mask_dict_foreground.json``.

        Returns:
            ``(H, W)`` ``uint8``: the number of stored foreground RLEs covering each pixel. The released file
            holds one RLE per frame, so this is 0/1; when a frame holds a list of RLEs the official
            evaluator *sums* them, and so does this (``> 0`` gives the union).
        """
        video = self.video(video_id)
        self._check_frame(video, frame_index)
        hw = self._frame_hw(video)
        positions = self.masks.positions.get(video_id) if self.masks is not None else None
        rle = self._foreground_rles(video_id)[positions[frame_index] if positions else frame_index]
        where = f"{self.foreground_path}: video '{video_id}', frame {frame_index}"
        if rle is None:
            return np.zeros(hw, dtype=np.uint8)
        parts = rle if isinstance(rle, list) else [rle]
        out = np.zeros(hw, dtype=np.uint8)
        for part in parts:
            out += decode_rle(part, hw, where)
        return out


def _resolve(split_dir: Path, split: str | None) -> tuple[Path, str]:
    if split is not None:
        if not (split_dir / meta_name(split)).is_file():
            raise GLUSError(f"no {meta_name(split)} here (give the ReVOS folder)", split_dir)
        return split_dir, split
    if (split_dir / meta_name("valid")).is_file():
        return split_dir, "valid"
    found = sorted(p.name for p in split_dir.glob("meta_expressions_*_.json"))
    if len(found) == 1:
        return split_dir, found[0][len("meta_expressions_"):-len("_.json")]
    if not found:
        raise GLUSError("no meta_expressions_<split>_.json here (give the ReVOS folder)", split_dir)
    raise GLUSError(f"several splits here ({', '.join(found)}): name one", split_dir)


def read_revos(split_dir: Path, split: str | None = None) -> RevosDataset:
    """Read a ReVOS split from the ReVOS folder (``split`` defaults to ``valid``)."""
    root, split = _resolve(Path(split_dir), split)
    meta_path = root / meta_name(split)
    mask_path = root / MASKS
    has_masks = mask_path.is_file()
    videos, positions = parse_mevis_meta(read_json(meta_path), meta_path, root / "JPEGImages", type_ids=True,
                                         need_anno_ids=has_masks)
    masks = attach_mask_dict(videos, positions, mask_path, meta_path) if has_masks else None
    fg = root / FOREGROUND
    return RevosDataset(split, root, videos, masks, fg if fg.is_file() else None)
