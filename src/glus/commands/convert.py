"""``glus convert``: turn a released GLUS checkpoint into glus's self-contained format
(:func:`glus.model.convert.convert_checkpoint`)."""

from __future__ import annotations

import argparse

from glus.commands import transformers_progress_bars_off


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="turn a released GLUS checkpoint into glus's self-contained format")
    p.add_argument("src", help="released checkpoint folder or hub id (e.g. Swindl/GLUS-S)")
    p.add_argument("dst", help="new folder to write (safetensors, config.json, tokenizer, vision_tower/)")
    p.add_argument("--vision-tower", default=None,
                   help="CLIP folder or id (default: the one the checkpoint's config names)")
    p.add_argument("--sam2-config", default=None,
                   help="Meta SAM-2 yaml (default: sam2_hiera_l.yaml, as every GLUS release)")
    p.add_argument("--compat", default=None, choices=("official", "stored"),
                   help="fuser gamma: official (the authors' loader, 1e-6; default) or the stored values")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="precision of the weights")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST once the new one is complete")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from glus.model.convert import convert_checkpoint

    with transformers_progress_bars_off():
        report = convert_checkpoint(args.src, args.dst, vision_tower=args.vision_tower,
                                    sam2_config=args.sam2_config, compat=args.compat, dtype=args.dtype,
                                    overwrite=args.overwrite)
    console = Console(soft_wrap=True)
    console.print(report.summary(), highlight=False)
    console.print(f"  vision tower: {report.vision_tower}; SAM-2 config: {report.sam2_config}", highlight=False)
    return 0
