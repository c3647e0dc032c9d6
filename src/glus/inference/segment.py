"""``glus segment``: one video and a few expressions in; PNG masks, an overlay video and metadata out.

Output folder layout::

    DIR/expressions.json         {"0": "<first expression>", ...} and the run's settings
    DIR/<i>/<frame>.png          8-bit 0/255 mask of the i-th expression (frame names from the input)
    DIR/overlay.mp4              masks drawn over the frames (+ overlay.gif for short clips, overlay_sheet.png)
    DIR/masks_rle.json           with --rle: {"<i>": {"<frame>": COCO RLE}}

Everything the user can get wrong (unreadable video, empty expression, unwritable folder, bad key frame) is
checked before the model is loaded, and reported on one line.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from glus.data.masks import encode_rle, read_mask_png
from glus.data.video import open_video
from glus.errors import GlusError
from glus.inference.frames import FrameStore
from glus.inference.writers import (PngMaskSink, ensure_writable_dir, segment_dir, write_expressions_json,
                                    write_rle_json)

logger = logging.getLogger(__name__)


def parse_key_frame(text: str) -> int | str | None:
    value = text.strip().lower()
    if value in ("none", ""):
        return None
    if value == "auto":
        return "auto"
    try:
        index = int(value)
    except ValueError:
        raise GlusError(f"--key-frame must be none, auto or a frame index, got {text!r}") from None
    if index < 0:
        raise GlusError(f"--key-frame must be >= 0, got {index}")
    return index


def segment_command(args: argparse.Namespace) -> int:
    expressions = [e.strip() for e in args.expressions]
    for i, text in enumerate(expressions):
        if not text:
            raise GlusError(f"expression {i} is empty")
    key_frame = parse_key_frame(args.key_frame)
    if args.stride < 1 or (args.max_frames is not None and args.max_frames < 1) or args.start < 0:
        raise GlusError("--stride and --max-frames must be >= 1, --start >= 0")
    out = ensure_writable_dir(args.out)
    source = open_video(args.video, start=args.start, stride=args.stride, max_frames=args.max_frames)
    if source.num_frames == 0:
        raise GlusError("the video has no frames", args.video)
    if isinstance(key_frame, int) and key_frame >= source.num_frames:
        raise GlusError(f"--key-frame {key_frame} is past the video's last frame ({source.num_frames - 1})", args.video)

    from glus.inference.pipeline import GLUSPipeline

    started = time.perf_counter()
    pipe = GLUSPipeline.from_pretrained(args.model, vision_tower=args.vision_tower, sam2_config=args.sam2_config,
                                        compat=args.compat, device=args.device, dtype=args.dtype,
                                        load_in_bits=args.load_in, max_batch=args.max_batch)
    with FrameStore(source) as frames:
        pipe.check_expressions(expressions)
        sink = _PngAndRleSink(PngMaskSink([segment_dir(out, i) for i in range(len(expressions))],
                                          frames.frame_names), frames.frame_names, keep_rle=args.rle)
        pipe(frames, expressions, key_frame, mode=args.mode, sink=sink)
        write_expressions_json(out / "expressions.json", expressions)
        if args.rle:
            write_rle_json(out / "masks_rle.json", {
                str(i): {name: sink.rles[(i, name)] for name in frames.frame_names} for i in range(len(expressions))})
        overlay = None
        if not args.no_overlay:
            overlay = _render(frames, out, expressions, source.fps)
    elapsed = time.perf_counter() - started
    logger.info("segmented %d expression(s) x %d frames in %.1fs -> %s", len(expressions), len(frames), elapsed, out)
    if overlay is not None:
        logger.info("overlay: %s", overlay)
    return 0


class _PngAndRleSink:
    """Writes PNGs and, with ``keep_rle``, encodes COCO RLE as the masks arrive (no second read of the PNGs)."""

    def __init__(self, pngs: PngMaskSink, frame_names: list[str], keep_rle: bool) -> None:
        self.pngs, self.frame_names, self.keep_rle = pngs, frame_names, keep_rle
        self.rles: dict[tuple[int, str], dict] = {}

    def put(self, expression_index: int, frame_index: int, prediction) -> None:
        self.pngs.put(expression_index, frame_index, prediction)
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
