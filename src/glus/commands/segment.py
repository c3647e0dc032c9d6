"""``glus segment``: one video and a few expressions in; PNG masks, an overlay video and metadata out
(:func:`glus.inference.segment.segment_to_folder`)."""

from __future__ import annotations

import argparse
import logging

from glus.commands import add_model_arguments, at_least

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment the objects that expressions refer to in one video")
    p.add_argument("video", help="video file (mp4, mov, webm, avi, mkv), folder of frames, or an image")
    p.add_argument("-e", "--expression", action="append", required=True, dest="expressions",
                   help="referring expression (repeat for several)")
    p.add_argument("--out", required=True, dest="out_dir", metavar="OUT", help="output folder")
    add_model_arguments(p)
    p.add_argument("--key-frame", default="none", help="none, auto (built-in selector) or a frame index")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--mode", default="fast", choices=("fast", "reference"),
                   help="fast path (default) or the released per-frame protocol; both give the same masks")
    p.add_argument("--stride", type=at_least(1), default=1, help="use every N-th frame")
    p.add_argument("--max-frames", type=at_least(1), default=None, help="use at most this many frames")
    p.add_argument("--start", type=at_least(0), default=0, help="first frame to use")
    p.add_argument("--max-batch", type=at_least(1), default=16, help="most prompts per LLM call")
    p.add_argument("--rle", action="store_true", help="also write masks_rle.json (COCO RLE)")
    p.add_argument("--no-overlay", action="store_true", help="do not draw the overlay video")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from glus.inference.segment import segment_to_folder

    written = segment_to_folder(
        args.video, args.expressions, args.model, args.out_dir, key_frame=args.key_frame, mode=args.mode,
        start=args.start, stride=args.stride, max_frames=args.max_frames, device=args.device, dtype=args.dtype,
        vision_tower=args.vision_tower, sam2_config=args.sam2_config, compat=args.compat,
        load_in_bits=args.load_in_bits, max_batch=args.max_batch, rle=args.rle, overlay=not args.no_overlay,
        key_frame_scorer=args.key_frame_scorer)
    logger.info("segmented %d expression(s) x %d frames in %.1fs -> %s", written.num_expressions,
                written.num_frames, written.seconds, written.out_dir)
    if written.overlay is not None:
        logger.info("overlay: %s", written.overlay)
    return 0
