"""``glus segment``: one video and a few expressions in; PNG masks, an overlay video and metadata out.

Output folder layout::

    DIR/expressions.json         {"0": "<first expression>", ...} and the run's settings
    DIR/<i>/<frame>.png          8-bit 0/255 mask of the i-th expression (frame names from the input)
    DIR/overlay.mp4              masks drawn over the frames (+ overlay.gif for short clips, overlay_sheet.png)
    DIR/masks_rle.json           with rle=True: {"<i>": {"<frame>": COCO RLE}}
    DIR/scores.json              {"<i>": {"key_frame", "key_frame_mode", "key_frame_selector" ("trained", "heuristic"
                                 or null without auto), "scores" (per frame, the heuristic quality of the pass that made
                                 its mask), "first_pass_scores" (key-frame selection's first pass, or null)}}

Everything the user can get wrong (unreadable video, empty expression, unwritable folder, bad key frame) is
checked before the model is loaded, and reported on one line.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from glus.data.masks import encode_rle, read_mask_png
from glus.data.video import open_video
from glus.distributed import check_device, resolve_device
from glus.errors import GLUSError, ParameterError
from glus.inference.frames import FrameStore
from glus.inference.keyframes import KeyFrame, parse_key_frame
from glus.inference.writers import (PngMaskSink, atomic_write_json, ensure_writable_dir, publish_folder, segment_dir,
                                    write_expressions_json, write_rle_json)
from glus.model.key_frame_scorer import check_scorer_choice
from glus.prompts import PromptBuilder

__all__ = ["SegmentOutput", "segment_to_folder"]


@dataclass(frozen=True)
class SegmentOutput:
    """What :func:`segment_to_folder` wrote.

    Attributes:
        out_dir: the output folder; num_expressions, num_frames: masks written per expression x frames.
        seconds: from loading the model to the last file.
        overlay: the overlay video (``None`` with ``overlay=False``).
    """

    out_dir: Path
    num_expressions: int
    num_frames: int
    seconds: float
    overlay: Path | None


def segment_to_folder(video: str | Path, expressions: Sequence[str], model: str | Path, out_dir: str | Path, *,
                      key_frame: KeyFrame = None, mode: str = "fast", start: int = 0, stride: int = 1,
                      max_frames: int | None = None, device: str = "cpu", dtype: str = "fp32",
                      vision_tower: str | Path | None = None, sam2_config: str | Path | None = None,
                      compat: str | None = None, load_in_bits: int | None = None, max_batch: int = 16,
                      rle: bool = False, overlay: bool = True, key_frame_scorer: str | Path | None = "auto",
                      pipeline=None) -> SegmentOutput:
    """Segment ``expressions`` on one video into ``out_dir`` (the layout of the module docstring).

    Args:
        video: a video file, a folder of frames or an image (:func:`glus.data.video.open_video`).
        expressions: the referring expressions, one mask folder each (surrounding white space is dropped).
        model, vision_tower, sam2_config, compat, device, dtype, load_in_bits: as
            :meth:`glus.inference.pipeline.GLUSPipeline.from_pretrained` takes them.
        key_frame: ``None`` / ``"none"``, ``"auto"`` or the index of a frame among the selected ones
            (:func:`glus.inference.keyframes.parse_key_frame`).
        mode: ``"fast"`` or ``"reference"`` (the released per-frame protocol; the same masks).
        start, stride, max_frames: which frames: every ``stride``-th from ``start``, at most ``max_frames``.
        max_batch: most prompts per LLM call.
        rle: also write ``masks_rle.json``; overlay: draw the overlay video.
        key_frame_scorer: what scores ``"auto"``'s first pass (``auto``, ``trained``, ``heuristic`` or a scorer
            folder: :func:`glus.model.key_frame_scorer.key_frame_scorer_for`).
        pipeline: an already loaded :class:`~glus.inference.pipeline.GLUSPipeline` to run instead of loading
            ``model`` (``glus app`` keeps one for every request).

    Raises:
        GLUSError: bad input, always before the model is loaded (except problems of the checkpoint itself).
    """
    expressions = [e.strip() for e in expressions]
    for i, text in enumerate(expressions):  # the model's own tokens are checked again once its tokenizer is loaded
        PromptBuilder().check_expression(i, text)
    key_frame = parse_key_frame(key_frame)
    if stride < 1 or (max_frames is not None and max_frames < 1) or start < 0:
        raise ParameterError("{stride} and {max_frames} must be >= 1, {start} >= 0")
    if max_batch < 1:
        raise ParameterError(f"{{max_batch}} must be >= 1, got {max_batch}")
    check_scorer_choice(key_frame_scorer)
    device = resolve_device(device)
    check_device(device)  # a missing GPU costs a second, not a model load
    out = ensure_writable_dir(out_dir)
    source = open_video(video, start=start, stride=stride, max_frames=max_frames)
    if source.num_frames == 0:
        raise GLUSError("the video has no frames", video)
    if isinstance(key_frame, int) and key_frame >= source.num_frames:
        raise ParameterError(f"{{key_frame}} {key_frame} is past the video's last frame ({source.num_frames - 1})",
                             video)

    from glus.inference.pipeline import GLUSPipeline

    started = time.perf_counter()
    pipe = pipeline or GLUSPipeline.from_pretrained(model, vision_tower=vision_tower, sam2_config=sam2_config,
                                                    compat=compat, device=device, dtype=dtype,
                                                    load_in_bits=load_in_bits, max_batch=max_batch,
                                                    key_frame_scorer=key_frame_scorer)
    # Everything is written into a hidden staging folder and moved into DIR only once complete: a run that fails
    # (a full disk, an interrupt) leaves DIR as it was, with nothing half-written.
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".partial-"))
    try:
        with FrameStore(source) as frames:
            pipe.check_expressions(expressions)
            sink = _PngAndRleSink(PngMaskSink([segment_dir(stage, i) for i in range(len(expressions))],
                                              frames.frame_names), frames.frame_names, keep_rle=rle)
            choices = pipe(frames, expressions, key_frame, mode=mode, sink=sink)
            write_expressions_json(stage / "expressions.json", expressions)
            atomic_write_json(stage / "scores.json", {str(i): {
                "key_frame": c.key_frame or 0, "key_frame_mode": "none" if key_frame is None else str(key_frame),
                "key_frame_selector": c.selector,
                "scores": [sink.scores[(i, t)] for t in range(len(frames))],
                "first_pass_scores": None if c.first_pass_scores is None else c.first_pass_scores.tolist(),
            } for i, c in enumerate(choices)}, indent=1)
            if rle:
                write_rle_json(stage / "masks_rle.json", {
                    str(i): {name: sink.rles[(i, name)] for name in frames.frame_names}
                    for i in range(len(expressions))})
            drawn = out / _render(frames, stage, expressions, source.fps).name if overlay else None
            num_frames = len(frames)
        publish_folder(stage, out)
    except OSError as exc:  # name the file where the user will look for it, not inside the staging folder
        if not exc.filename or not str(exc.filename).startswith(str(stage)):
            raise
        raise OSError(exc.errno, exc.strerror, str(out) + str(exc.filename)[len(str(stage)):]) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return SegmentOutput(out, len(expressions), num_frames, time.perf_counter() - started, drawn)


class _PngAndRleSink:
    """Writes PNGs and, with ``keep_rle``, encodes COCO RLE as the masks arrive (no second read of the PNGs)."""

    def __init__(self, pngs: PngMaskSink, frame_names: list[str], keep_rle: bool) -> None:
        self.pngs, self.frame_names, self.keep_rle = pngs, frame_names, keep_rle
        self.rles: dict[tuple[int, str], dict] = {}
        self.scores: dict[tuple[int, int], float] = {}

    def put(self, expression_index: int, frame_index: int, prediction) -> None:
        self.pngs.put(expression_index, frame_index, prediction)
        self.scores[(expression_index, frame_index)] = float(prediction.score)
        if self.keep_rle:
            self.rles[(expression_index, self.frame_names[frame_index])] = encode_rle(prediction.mask)


def _render(frames: FrameStore, out: Path, expressions: list[str], fps: float | None) -> Path:
    """Draw the written masks over the frames (read back from disk: nothing was kept in memory)."""
    from glus.inference.render import render_overlays

    def masks():
        for name in frames.frame_names:
            yield np.stack([read_mask_png(segment_dir(out, i) / f"{name}.png") for i in range(len(expressions))])

    outputs = render_overlays((frames[i] for i in range(len(frames))), masks(), expressions, out,
                              name="overlay", fps=fps or 10.0, frame_names=frames.frame_names,
                              num_frames=len(frames))
    return outputs.mp4
