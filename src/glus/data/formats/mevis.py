"""MeViS (``train`` / ``valid_u`` / ``valid``), and the MeViS-style ``mask_dict`` layout other datasets share.

Official layout (one folder per split)::

    <split>/meta_expressions.json   {"videos": {vid: {"frames": [...], "expressions":
                                        {exp_id: {"exp": str, "obj_id": [int], "anno_id": [int]}}}}}
    <split>/mask_dict.json          {anno_id: [RLE or null, one per frame]}   (train and valid_u only)
    <split>/JPEGImages/<vid>/<frame>.jpg

The ground truth of an expression on a frame is the union of ``mask_dict[str(anno_id)][frame]`` over its
``anno_id`` list; ``null`` is an empty mask. ``valid`` has no ``mask_dict.json`` (it is scored by the
server), so its dataset has no ground truth.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from glus.data.formats._json import iter_members, read_json
from glus.data.formats._meta import (frame_order, frame_paths, id_list, size_of, text_of, video_dict,
                                     videos_of)
from glus.data.formats._sources import RleEntry, RleMasks, RleStore, check_rle_lengths, summarize_rle_list
from glus.data.records import Dataset, Expression, Video
from glus.errors import GLUSError

logger = logging.getLogger(__name__)

META = "meta_expressions.json"
MASKS = "mask_dict.json"


class MevisDataset(Dataset):
    name = "mevis"


def index_mask_dict(path: Path) -> RleStore:
    """Index a ``mask_dict.json`` (``anno_id -> per-frame RLE list``) without keeping its masks."""
    entries: dict[str, RleEntry] = {}
    for member in iter_members(path):
        length, size = summarize_rle_list(member.value, f"{path}: annotation '{member.key}'")
        entries[member.key] = RleEntry(length, size, (member.start, member.end))
    logger.debug("indexed %d annotations in %s", len(entries), path)
    return RleStore(path, entries)


def parse_mevis_meta(meta: Any, meta_path: Path, image_root: Path, *, type_ids: bool = False,
                     need_anno_ids: bool = True) -> tuple[dict[str, Video], dict[str, list[int]]]:
    """Videos and expressions of a MeViS-style meta file.

    Args:
        meta: the parsed ``meta_expressions*.json``.
        meta_path: its path (for messages).
        image_root: the ``JPEGImages`` folder.
        type_ids: read ReVOS's per-expression ``type_id`` (0, 1 or 2) and per-video ``height``/``width``.
        need_anno_ids: every expression must list ``anno_id`` (splits with a mask_dict).

    Returns:
        ``(videos, positions)``: positions maps a video whose file frame order is not sorted to the file
        position of each sorted frame (see :func:`frame_order`).
    """
    videos: dict[str, Video] = {}
    positions: dict[str, list[int]] = {}
    for vid, vdata in videos_of(meta, meta_path).items():
        vdata = video_dict(vid, vdata, meta_path)
        names, pos = frame_order(vid, vdata.get("frames"), meta_path)
        if pos is not None:
            positions[vid] = pos
        height, width = size_of(vdata, vid, meta_path) if type_ids else (None, None)
        exps = vdata.get("expressions")
        if not isinstance(exps, dict):
            raise GLUSError(f"video '{vid}': \"expressions\" must be an object of exp_id -> expression", meta_path)
        expressions: dict[str, Expression] = {}
        for exp_id, edata in exps.items():
            where = f"video '{vid}', expression '{exp_id}'"
            if not isinstance(edata, dict):
                raise GLUSError(f"{where}: expected an object, got {type(edata).__name__}", meta_path)
            text = text_of(edata, "exp", where, meta_path)
            obj_ids = id_list(edata.get("obj_id", []), "obj_id", where, meta_path)
            if "anno_id" not in edata and need_anno_ids:
                raise GLUSError(f"{where}: no \"anno_id\" list (needed to find its masks)", meta_path)
            anno_ids = tuple(str(a) for a in id_list(edata.get("anno_id", []), "anno_id", where, meta_path))
            type_id = None
            if type_ids and "type_id" in edata:
                type_id = edata["type_id"]
                if type_id not in (0, 1, 2) or isinstance(type_id, bool):
                    raise GLUSError(f"{where}: \"type_id\" must be 0 (referring), 1 (reasoning) or 2 (no "
                                    f"target), got {type_id!r}", meta_path)
            expressions[str(exp_id)] = Expression(vid, str(exp_id), text, obj_ids, anno_ids, type_id)
        videos[vid] = Video(vid, names, frame_paths(image_root, vid, names), expressions, height, width)
    return videos, positions


def attach_mask_dict(videos: dict[str, Video], positions: dict[str, list[int]], mask_path: Path,
                     meta_path: Path) -> RleMasks:
    """Index ``mask_dict.json`` and check every expression's annotations against it (ids and lengths)."""
    store = index_mask_dict(mask_path)
    for video in videos.values():
        for expression in video.expressions.values():
            check_rle_lengths(store, video, expression, meta_path)
    return RleMasks(store, positions)


def _resolve(split_dir: Path, split: str | None) -> tuple[Path, str]:
    if (split_dir / META).is_file():
        return split_dir, split or split_dir.name
    if split and (split_dir / split / META).is_file():
        return split_dir / split, split
    raise GLUSError(f"no {META} here (give the split folder, e.g. mevis/valid_u, or the MeViS root and a split)",
                    split_dir)


def read_mevis(split_dir: Path, split: str | None = None) -> MevisDataset:
    """Read a MeViS split from its folder (or the MeViS root plus ``split``)."""
    folder, split = _resolve(Path(split_dir), split)
    meta_path = folder / META
    mask_path = folder / MASKS
    has_masks = mask_path.is_file()
    videos, positions = parse_mevis_meta(read_json(meta_path), meta_path, folder / "JPEGImages",
                                         need_anno_ids=has_masks)
    masks = attach_mask_dict(videos, positions, mask_path, meta_path) if has_masks else None
    if masks is None:
        logger.info("%s: no %s, split '%s' has no ground truth", folder, MASKS, split)
    return MevisDataset(split, folder, videos, masks)
