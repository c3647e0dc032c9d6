"""``glus infer``: segment every expression of a dataset split, sharded, resumable, with progress.

Output: ``<out>/<video>/<exp_id>/<frame>.png`` (8-bit, 0/255), the layout ``glus evaluate`` and ``glus submit``
read, frame names from the dataset's :attr:`~glus.data.records.Video.frame_names`. Beside it,
``<out>/infer_summary.json`` records the settings, counts and timing of every shard.

Sharding. The videos of the split (after ``limit_videos``) are split by video into ``N`` shards, balanced by
*expression-frames* (expressions x frames, what inference time grows with) with the longest-first greedy rule:
deterministic, so every process computes the same division and shard ``i`` of ``N`` is the same set of videos
on every rerun. The shard of a process comes from ``num_shards / shard_index`` (a cluster scheduler's array
jobs) or from ``torchrun``'s ``RANK`` / ``WORLD_SIZE`` (:func:`glus.distributed.resolve_shard`); with ``device
"cuda"`` under ``torchrun`` each process takes ``cuda:$LOCAL_RANK``. Processes do not talk to each other: no process
group is needed.

Resuming. :class:`~glus.inference.writers.PngMaskSink` writes every PNG atomically and an expression's ``.done``
marker once all its frames are on disk. A rerun skips expressions whose marker and PNGs are complete and redoes
the others (removing temporary files an interrupted write left behind); a video whose expressions are all done
is not even opened, and a run with nothing left to do does not load the model. The summary records the settings
that decide the masks (model, precision, key frames, ...: :meth:`InferSettings.mask_settings`); a rerun with other
settings into the same folder is refused, so one folder never mixes the masks of two configurations.

Key frames. With ``key_frame "auto"`` every expression folder also gets ``.key_frame.json`` (the frame chosen, what
scored the first pass, its scores) before it counts as done, and each shard's end gathers them into
``<out>/key_frames.json``, the released format ``{"<video>_<exp_id>": "<frame>"}`` that ``--key-frame-json`` (and the
authors' own key-frame inference) reads, and ``<out>/key_frame_scores.json`` with the details.

Scorer labels. ``save_frame_features`` (one forward pass from frame 0 only, so that the PNGs are that pass's masks)
writes ``.frame_features.npz`` (:class:`glus.model.key_frame_scorer.FirstPassRecord`) into every expression folder:
with ``glus evaluate --per-frame`` on the same folder, what ``glus train scorer`` fits a key-frame scorer on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from glus.data.formats import load_dataset
from glus.data.records import Video
from glus.distributed import Shard, assign_shards, check_device, resolve_device, resolve_shard
from glus.errors import GLUSError, ParameterError
from glus.fileio import atomic_write_json, read_json
from glus.inference.keyframes import KeyFrame, load_key_frame_json, parse_key_frame, resolve_key_frame
from glus.inference.writers import ensure_writable_dir, expression_dir, is_expression_done
from glus.model.key_frame_scorer import WEIGHTS_NAME, check_scorer_choice, has_key_frame_scorer

logger = logging.getLogger(__name__)

SUMMARY_NAME = "infer_summary.json"
SUMMARY_FORMAT = "glus-infer-summary"
SUMMARY_VERSION = 1
#: Per expression folder: the key frame ``"auto"`` chose, and the first pass's record for scorer training.
KEY_FRAME_RECORD = ".key_frame.json"
FEATURES_NAME = ".frame_features.npz"
#: Per output folder, with ``"auto"``: the chosen key frames in the released format, and with their scores.
KEY_FRAMES_NAME = "key_frames.json"
KEY_FRAME_SCORES_NAME = "key_frame_scores.json"


# ---------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class InferSettings:
    """What one ``glus infer`` process is asked to do: one shard of a dataset split into one prediction folder.

    Attributes:
        dataset: a name of :data:`glus.data.formats.DATASET_NAMES`; split_dir / split: as
            :func:`glus.data.formats.load_dataset` takes them.
        out_dir: the prediction folder (created; must be writable).
        model, vision_tower, sam2_config, compat, dtype, load_in_bits: as
            :func:`glus.model.checkpoint.from_pretrained` takes them.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (``cuda`` under ``torchrun``: ``cuda:$LOCAL_RANK``).
        key_frame: ``"none"`` (one forward pass from frame 0) or ``"auto"`` (the built-in selector), for the
            expressions ``key_frame_json`` does not list.
        key_frame_json: a released key-frame file ``{"<video>_<exp_id>": "<frame>"}``.
        num_shards, shard_index: this process's shard (else ``torchrun``'s ``RANK`` / ``WORLD_SIZE``, else all).
        max_batch: most prompts per LLM call.
        limit_videos: only the first ``N`` videos of the split (in the dataset's order), before sharding.
        key_frame_scorer: what scores ``"auto"``'s first pass: ``auto`` (the checkpoint's trained scorer where it
            has one, else the heuristic), ``trained``, ``heuristic``, or a folder holding a scorer.
        save_frame_features: also write each expression's first-pass record (``.frame_features.npz``), the inputs
            of scorer training; only with one forward pass from frame 0 (``key_frame "none"``, no key-frame file).
    """

    dataset: str
    split_dir: str | Path
    out_dir: str | Path
    model: str | Path
    split: str | None = None
    vision_tower: str | Path | None = None
    sam2_config: str | Path | None = None
    compat: str | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    load_in_bits: int | None = None
    key_frame: str = "none"
    key_frame_json: str | Path | None = None
    num_shards: int | None = None
    shard_index: int | None = None
    max_batch: int = 16
    limit_videos: int | None = None
    key_frame_scorer: str | Path = "auto"
    save_frame_features: bool = False

    def check(self) -> None:
        """One-line errors for values that are wrong whatever the data (cheap: no file is read)."""
        from glus.model.checkpoint import check_compat, parse_dtype

        self.key_frame_mode()
        parse_dtype(self.dtype)
        if self.max_batch < 1:
            raise ParameterError(f"{{max_batch}} must be >= 1, got {self.max_batch}")
        if self.limit_videos is not None and self.limit_videos < 1:
            raise ParameterError(f"{{limit_videos}} must be >= 1, got {self.limit_videos}")
        check_compat(self.compat)
        check_scorer_choice(self.key_frame_scorer)
        if self.save_frame_features and (self.key_frame_mode() != "none" or self.key_frame_json is not None):
            raise ParameterError("{save_frame_features} needs one forward pass from frame 0 ({key_frame} none, no "
                                 "{key_frame_json}): the features must be those of the pass that made the masks")

    def key_frame_mode(self) -> str:
        """``key_frame`` checked and in one spelling: ``"none"`` or ``"auto"``."""
        return parse_key_frame(self.key_frame, frame_index=False) or "none"

    def mask_settings(self, split: str) -> dict[str, Any]:
        """The summary's ``"settings"``: what decides the masks (a rerun into the same folder must agree).

        Local paths are made absolute, the precision has one name (``bf16`` == ``bfloat16``) and the key-frame
        file is recorded with its SHA-256. ``split``: the split name the dataset was read as.
        """
        from glus.model.checkpoint import parse_dtype

        settings = {
            "dataset": self.dataset, "split": split, "model": _identity(self.model),
            "vision_tower": _identity(self.vision_tower), "sam2_config": _identity(self.sam2_config),
            "compat": self.compat, "dtype": str(parse_dtype(self.dtype)).removeprefix("torch."),
            "load_in_bits": self.load_in_bits, "key_frame": self.key_frame_mode(),
            "key_frame_json": None if self.key_frame_json is None else {
                "path": _identity(self.key_frame_json), "sha256": _file_digest(Path(self.key_frame_json))},
        }
        if self.key_frame_mode() == "auto":  # which scorer picks the key frames decides the masks too
            settings["key_frame_scorer"] = self.scorer_identity()
        return settings

    def scorer_identity(self) -> str | dict[str, str]:
        """What will score ``"auto"``'s first pass, found without loading anything: ``"heuristic"``, or the scorer's
        weights file with its SHA-256 (a local checkpoint's own, or the folder ``key_frame_scorer`` names; hub
        checkpoints carry none)."""
        choice = str(self.key_frame_scorer)
        if choice == "heuristic":
            return "heuristic"
        if choice in ("auto", "trained"):
            folder = Path(self.model).expanduser()
            if not (folder.is_dir() and has_key_frame_scorer(folder)):
                if choice == "trained":
                    raise GLUSError("the checkpoint has no trained key-frame scorer (train one with glus train "
                                    "scorer, or pass its folder)", self.model)
                return "heuristic"
        else:
            folder = Path(choice).expanduser()
            folder = folder.parent if folder.is_file() else folder
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise GLUSError("no key-frame scorer here (key_frame_scorer.safetensors)", folder)
        return {"path": _identity(weights), "sha256": _file_digest(weights)}

    def run_settings(self) -> dict[str, Any]:
        """The settings in the summary's ``"run"``: what a rerun may change without changing a mask."""
        return {"split_dir": _identity(self.split_dir), "limit_videos": self.limit_videos, "max_batch": self.max_batch,
                "save_frame_features": self.save_frame_features}

    def required_files(self) -> tuple[str, ...]:
        """What an expression folder must hold besides its PNGs to count as done in this run."""
        return ((KEY_FRAME_RECORD,) if self.key_frame_mode() == "auto" else ()) + \
            ((FEATURES_NAME,) if self.save_frame_features else ())


def expression_frames(video: Video) -> int:
    """The work of one video: number of expressions x number of frames."""
    return len(video.expressions) * len(video.frame_names)


# ---------------------------------------------------------------------------------------------- key frames
def plan_key_frames(videos: Sequence[Video], mode: str, table: Mapping[str, str] | None = None,
                    where: str | Path | None = None) -> dict[str, dict[str, KeyFrame]]:
    """The key-frame setting of every expression: ``{video: {exp_id: None | index | "auto"}}``.

    A released key-frame file (``table``, ``{"<video>_<exp_id>": "<frame>"}``) gives the frame of the
    expressions it lists; the others follow ``mode`` (``"none"``: frame 0, one forward pass, which is what the
    released script does for a missing entry; ``"auto"``: the built-in selector). Every entry is checked here,
    before any model is loaded.
    """
    fallback: KeyFrame = "auto" if mode == "auto" else None
    plan: dict[str, dict[str, KeyFrame]] = {}
    used = 0
    for video in videos:
        keys: dict[str, KeyFrame] = {}
        for exp_id, expression in video.expressions.items():
            entry = None if table is None else table.get(expression.key)
            if entry is None:
                keys[exp_id] = fallback
                continue
            used += 1
            index = resolve_key_frame(entry, video.frame_names, where=f"{where} entry {expression.key!r}")
            keys[exp_id] = index or None  # frame 0 is the plain forward pass
        plan[video.video_id] = keys
    if table is not None:
        total = sum(len(v.expressions) for v in videos)
        if used == 0 and total:
            logger.warning("%s: no entry names an expression of this split (keys are '<video>_<exp_id>')", where)
        elif used < total:
            logger.info("%s: %d of %d expressions have no entry; they use the key-frame mode %s",
                        where, total - used, total, mode)
    return plan


# ---------------------------------------------------------------------------------------------- summary
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _identity(path_or_id: str | Path | None) -> str | None:
    """A stable name for a model / file argument: the absolute path of a local one, else the text (hub ids)."""
    if path_or_id is None:
        return None
    path = Path(path_or_id).expanduser()
    return str(path.resolve()) if path.exists() else str(path_or_id)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``folder`` (``flock`` on its descriptor) for the summary's read-modify-write.

    Shards finish at any time; without the lock two of them could each read the summary before the other
    wrote, and the second write would drop the first shard's entry. No lock file is created.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: shards writing at the very same moment may lose an entry
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def read_summary(out_dir: str | Path) -> dict[str, Any] | None:
    """The run summary of an output folder, ``None`` if there is none; one-line error if it is not one."""
    path = Path(out_dir) / SUMMARY_NAME
    if not path.exists():  # summaries are only ever replaced, never removed: no race with a writer
        return None
    data = read_json(path, "run summary",
                     unreadable="not a readable run summary ({detail}); remove it or choose another output folder")
    if not isinstance(data, dict) or data.get("format") != SUMMARY_FORMAT:
        raise GLUSError("not a glus infer summary; remove it or choose another output folder", path)
    return data


def _totals(shards: Mapping[str, Mapping[str, Any]], count: int) -> dict[str, Any]:
    keys = ("videos", "expressions", "expression_frames", "expressions_done_before", "expressions_written",
            "frames_written")
    totals: dict[str, Any] = {k: sum(int(s.get(k, 0)) for s in shards.values()) for k in keys}
    complete = sum(1 for s in shards.values() if s.get("status") == "complete")
    totals["shards_complete"] = complete
    totals["complete"] = complete == count
    return totals


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def update_summary(out_dir: Path, settings: Mapping[str, Any], shard: Shard, entry: Mapping[str, Any],
                   run: Mapping[str, Any]) -> dict[str, Any]:
    """Record ``entry`` for ``shard`` in ``<out>/infer_summary.json`` (locked, atomic) and return the summary.

    Raises:
        GLUSError: the folder's summary was written with other mask-deciding ``settings``.
    """
    with _folder_lock(out_dir):
        # Under the lock no other shard is writing the summary: a temp file beside it is a killed writer's.
        for stale in out_dir.glob(f".{SUMMARY_NAME}.*.tmp"):
            stale.unlink(missing_ok=True)
        summary = read_summary(out_dir)
        if summary is not None and summary.get("settings") != dict(settings):
            diff = "; ".join(_differences(summary.get("settings") or {}, settings))
            raise GLUSError(f"this output folder holds predictions made with other settings ({diff}); choose "
                            "another output folder or remove this one", out_dir / SUMMARY_NAME)
        shards = dict(summary.get("shards", {})) if summary is not None else {}
        if any(int(s.get("num_shards", shard.count)) != shard.count for s in shards.values()):
            # Entries of an earlier division into another number of shards describe other video sets.
            shards = {}
        shards[str(shard.index)] = dict(entry)
        shards = dict(sorted(shards.items(), key=lambda kv: int(kv[0])))
        new = {"format": SUMMARY_FORMAT, "version": SUMMARY_VERSION, "updated": _now(), "settings": dict(settings),
               "run": dict(run), "num_shards": shard.count, "totals": _totals(shards, shard.count), "shards": shards}
        atomic_write_json(out_dir / SUMMARY_NAME, new, indent=2)
        return new


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class ShardReport:
    """What one process did (also its entry in ``infer_summary.json``).

    Attributes:
        shard_index, num_shards: which shard.
        status: ``"running"``, ``"complete"``, ``"failed"`` or ``"interrupted"``.
        videos, expressions, expression_frames: the shard's work in total.
        expressions_done_before: expressions already finished by an earlier run (skipped).
        expressions_written: expressions finished by this run; frames_written: PNGs written.
        model_load_seconds, seconds: time to load the model (0 when nothing was left to do) and in total.
        key_frame_selector: what scored ``"auto"``'s first passes (``"trained"`` or ``"heuristic"``; ``None``
            without ``"auto"`` or when nothing was left to do).
    """

    shard_index: int
    num_shards: int
    status: str = "running"
    videos: int = 0
    expressions: int = 0
    expression_frames: int = 0
    expressions_done_before: int = 0
    expressions_written: int = 0
    frames_written: int = 0
    device: str = "cpu"
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    started: str = field(default_factory=_now)
    finished: str | None = None
    model_load_seconds: float = 0.0
    seconds: float = 0.0
    expression_frames_per_second: float | None = None
    key_frame_selector: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _CountingSink:
    """Forwards predictions to the PNG sink and advances the progress bar by one expression-frame each."""

    def __init__(self, sink, bar, report: ShardReport) -> None:
        self.sink = sink
        self.bar = bar
        self.report = report

    def put(self, expression_index: int, frame_index: int, prediction) -> None:
        self.sink.put(expression_index, frame_index, prediction)
        self.report.frames_written += 1
        self.bar.update(1)


class _FeatureSink:
    """Keeps each expression's predictions and writes its first-pass record (``.frame_features.npz``) before its
    last frame goes on to the PNG sink, which then marks the expression done: a done expression has its record."""

    def __init__(self, sink, exp_dirs: Sequence[Path], num_frames: int, embedding_dim: int) -> None:
        self.sink, self.exp_dirs, self.num_frames, self.embedding_dim = sink, list(exp_dirs), num_frames, embedding_dim
        self.kept: dict[int, dict[int, Any]] = {}

    def put(self, expression_index: int, frame_index: int, prediction) -> None:
        from glus.model.key_frame_scorer import FirstPassRecord, FrameSummary

        kept = self.kept.setdefault(expression_index, {})
        kept[frame_index] = FrameSummary.of(prediction)  # not the mask: it is on its way to a PNG
        if len(kept) == self.num_frames:
            preds = [kept[t] for t in range(self.num_frames)]
            FirstPassRecord.from_predictions(preds, self.embedding_dim).save(self.exp_dirs[expression_index] /
                                                                             FEATURES_NAME)
            del self.kept[expression_index]
        self.sink.put(expression_index, frame_index, prediction)


def write_key_frame_record(exp_dir: Path, choice, frame_names: Sequence[str]) -> None:
    """``<exp_dir>/.key_frame.json``: the frame an expression's passes started from and what chose it."""
    index = choice.key_frame or 0
    scores = None if choice.first_pass_scores is None else [round(float(x), 6) for x in choice.first_pass_scores]
    atomic_write_json(exp_dir / KEY_FRAME_RECORD, {"key_frame": index, "frame": frame_names[index],
                                                   "selector": choice.selector, "scores": scores})


def gather_key_frames(out_dir: Path, videos: Sequence[Video]) -> dict[str, str]:
    """Collect the expressions' ``.key_frame.json`` into ``<out>/key_frames.json`` (released format) and
    ``<out>/key_frame_scores.json`` (``{"<video>_<exp_id>": {"frame", "index", "selector", "scores"}}``).

    Every video of the run is looked at, not only this shard's, under the folder lock: whichever shard ends last
    writes the complete files. Returns the released-format table.
    """
    table: dict[str, str] = {}
    details: dict[str, Any] = {}
    for video in videos:
        for exp_id, expression in video.expressions.items():
            path = expression_dir(out_dir, video.video_id, exp_id) / KEY_FRAME_RECORD
            if not path.is_file():
                continue
            record = read_json(path, "key-frame record")
            table[expression.key] = str(record["frame"])
            details[expression.key] = {"frame": str(record["frame"]), "index": int(record["key_frame"]),
                                       "selector": record.get("selector"), "scores": record.get("scores")}
    with _folder_lock(out_dir):
        atomic_write_json(out_dir / KEY_FRAMES_NAME, table, indent=1)
        atomic_write_json(out_dir / KEY_FRAME_SCORES_NAME, details)
    return table


def _clean_partial(exp_dir: Path, frame_names: Sequence[str]) -> None:
    """Remove what an interrupted run left in an unfinished expression folder: temp files, stray PNGs."""
    if not exp_dir.is_dir():
        return
    wanted = {f"{name}.png" for name in frame_names}
    for path in exp_dir.iterdir():
        stale_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
        stray_png = path.suffix == ".png" and path.name not in wanted
        if path.is_file() and (stale_tmp or stray_png):
            path.unlink(missing_ok=True)


def pending_expressions(out_dir: Path, videos: Sequence[Video], required: Sequence[str] = ()) -> dict[str, list[str]]:
    """``{video: [exp_id, ...]}`` of the expressions without a complete, marked set of PNGs in ``out_dir`` (and the
    ``required`` files, :meth:`InferSettings.required_files`)."""

    def done(exp_dir: Path, frame_names: Sequence[str]) -> bool:
        return is_expression_done(exp_dir, frame_names) and all((exp_dir / name).is_file() for name in required)

    pending: dict[str, list[str]] = {}
    for video in videos:
        left = [e for e in video.expressions if not done(expression_dir(out_dir, video.video_id, e), video.frame_names)]
        if left:
            pending[video.video_id] = left
    return pending


def check_frames(videos: Sequence[Video]) -> None:
    """One-line error when a video's frame images are not all there (an annotation-only copy of a split)."""
    for video in videos:
        if len(video.frame_paths) != len(video.frame_names):
            raise GLUSError(f"video {video.video_id}: {len(video.frame_paths)} frame images for "
                            f"{len(video.frame_names)} frames")
        for path in video.frame_paths:
            if not Path(path).is_file():
                raise GLUSError(f"frame image of video {video.video_id} not found", path)


def run_dataset(settings: InferSettings, *, progress: bool = True,
                env: Mapping[str, str] | None = None) -> ShardReport:
    """Segment every expression of one shard of a dataset split into ``settings.out_dir`` (see the module docstring).

    Args:
        settings: what to run (:class:`InferSettings`); the summary records it.
        progress: show a progress bar over expression-frames.
        env: environment to read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from (default ``os.environ``).

    Returns:
        The :class:`ShardReport` of this process (also written to ``<out>/infer_summary.json``).

    Raises:
        GLUSError: bad input (unwritable output, dataset folder, key-frame file, device, checkpoint, ...),
            always before any model is loaded except for problems of the checkpoint itself.
    """
    started = time.perf_counter()
    # Cheap checks first: a typo must cost a second, not a model load.
    out = ensure_writable_dir(settings.out_dir)
    settings.check()
    mode = settings.key_frame_mode()
    shard = resolve_shard(settings.num_shards, settings.shard_index, env)
    device = resolve_device(settings.device, env)
    check_device(device)

    data = load_dataset(settings.dataset, settings.split_dir, settings.split)
    videos = list(data.videos.values())[:settings.limit_videos]
    weights = {v.video_id: expression_frames(v) for v in videos}
    mine = [data.videos[vid] for vid in assign_shards(weights, shard.count)[shard.index]]
    key_frame_json = settings.key_frame_json
    table = load_key_frame_json(key_frame_json) if key_frame_json is not None else None
    plan = plan_key_frames(videos, mode, table, key_frame_json)

    recorded = settings.mask_settings(data.split)
    run = {**settings.run_settings(), "videos_in_split": len(data.videos), "videos_selected": len(videos)}
    report = ShardReport(shard.index, shard.count, device=device, videos=len(mine),
                         expressions=sum(len(v.expressions) for v in mine),
                         expression_frames=sum(weights[v.video_id] for v in mine))
    # Which expressions are left: decided once, before the model loads (and not at all if nothing is left).
    pending = pending_expressions(out, mine, settings.required_files())
    left = {(vid, e) for vid, exps in pending.items() for e in exps}
    report.expressions_done_before = report.expressions - len(left)
    check_frames([data.videos[vid] for vid in pending])
    done_frames = sum(len(v.frame_names) for v in mine for e in v.expressions if (v.video_id, e) not in left)
    update_summary(out, recorded, shard, report.to_dict(), run)
    logger.info("shard %s: %d video(s), %d expression(s), %d expression-frames; %d expression(s) already done",
                shard, report.videos, report.expressions, report.expression_frames, report.expressions_done_before)

    try:
        if pending:
            _segment(out, data.videos, pending, plan, report, done_frames, settings, device=device,
                     progress=progress, shard=shard)
        if mode == "auto":
            gather_key_frames(out, videos)
        report.status = "complete"
    except KeyboardInterrupt:
        report.status = "interrupted"
        raise
    except BaseException as exc:
        report.status = "failed"
        report.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise
    finally:
        report.finished = _now()
        report.seconds = round(time.perf_counter() - started, 3)
        infer_seconds = report.seconds - report.model_load_seconds
        if report.frames_written and infer_seconds > 0:
            report.expression_frames_per_second = round(report.frames_written / infer_seconds, 3)
        with contextlib.suppress(GLUSError, OSError):  # never hide the original error behind a summary problem
            update_summary(out, recorded, shard, report.to_dict(), run)
    logger.info("shard %s: wrote %d expression(s), %d PNGs in %.1fs -> %s", shard, report.expressions_written,
                report.frames_written, report.seconds, out)
    return report


def _segment(out: Path, videos: Mapping[str, Video], pending: Mapping[str, list[str]],
             plan: Mapping[str, Mapping[str, KeyFrame]], report: ShardReport, done_frames: int,
             settings: InferSettings, *, device: str, progress: bool, shard: Shard) -> None:
    """Load the model and segment the pending expressions, video by video."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from glus.data.video import open_video
    from glus.inference.frames import FrameStore
    from glus.inference.pipeline import GLUSPipeline
    from glus.inference.writers import PngMaskSink

    loading = time.perf_counter()
    pipe = GLUSPipeline.from_pretrained(settings.model, vision_tower=settings.vision_tower,
                                        sam2_config=settings.sam2_config, compat=settings.compat, device=device,
                                        dtype=settings.dtype, load_in_bits=settings.load_in_bits,
                                        max_batch=settings.max_batch, progress=False,
                                        key_frame_scorer=settings.key_frame_scorer)
    report.model_load_seconds = round(time.perf_counter() - loading, 3)
    auto = settings.key_frame_mode() == "auto"
    if auto:
        report.key_frame_selector = pipe.key_frame_selector
    for video_id, exp_ids in pending.items():  # every expression must fit the model before the first PNG
        for exp_id in exp_ids:
            try:
                pipe.check_expressions([videos[video_id].expressions[exp_id].text])
            except GLUSError as exc:  # name the expression by its dataset key, not its index in the call
                detail = str(exc).removeprefix("expression 0 ")
                raise GLUSError(f"expression {video_id}_{exp_id} {detail}") from None

    desc = "infer" if shard.count == 1 else f"infer {shard.index + 1}/{shard.count}"
    with logging_redirect_tqdm(), tqdm(total=report.expression_frames, initial=done_frames, unit="mask", desc=desc,
                                       disable=not progress, dynamic_ncols=True, smoothing=0.1) as bar:
        for video_id, exp_ids in pending.items():
            video = videos[video_id]
            bar.set_postfix(video=video_id, refresh=False)
            exp_dirs = [expression_dir(out, video_id, e) for e in exp_ids]
            for exp_dir in exp_dirs:
                _clean_partial(exp_dir, video.frame_names)

            def finished(index: int) -> None:
                report.expressions_written += 1

            with FrameStore(open_video(video.frame_paths)) as frames:  # one image per frame: check_frames
                sink = PngMaskSink(exp_dirs, video.frame_names, on_done=finished)
                counting = _CountingSink(sink, bar, report)
                choices = pipe(frames, [video.expressions[e].text for e in exp_ids],
                               [plan[video_id][e] for e in exp_ids],
                               sink=_FeatureSink(counting, exp_dirs, len(frames), pipe.model.config.prompt_dim)
                               if settings.save_frame_features else counting)
            unfinished = [e for i, e in enumerate(exp_ids) if not sink.done(i)]
            if unfinished:  # the pipeline owes one mask per frame; a gap would be a bug, not a user error
                raise RuntimeError(f"video {video_id}: expressions {unfinished} did not receive every frame")
            if auto:
                for exp_dir, choice in zip(exp_dirs, choices):
                    write_key_frame_record(exp_dir, choice, video.frame_names)


__all__ = [
    "SUMMARY_NAME", "InferSettings", "ShardReport", "check_frames", "expression_frames", "pending_expressions",
    "plan_key_frames", "read_summary", "run_dataset", "update_summary",
]
