"""``glus infer``: segment a whole dataset split into ``<out>/<video>/<exp_id>/<frame>.png``, sharded and resumable
(:func:`glus.inference.runner.run_dataset`)."""

from __future__ import annotations

import argparse
import logging

from glus.commands import add_model_arguments, at_least
from glus.data.formats import DATASET_NAMES

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="segment a whole dataset split into <out>/<video>/<exp_id>/<frame>.png "
                                     "(sharded, resumable)")
    p.add_argument("--dataset", choices=DATASET_NAMES, required=True)
    p.add_argument("--split-dir", required=True, help="folder with the split's annotation files and frames")
    p.add_argument("--split", default=None, help="split name where the folder does not imply it")
    p.add_argument("--out", required=True, dest="out_dir", metavar="OUT",
                   help="prediction folder (a rerun resumes where it stopped)")
    add_model_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cuda under torchrun: cuda:$LOCAL_RANK)")
    p.add_argument("--key-frame", default="none",
                   help="none: one forward pass from frame 0; auto: the built-in key-frame selector "
                        "(for expressions the key-frame file does not list)")
    p.add_argument("--key-frame-json", default=None,
                   help='released key-frame file {"<video>_<exp_id>": "<frame>"}')
    p.add_argument("--num-shards", type=at_least(1), default=None, help="split the videos into N shards (with --shard-index)")
    p.add_argument("--shard-index", type=at_least(0), default=None, help="the shard this process runs, 0..N-1")
    p.add_argument("--max-batch", type=at_least(1), default=16, help="most prompts per LLM call")
    p.add_argument("--limit-videos", type=at_least(1), default=None, help="only the first N videos of the split")
    p.add_argument("--save-frame-features", action="store_true",
                   help="also write each expression's first-pass record (.frame_features.npz), what glus train "
                        "scorer learns from with glus evaluate --per-frame's labels (--key-frame none only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from glus.inference.runner import KEY_FRAMES_NAME, SUMMARY_NAME, InferSettings, read_summary, run_dataset

    settings = InferSettings(
        args.dataset, args.split_dir, args.out_dir, args.model, split=args.split, vision_tower=args.vision_tower,
        sam2_config=args.sam2_config, compat=args.compat, device=args.device, dtype=args.dtype,
        load_in_bits=args.load_in_bits, key_frame=args.key_frame, key_frame_json=args.key_frame_json,
        num_shards=args.num_shards, shard_index=args.shard_index, max_batch=args.max_batch,
        limit_videos=args.limit_videos, key_frame_scorer=args.key_frame_scorer,
        save_frame_features=args.save_frame_features)
    report = run_dataset(settings)
    totals = (read_summary(args.out_dir) or {}).get("totals", {})
    logger.info("%d of %d shard(s) complete; summary: %s", totals.get("shards_complete", 0), report.num_shards,
                Path(args.out_dir) / SUMMARY_NAME)
    if settings.key_frame_mode() == "auto":
        logger.info("key frames (%s selector): %s", report.key_frame_selector or "earlier run's",
                    Path(args.out_dir) / KEY_FRAMES_NAME)
    return 0
