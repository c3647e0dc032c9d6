"""Ref-YouTube-VOS and Ref-DAVIS17 in their official (ReferFormer) layout.

::

    <root>/meta_expressions/<split>/meta_expressions.json
        {"videos": {vid: {"frames": [...], "expressions": {exp_id: {"exp": str, "obj_id": "1"}}}}}
    <root>/<split>/JPEGImages/<vid>/<frame>.jpg
    <root>/<split>/Annotations/<vid>/<frame>.png   palette PNG, pixel value = object id
    <root>/<split>/mask_dict.pkl                    (VISA / GLUS evaluation copy, optional)

Ground truth comes from ``mask_dict.pkl`` when the split folder holds one (how VISA and GLUS score
Ref-DAVIS17: one entry per expression, ``str(i)`` where ``i`` numbers the expressions with videos sorted and,
within a video, expression ids sorted as strings; each a per-frame list of COCO RLE or ``None``), otherwise
from the palette PNGs (``Annotations/``: the expression's mask is ``png == int(obj_id)``). ``masks="pkl"``
or ``masks="png"`` forces one source.

Ref-YouTube-VOS ``valid``: the competition's valid meta lists 507 videos, the 202 validation videos and the
305 test videos. The test videos are exactly those of ``meta_expressions/test/meta_expressions.json`` (part of
the official meta download; ReferFormer and the GLUS / VISA evaluation code remove them the same way), so the
reader drops them and requires that file; ``test_meta=`` names another copy and ``keep_test_videos=True``
keeps all 507. The valid split has no public ground truth (it is scored by the server).
"""

from __future__ import annotations

import logging
from pathlib import Path

from glus.data.formats._json import read_json
from glus.data.formats._meta import frame_order, frame_paths, text_of, video_dict, videos_of
from glus.data.formats._sources import RleEntry, RleMasks, RleStore, PaletteMasks, check_rle_lengths
from glus.data.formats._sources import load_mask_pickle, summarize_rle_list
from glus.data.records import Dataset, Expression, Video
from glus.errors import GLUSError

logger = logging.getLogger(__name__)

META = "meta_expressions.json"
PICKLE = "mask_dict.pkl"
ANNOTATIONS = "Annotations"


class RefYouTubeVOSDataset(Dataset):
    name = "refytvos"


class RefDavis17Dataset(Dataset):
    name = "davis17"


def resolve(split_dir: Path, split: str | None) -> tuple[Path, str, Path]:
    """``(split folder, split, meta file)`` from the dataset root plus a split, or from the split folder.

    Accepted: ``root`` (+ ``split``, default ``valid``) holding ``meta_expressions/<split>/``; the split folder
    ``root/<split>`` (its name is the split unless ``split`` is given); a split folder holding its own
    ``meta_expressions.json``.
    """
    if (split_dir / "meta_expressions").is_dir():
        split = split or "valid"
        meta = split_dir / "meta_expressions" / split / META
        if not meta.is_file():
            raise GLUSError(f"no meta_expressions/{split}/{META} here", split_dir)
        return split_dir / split, split, meta
    split = split or split_dir.name
    for meta in (split_dir.parent / "meta_expressions" / split / META, split_dir / META):
        if meta.is_file():
            return split_dir, split, meta
    raise GLUSError(f"no meta_expressions/{split}/{META} beside this folder nor {META} in it (give the dataset "
                    f"root and a split, or the split folder)", split_dir)


def test_video_ids(meta_path: Path, split: str, test_meta: Path | None) -> set[str]:
    """Ids of the 305 test videos that the Ref-YouTube-VOS valid meta also lists."""
    path = Path(test_meta) if test_meta is not None else meta_path.parent.parent / "test" / META
    if not path.is_file():
        raise GLUSError(f"the Ref-YouTube-VOS {split} meta also lists the 305 test videos, which are identified "
                        f"by the test meta file; it is missing (pass test_meta=... or keep_test_videos=True)",
                        path)
    return set(videos_of(read_json(path), path))


def read_referformer(cls: type[Dataset], split_dir: Path, split: str | None = None, *, masks: str = "auto",
                     test_meta: Path | None = None, keep_test_videos: bool = False) -> Dataset:
    if masks not in ("auto", "pkl", "png"):
        raise GLUSError(f"masks must be 'auto', 'pkl' or 'png', got {masks!r}")
    folder, split, meta_path = resolve(Path(split_dir), split)
    raw = videos_of(read_json(meta_path), meta_path)

    # VISA's mask_dict.pkl numbers the expressions of the whole meta file (test videos included).
    anno_of: dict[tuple[str, str], str] = {}
    for vid in sorted(raw):
        exps = video_dict(vid, raw[vid], meta_path).get("expressions")
        if not isinstance(exps, dict):
            raise GLUSError(f"video '{vid}': \"expressions\" must be an object of exp_id -> expression", meta_path)
        for exp_id in sorted(str(e) for e in exps):
            anno_of[(vid, exp_id)] = str(len(anno_of))

    pkl = folder / PICKLE
    png = folder / ANNOTATIONS
    use_pkl = masks == "pkl" or (masks == "auto" and pkl.is_file())
    use_png = not use_pkl and (masks == "png" or png.is_dir())
    if masks == "pkl" and not pkl.is_file():
        raise GLUSError("mask file not found", pkl)
    if masks == "png" and not png.is_dir():
        raise GLUSError("annotation folder not found", png)

    exclude: set[str] = set()
    if cls is RefYouTubeVOSDataset and split == "valid" and not keep_test_videos:
        exclude = test_video_ids(meta_path, split, test_meta)

    videos: dict[str, Video] = {}
    positions: dict[str, list[int]] = {}
    for vid, vdata in raw.items():
        if vid in exclude:
            continue
        names, pos = frame_order(vid, vdata.get("frames"), meta_path)
        if pos is not None:
            positions[vid] = pos
        expressions: dict[str, Expression] = {}
        for exp_id, edata in vdata["expressions"].items():
            exp_id = str(exp_id)
            where = f"video '{vid}', expression '{exp_id}'"
            if not isinstance(edata, dict):
                raise GLUSError(f"{where}: expected an object, got {type(edata).__name__}", meta_path)
            text = text_of(edata, "exp", where, meta_path)
            obj_id = edata.get("obj_id")
            if use_png and (obj_id is None or isinstance(obj_id, (list, dict, bool))):
                raise GLUSError(f"{where}: \"obj_id\" must be one object id (the pixel value in {ANNOTATIONS}), "
                                f"got {obj_id!r}", meta_path)
            obj_ids = () if obj_id is None else (obj_id,)
            anno_ids = (anno_of[(vid, exp_id)],) if use_pkl else ()
            expressions[exp_id] = Expression(vid, exp_id, text, obj_ids, anno_ids)
        videos[vid] = Video(vid, names, frame_paths(folder / "JPEGImages", vid, names), expressions)
    if exclude:
        logger.info("%s: removed %d test videos listed in the %s meta; %d remain", meta_path,
                    len(set(raw) & exclude), split, len(videos))
        if len(raw) == 507 and len(videos) != 202:  # the released valid meta: 202 valid + 305 test videos
            logger.warning("%s: expected 202 validation videos after removing the test videos, got %d",
                           meta_path, len(videos))

    source = None
    if use_pkl:
        data = load_mask_pickle(pkl)
        entries = {}
        for key, value in data.items():
            length, size = summarize_rle_list(value, f"{pkl}: entry '{key}'")
            entries[str(key)] = RleEntry(length, size)
        store = RleStore(pkl, entries, memory={str(k): v for k, v in data.items()})
        for video in videos.values():
            for expression in video.expressions.values():
                check_rle_lengths(store, video, expression, meta_path)
        source = RleMasks(store, positions)
    elif use_png:
        source = PaletteMasks(png)
    return cls(split, folder, videos, source)


def read_refytvos(split_dir: Path, split: str | None = None, *, masks: str = "auto",
                  test_meta: Path | None = None, keep_test_videos: bool = False) -> RefYouTubeVOSDataset:
    """Read Ref-YouTube-VOS ``train`` or ``valid`` (test videos removed); see the module doc."""
    return read_referformer(RefYouTubeVOSDataset, split_dir, split, masks=masks, test_meta=test_meta,
                            keep_test_videos=keep_test_videos)


def read_davis17(split_dir: Path, split: str | None = None, *, masks: str = "auto") -> RefDavis17Dataset:
    """Read Ref-DAVIS17 ``train`` or ``valid``; see the module doc."""
    return read_referformer(RefDavis17Dataset, split_dir, split, masks=masks)
