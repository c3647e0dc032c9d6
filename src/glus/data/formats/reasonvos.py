"""ReasonVOS (VideoLISA's benchmark; evaluation only), in its released layout.

::

    ReasonVOS/meta_expressions.json
        {"videos": {vid: {"source": "MeViS" | "MOSE" | "BURST" | "VIPSeg", "frames": [...],
                          "expressions": [{"obj_id", "exp_id", "exp_text", "is_sent"}, ...]}}}
    ReasonVOS/JPEGImages/<vid>/<frame>.jpg
    ReasonVOS/Annotations/<source>_<vid>_<obj_id>/<frame>.png   one 0/255 mask per target and frame

The expressions of a video are a list; each one's id is its ``exp_id`` (what the official evaluator reads
predictions under), which must be unique within the video. The ground truth of an expression is the PNG
folder of its target, foreground = value > 0. The split is called ``valid``.
"""

from __future__ import annotations

from pathlib import Path

from glus.data.formats._json import read_json
from glus.data.formats._meta import frame_order, frame_paths, text_of, video_dict, videos_of
from glus.data.formats._sources import BinaryPngMasks
from glus.data.records import Dataset, Expression, Video, describe
from glus.errors import GLUSError

META = "meta_expressions.json"
ANNOTATIONS = "Annotations"


class ReasonVOSDataset(Dataset):
    name = "reasonvos"


class TargetFolder:
    """``<source>_<vid>_<obj_id>``: the annotation folder of an expression's target (picklable)."""

    def __init__(self, sources: dict[str, str]) -> None:
        self.sources = sources

    def __call__(self, video: Video, expression: Expression) -> str:
        return f"{self.sources[video.video_id]}_{video.video_id}_{expression.obj_ids[0]}"


def read_reasonvos(split_dir: Path, split: str | None = None) -> ReasonVOSDataset:
    """Read ReasonVOS from its folder (the one holding ``meta_expressions.json``)."""
    root = Path(split_dir)
    meta_path = root / META
    if not meta_path.is_file():
        raise GLUSError(f"no {META} here (give the ReasonVOS folder)", root)
    videos: dict[str, Video] = {}
    sources: dict[str, str] = {}
    for vid, vdata in videos_of(read_json(meta_path), meta_path).items():
        vdata = video_dict(vid, vdata, meta_path)
        names, _ = frame_order(vid, vdata.get("frames"), meta_path)
        source = vdata.get("source")
        if not isinstance(source, str) or not source:
            raise GLUSError(f"video '{vid}': missing \"source\" (it names the annotation folders)", meta_path)
        sources[vid] = source
        exps = vdata.get("expressions")
        if not isinstance(exps, list):
            raise GLUSError(f"video '{vid}': \"expressions\" must be a list, got {describe(exps)}", meta_path)
        expressions: dict[str, Expression] = {}
        for i, edata in enumerate(exps):
            where = f"video '{vid}', expression {i}"
            if not isinstance(edata, dict):
                raise GLUSError(f"{where}: expected an object, got {describe(edata)}", meta_path)
            exp_id, obj_id = edata.get("exp_id"), edata.get("obj_id")
            for field, value in (("exp_id", exp_id), ("obj_id", obj_id)):
                if isinstance(value, bool) or not isinstance(value, (int, str)):
                    raise GLUSError(f"{where}: \"{field}\" must be an id, got {describe(value)}", meta_path)
            exp_id = str(exp_id)
            if exp_id in expressions:
                raise GLUSError(f"video '{vid}': expression id '{exp_id}' is used twice", meta_path)
            text = text_of(edata, "exp_text", where, meta_path)
            expressions[exp_id] = Expression(vid, exp_id, text, (obj_id,), ())
        videos[vid] = Video(vid, names, frame_paths(root / "JPEGImages", vid, names), expressions)
    annotations = root / ANNOTATIONS
    masks = BinaryPngMasks(annotations, TargetFolder(sources)) if annotations.is_dir() else None
    return ReasonVOSDataset(split or "valid", root, videos, masks)
