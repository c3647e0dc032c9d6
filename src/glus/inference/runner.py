"""``glus infer``: segment every expression of a dataset split, sharded, resumable, with progress.

Output: ``<out>/<video>/<exp_id>/<frame>.png`` (8-bit, 0/255), the layout ``glus evaluate`` and ``glus submit``
read, frame names from the dataset's :attr:`~glus.data.records.Video.frame_names`. Beside it,
``<out>/infer_summary.json`` records the settings, counts and timing of every shard.

Sharding. The videos of the split (after ``limit_videos``) are split by video into ``N`` shards, balanced by
*expression-frames* (expressions x frames, what inference time grows with) with the longest-first greedy rule:
deterministic, so every process computes the same division and shard ``i`` of ``N`` is the same set of videos
on every rerun. The shard of a process comes from ``--num-shards / --shard-index`` (a cluster scheduler's array
jobs) or from ``torchrun``'s ``RANK`` / ``WORLD_SIZE``; both together nest (``index * WORLD_SIZE + RANK`` of
``N * WORLD_SIZE``). With ``--device cuda`` under ``torchrun`` each process takes ``cuda:$LOCAL_RANK``.
Processes do not talk to each other: no process group is needed.

Resuming. :class:`~glus.inference.writers.PngMaskSink` writes every PNG atomically and an expression's ``.done``
marker once all its frames are on disk. A rerun skips expressions whose marker and PNGs are complete and redoes
the others (removing temporary files an interrupted write left behind); a video whose expressions are all done
is not even opened, and a run with nothing left to do does not load the model. The summary records the settings
that decide the masks (model, precision, key frames, ...); a rerun with other settings into the same folder is
refused, so one folder never mixes the masks of two configurations.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glus.data.formats import load_dataset
from glus.data.records import Video
from glus.errors import GlusError
from glus.fileio import atomic_write_json
from glus.inference.keyframes import load_key_frame_json, resolve_key_frame
from glus.inference.writers import ensure_writable_dir, expression_dir, is_expression_done

if TYPE_CHECKING:
    from glus.inference.pipeline import KeyFrame  # None (one pass from frame 0), a frame index, or "auto"

logger = logging.getLogger(__name__)

SUMMARY_NAME = "infer_summary.json"
SUMMARY_FORMAT = "glus-infer-summary"
SUMMARY_VERSION = 1
KEY_FRAME_MODES = ("none", "auto")


# ---------------------------------------------------------------------------------------------- sharding
@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise GlusError(f"shard index must be in 0..count-1 with count >= 1, got {self.index} of {self.count}")

    def __str__(self) -> str:
        return f"{self.index}-of-{self.count}"


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise GlusError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_shard(num_shards: int | None = None, shard_index: int | None = None,
                  env: Mapping[str, str] | None = None) -> Shard:
    """The shard this process runs: from the flags, from ``torchrun``'s ``RANK`` / ``WORLD_SIZE``, or both nested.

    Args:
        num_shards, shard_index: ``--num-shards`` / ``--shard-index`` (both or neither).
        env: the environment (default ``os.environ``).
    """
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise GlusError(f"RANK={rank} / WORLD_SIZE={world} from the environment are inconsistent")
    if (num_shards is None) != (shard_index is None):
        raise GlusError("--num-shards and --shard-index go together")
    if num_shards is None:
        return Shard(rank, world)
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise GlusError(f"--shard-index must be in 0..{num_shards - 1} and --num-shards >= 1, "
                        f"got --shard-index {shard_index} --num-shards {num_shards}")
    return Shard(shard_index * world + rank, num_shards * world)


def expression_frames(video: Video) -> int:
    """The work of one video: number of expressions x number of frames."""
    return len(video.expressions) * len(video.frame_names)


def assign_shards(weights: Mapping[str, int], num_shards: int) -> list[list[str]]:
    """Split videos into ``num_shards`` lists balanced by weight (greedy, heaviest video first).

    Deterministic: ties go to the lower video id and the lower shard. Within a shard videos keep the order of
    ``weights`` (the dataset's order).

    Args:
        weights: video id -> expression-frames, in dataset order.
        num_shards: ``N >= 1``.

    Returns:
        ``N`` lists of video ids; together they hold every video exactly once.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    loads = [(0, s) for s in range(num_shards)]  # a heap of (load, shard): pop gives the lightest, lowest index
    shards: list[list[str]] = [[] for _ in range(num_shards)]
    for video in sorted(weights, key=lambda v: (-weights[v], v)):
        load, s = heapq.heappop(loads)
        shards[s].append(video)
        heapq.heappush(loads, (load + weights[video], s))
    position = {video: i for i, video in enumerate(weights)}
    return [sorted(videos, key=position.__getitem__) for videos in shards]


# ---------------------------------------------------------------------------------------------- devices
def resolve_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; a bare ``cuda`` under ``torchrun`` becomes ``cuda:$LOCAL_RANK``."""
    env = os.environ if env is None else env
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise GlusError(f"unknown device {device!r}; choose cpu, cuda or cuda:N")
    if match.group(1) is not None:
        return text
    if env.get("LOCAL_RANK", "") != "":
        return f"cuda:{_env_int(env, 'LOCAL_RANK', 0)}"
    return "cuda"


def check_device(device: str) -> None:
    """One-line error when a CUDA device is asked for and not there (before any model is loaded)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise GlusError(f"--device {device}: no CUDA device is available to this process")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise GlusError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")


# ---------------------------------------------------------------------------------------------- key frames
def parse_key_frame_mode(value: str | None) -> str:
    mode = "none" if value is None else str(value).strip().lower()
    if mode not in KEY_FRAME_MODES:
        raise GlusError(f"--key-frame must be one of {', '.join(KEY_FRAME_MODES)}, got {value!r}")
    return mode


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
            logger.info("%s: %d of %d expressions have no entry; they use --key-frame %s",
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
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GlusError(f"not a readable run summary ({exc}); remove it or choose another --out", path) from None
    if not isinstance(data, dict) or data.get("format") != SUMMARY_FORMAT:
        raise GlusError("not a glus infer summary; remove it or choose another --out", path)
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
        GlusError: the folder's summary was written with other mask-deciding ``settings``.
    """
    with _folder_lock(out_dir):
        # Under the lock no other shard is writing the summary: a temp file beside it is a killed writer's.
        for stale in out_dir.glob(f".{SUMMARY_NAME}.*.tmp"):
            stale.unlink(missing_ok=True)
        summary = read_summary(out_dir)
        if summary is not None and summary.get("settings") != dict(settings):
            diff = "; ".join(_differences(summary.get("settings") or {}, settings))
            raise GlusError(f"this output folder holds predictions made with other settings ({diff}); choose "
                            "another --out or remove the folder", out_dir / SUMMARY_NAME)
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


def pending_expressions(out_dir: Path, videos: Sequence[Video]) -> dict[str, list[str]]:
    """``{video: [exp_id, ...]}`` of the expressions without a complete, marked set of PNGs in ``out_dir``."""
    pending: dict[str, list[str]] = {}
    for video in videos:
        left = [e for e in video.expressions
                if not is_expression_done(expression_dir(out_dir, video.video_id, e), video.frame_names)]
        if left:
            pending[video.video_id] = left
    return pending


def check_frames(videos: Sequence[Video]) -> None:
    """One-line error when a video's frame images are not all there (an annotation-only copy of a split)."""
    for video in videos:
        if len(video.frame_paths) != len(video.frame_names):
            raise GlusError(f"video {video.video_id}: {len(video.frame_paths)} frame images for "
                            f"{len(video.frame_names)} frames")
        for path in video.frame_paths:
            if not Path(path).is_file():
                raise GlusError(f"frame image of video {video.video_id} not found", path)


def run_dataset(dataset: str, split_dir: str | Path, out_dir: str | Path, model: str | Path, *,
                split: str | None = None, vision_tower: str | Path | None = None,
                sam2_config: str | Path | None = None, compat: str | None = None, device: str = "cpu",
                dtype: str = "fp32", key_frame: str = "none", key_frame_json: str | Path | None = None,
                num_shards: int | None = None, shard_index: int | None = None, max_batch: int = 16,
                limit_videos: int | None = None, progress: bool = True,
                env: Mapping[str, str] | None = None, load_in_bits: int | None = None) -> ShardReport:
    """Segment every expression of one shard of a dataset split into ``out_dir`` (see the module docstring).

    Args:
        dataset: a name of :data:`glus.data.formats.DATASET_NAMES`; split_dir / split: as
            :func:`glus.data.formats.load_dataset` takes them.
        out_dir: the prediction folder (created; must be writable).
        model, vision_tower, sam2_config, compat, dtype: as :func:`glus.model.checkpoint.from_pretrained`.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (``cuda`` under ``torchrun``: ``cuda:$LOCAL_RANK``).
        key_frame: ``"none"`` (one forward pass from frame 0) or ``"auto"`` (the built-in selector), for the
            expressions ``key_frame_json`` does not list.
        key_frame_json: a released key-frame file ``{"<video>_<exp_id>": "<frame>"}``.
        num_shards, shard_index: this process's shard (else ``torchrun``'s ``RANK`` / ``WORLD_SIZE``, else all).
        max_batch: most prompts per LLM call.
        limit_videos: only the first ``N`` videos of the split (in the dataset's order), before sharding.
        progress: show a progress bar over expression-frames.
        env: environment to read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from (default ``os.environ``).

    Returns:
        The :class:`ShardReport` of this process (also written to ``<out>/infer_summary.json``).

    Raises:
        GlusError: bad input (unwritable output, dataset folder, key-frame file, device, checkpoint, ...),
            always before any model is loaded except for problems of the checkpoint itself.
    """
    started = time.perf_counter()
    # Cheap checks first: a typo must cost a second, not a model load.
    out = ensure_writable_dir(out_dir)
    mode = parse_key_frame_mode(key_frame)
    from glus.model.checkpoint import parse_dtype

    precision = str(parse_dtype(dtype)).removeprefix("torch.")  # one name per precision: bf16 == bfloat16
    if max_batch < 1:
        raise GlusError(f"--max-batch must be >= 1, got {max_batch}")
    if limit_videos is not None and limit_videos < 1:
        raise GlusError(f"--limit-videos must be >= 1, got {limit_videos}")
    if compat not in (None, "official", "stored"):
        raise GlusError(f"unknown compat {compat!r}; choose official or stored")
    shard = resolve_shard(num_shards, shard_index, env)
    device = resolve_device(device, env)
    check_device(device)

    data = load_dataset(dataset, split_dir, split)
    videos = list(data.videos.values())[:limit_videos]
    weights = {v.video_id: expression_frames(v) for v in videos}
    mine = [data.videos[vid] for vid in assign_shards(weights, shard.count)[shard.index]]
    table = load_key_frame_json(key_frame_json) if key_frame_json is not None else None
    plan = plan_key_frames(videos, mode, table, key_frame_json)

    settings = {
        "dataset": dataset, "split": data.split, "model": _identity(model),
        "vision_tower": _identity(vision_tower), "sam2_config": _identity(sam2_config), "compat": compat,
        "dtype": precision, "load_in_bits": load_in_bits, "key_frame": mode,
        "key_frame_json": None if key_frame_json is None else {
            "path": _identity(key_frame_json), "sha256": _file_digest(Path(key_frame_json))},
    }
    run = {"split_dir": _identity(split_dir), "limit_videos": limit_videos, "max_batch": max_batch,
           "videos_in_split": len(data.videos), "videos_selected": len(videos)}
    report = ShardReport(shard.index, shard.count, device=device, videos=len(mine),
                         expressions=sum(len(v.expressions) for v in mine),
                         expression_frames=sum(weights[v.video_id] for v in mine))
    # Which expressions are left: decided once, before the model loads (and not at all if nothing is left).
    pending = pending_expressions(out, mine)
    left = {(vid, e) for vid, exps in pending.items() for e in exps}
    report.expressions_done_before = report.expressions - len(left)
    check_frames([data.videos[vid] for vid in pending])
    done_frames = sum(len(v.frame_names) for v in mine for e in v.expressions if (v.video_id, e) not in left)
    update_summary(out, settings, shard, report.to_dict(), run)
    logger.info("shard %s: %d video(s), %d expression(s), %d expression-frames; %d expression(s) already done",
                shard, report.videos, report.expressions, report.expression_frames, report.expressions_done_before)

    try:
        if pending:
            _segment(out, data.videos, pending, plan, report, done_frames, model=model, vision_tower=vision_tower,
                     sam2_config=sam2_config, compat=compat, device=device, dtype=dtype, max_batch=max_batch,
                     progress=progress, shard=shard, load_in_bits=load_in_bits)
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
        with contextlib.suppress(GlusError, OSError):  # never hide the original error behind a summary problem
            update_summary(out, settings, shard, report.to_dict(), run)
    logger.info("shard %s: wrote %d expression(s), %d PNGs in %.1fs -> %s", shard, report.expressions_written,
                report.frames_written, report.seconds, out)
    return report


def _segment(out: Path, videos: Mapping[str, Video], pending: Mapping[str, list[str]],
             plan: Mapping[str, Mapping[str, KeyFrame]], report: ShardReport, done_frames: int, *, model, vision_tower,
             sam2_config, compat, device: str, dtype: str, max_batch: int, progress: bool, shard: Shard,
             load_in_bits: int | None = None) -> None:
    """Load the model and segment the pending expressions, video by video."""
    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from glus.data.video import open_video
    from glus.inference.frames import FrameStore
    from glus.inference.pipeline import GLUSPipeline
    from glus.inference.writers import PngMaskSink

    loading = time.perf_counter()
    pipe = GLUSPipeline.from_pretrained(model, vision_tower=vision_tower, sam2_config=sam2_config, compat=compat,
                                        device=device, dtype=dtype, load_in_bits=load_in_bits, max_batch=max_batch,
                                        progress=False)
    report.model_load_seconds = round(time.perf_counter() - loading, 3)
    for video_id, exp_ids in pending.items():  # every expression must fit the model before the first PNG
        for exp_id in exp_ids:
            try:
                pipe.check_expressions([videos[video_id].expressions[exp_id].text])
            except GlusError as exc:  # name the expression by its dataset key, not its index in the call
                detail = str(exc).removeprefix("expression 0 ")
                raise GlusError(f"expression {video_id}_{exp_id} {detail}") from None

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
                pipe(frames, [video.expressions[e].text for e in exp_ids], [plan[video_id][e] for e in exp_ids],
                     sink=_CountingSink(sink, bar, report))
            unfinished = [e for i, e in enumerate(exp_ids) if not sink.done(i)]
            if unfinished:  # the pipeline owes one mask per frame; a gap would be a bug, not a user error
                raise RuntimeError(f"video {video_id}: expressions {unfinished} did not receive every frame")


def infer_command(args: argparse.Namespace) -> int:
    """Run ``glus infer`` from parsed arguments (see :func:`glus.cli.add_infer`)."""
    report = run_dataset(
        args.dataset, args.split_dir, args.out, args.model, split=getattr(args, "split", None),
        vision_tower=args.vision_tower, sam2_config=args.sam2_config, compat=args.compat, device=args.device,
        dtype=args.dtype, key_frame=args.key_frame, key_frame_json=args.key_frame_json, num_shards=args.num_shards,
        shard_index=args.shard_index, max_batch=args.max_batch, limit_videos=args.limit_videos,
        load_in_bits=getattr(args, "load_in", None))
    summary = read_summary(args.out) or {}
    totals = summary.get("totals", {})
    logger.info("%d of %d shard(s) complete; summary: %s", totals.get("shards_complete", 0), report.num_shards,
                Path(args.out) / SUMMARY_NAME)
    return 0


__all__ = [
    "KEY_FRAME_MODES", "SUMMARY_NAME", "Shard", "ShardReport", "assign_shards", "check_device", "check_frames",
    "expression_frames", "infer_command", "parse_key_frame_mode", "pending_expressions", "plan_key_frames",
    "read_summary", "resolve_device", "resolve_shard", "run_dataset", "update_summary",
]
