"""LV-VIS, in its official release layout or as the MeViS-style copy VISA and GLUS train on.

Official release (YouTube-VIS 2019 format)::

    <folder>/<split>_instances.json   {"videos": [{"id", "file_names": ["00000/00000.jpg", ...], "height",
                                                    "width", "length"}],
                                       "annotations": [{"id", "video_id", "category_id",
                                                        "segmentations": [RLE or null per frame]}],
                                       "categories": [{"id", "name"}]}
    <folder>/JPEGImages/<split>/<video>/<frame>.jpg   (also accepted: <folder>/<split>/JPEGImages/...)

LV-VIS has no referring expressions: as in VISA's converted copy, a category name refers to every instance of
that category in the video, so each (video, category) pair is one expression whose text is the category name
as released (underscores kept), whose ``obj_ids`` are the instance (annotation) ids and whose ground truth is
the union of their segmentations. Expression ids number a video's categories in order of first appearance.
Segmentations are indexed by byte range and parsed on demand.

VISA / GLUS copy: ``meta_expressions.json`` + ``mask_dict.json`` in MeViS format (see
:mod:`glus.data.formats.mevis`), frames in ``JPEGImages/`` beside them or in ``<split>/JPEGImages/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from glus.data.formats._json import iter_members, read_json
from glus.data.formats._meta import frame_order
from glus.data.formats._sources import RleEntry, RleMasks, RleStore, summarize_rle_list
from glus.data.formats.mevis import attach_mask_dict, parse_mevis_meta
from glus.data.records import Dataset, Expression, Video, describe
from glus.errors import GLUSError

logger = logging.getLogger(__name__)

META = "meta_expressions.json"
MASKS = "mask_dict.json"


class LvvisDataset(Dataset):
    name = "lvvis"


def _first_dir(*candidates: Path) -> Path:
    return next((c for c in candidates if c.is_dir()), candidates[0])


def _int(value: Any, field: str, where: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GLUSError(f"{where}: \"{field}\" must be an integer, got {describe(value)}", path)
    return value


def read_instances(path: Path, split: str, image_root: Path) -> LvvisDataset:
    """Read a YouTube-VIS style ``<split>_instances.json``; see the module doc."""
    raw_videos: list = []
    categories: dict[int, str] = {}
    anns: list[tuple[int, int, int]] = []  # (annotation id, video id, category id) in file order
    entries: dict[str, RleEntry] = {}
    for m in iter_members(path, expand={"annotations"}):
        if m.key == "videos":
            if not isinstance(m.value, list):
                raise GLUSError(f"\"videos\" must be a list, got {describe(m.value)}", path)
            raw_videos = m.value
        elif m.key == "categories":
            if not isinstance(m.value, list):
                raise GLUSError(f"\"categories\" must be a list, got {describe(m.value)}", path)
            for i, c in enumerate(m.value):
                if not isinstance(c, dict) or not isinstance(c.get("name"), str):
                    raise GLUSError(f"category {i}: expected {{\"id\", \"name\"}}, got {describe(c)}", path)
                categories[_int(c.get("id"), "id", f"category {i}", path)] = c["name"]
        elif m.key == "annotations" and m.index is not None:
            a, where = m.value, f"annotation {m.index}"
            if not isinstance(a, dict):
                raise GLUSError(f"{where}: expected an object, got {describe(a)}", path)
            aid = _int(a.get("id"), "id", where, path)
            where = f"annotation {aid}"
            vid = _int(a.get("video_id"), "video_id", where, path)
            cid = _int(a.get("category_id"), "category_id", where, path)
            if str(aid) in entries:
                raise GLUSError(f"annotation id {aid} is used twice", path)
            length, size = summarize_rle_list(a.get("segmentations"), f"{path}: {where} \"segmentations\"")
            entries[str(aid)] = RleEntry(length, size, (m.start, m.end), field="segmentations")
            anns.append((aid, vid, cid))
        elif m.key == "annotations":
            raise GLUSError(f"\"annotations\" must be a list, got {describe(m.value)}", path)

    videos: dict[str, Video] = {}
    by_number: dict[int, Video] = {}
    positions: dict[str, list[int]] = {}
    for i, v in enumerate(raw_videos):
        if not isinstance(v, dict):
            raise GLUSError(f"video {i}: expected an object, got {describe(v)}", path)
        number = _int(v.get("id"), "id", f"video {i}", path)
        files = v.get("file_names")
        if not isinstance(files, list) or not files or not all(isinstance(f, str) and f for f in files):
            raise GLUSError(f"video {number}: \"file_names\" must be a non-empty list of paths, got "
                            f"{describe(files)}", path)
        parent = Path(files[0]).parent.as_posix()
        vid = parent if parent not in ("", ".") else str(number)
        names, pos = frame_order(vid, [Path(f).stem for f in files], path)
        if pos is not None:
            positions[vid] = pos
        by_file = dict(zip((Path(f).stem for f in files), files))
        h, w = v.get("height"), v.get("width")
        if h is not None or w is not None:
            h, w = _int(h, "height", f"video {number}", path), _int(w, "width", f"video {number}", path)
        if vid in videos:
            raise GLUSError(f"video {number}: folder '{vid}' is used by another video", path)
        video = Video(vid, names, [image_root / by_file[n] for n in names], {}, h, w)
        videos[vid] = video
        by_number[number] = video

    store = RleStore(path, entries)
    groups: dict[tuple[int, int], list[int]] = {}
    for aid, vnum, cid in anns:
        video = by_number.get(vnum)
        if video is None:
            raise GLUSError(f"annotation {aid} refers to unknown video id {vnum}", path)
        if cid not in categories:
            raise GLUSError(f"annotation {aid} refers to unknown category id {cid}", path)
        n = entries[str(aid)].length
        if n != len(video.frame_names):
            raise GLUSError(f"annotation {aid} has {n} segmentations but video {vnum} ('{video.video_id}') has "
                            f"{len(video.frame_names)} frames", path)
        groups.setdefault((vnum, cid), []).append(aid)
    for (vnum, cid), aids in groups.items():
        video = by_number[vnum]
        exp_id = str(len(video.expressions))
        video.expressions[exp_id] = Expression(video.video_id, exp_id, categories[cid], tuple(aids),
                                               tuple(str(a) for a in aids))
    logger.debug("%s: %d videos, %d instances grouped into %d category expressions", path, len(videos),
                 len(anns), len(groups))
    return LvvisDataset(split, path.parent, videos, RleMasks(store, positions))


def read_lvvis(split_dir: Path, split: str | None = None) -> LvvisDataset:
    """Read LV-VIS from the folder of its annotation files (either layout; ``split`` defaults to ``train``)."""
    folder = Path(split_dir)
    if (folder / META).is_file():  # VISA / GLUS copy
        split = split or ("train" if folder.name not in ("train", "val", "valid") else folder.name)
        image_root = _first_dir(folder / "JPEGImages", folder / split / "JPEGImages")
        meta_path, mask_path = folder / META, folder / MASKS
        has_masks = mask_path.is_file()
        videos, positions = parse_mevis_meta(read_json(meta_path), meta_path, image_root, need_anno_ids=has_masks)
        masks = attach_mask_dict(videos, positions, mask_path, meta_path) if has_masks else None
        return LvvisDataset(split, folder, videos, masks)
    if split is None:
        found = sorted(p.name[: -len("_instances.json")] for p in folder.glob("*_instances.json")
                       if not p.name.startswith("image_"))
        split = "train" if "train" in found or not found else found[0]
    path = folder / f"{split}_instances.json"
    if not path.is_file():
        raise GLUSError(f"no {META} nor {split}_instances.json here (give the folder of the LV-VIS annotation "
                        f"files)", folder)
    image_root = _first_dir(folder / "JPEGImages" / split, folder / split / "JPEGImages", folder / split)
    return read_instances(path, split, image_root)
