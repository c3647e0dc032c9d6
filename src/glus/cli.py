"""The `glus` command line: parse arguments, call one library function, report the result.

Each sub-command lives in a small ``add_<name>`` function that declares its arguments and names the
library function that runs it (imported lazily, so ``glus --help`` stays fast). User errors
(:class:`glus.errors.GlusError`) are printed on one line without a traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Callable, Sequence

from glus.errors import GlusError

DATASETS = ("mevis", "refytvos", "davis17", "revos", "lvvis", "reasonvos")


def _runner(target: str) -> Callable[[argparse.Namespace], int | None]:
    """Return a function that imports ``module:function`` on first call and runs it with the parsed args."""
    module_name, func_name = target.split(":")

    def run(args: argparse.Namespace) -> int | None:
        return getattr(importlib.import_module(module_name), func_name)(args)

    return run


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predicted masks against a split (J, F, J&F)")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--split-dir", required=True,
                   help="folder with the split's annotation files ('example': the packaged example split)")
    p.add_argument("--split", default=None, help="split name where the folder does not imply it")
    p.add_argument("--pred", required=True,
                   help="folder holding <video>/<exp_id>/<frame>.png ('example': the packaged example's)")
    p.add_argument("--protocol", default="default", choices=("default", "mevis", "visa", "referformer", "revos"),
                   help="davis17: 'visa' (GLUS / VISA, mask_dict.pkl; default) or 'referformer' (DAVIS "
                        "unsupervised toolkit over the four annotator sets); others have one")
    p.add_argument("--output", required=True, help="RESULT.json to write (a per-expression CSV goes beside it)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--per-frame", action="store_true", help="also write per-frame J and F")
    p.add_argument("--official-drop-missing", action="store_true",
                   help="reproduce the official evaluator: silently drop missing or mis-sized predictions")
    p.add_argument("--corrected", action="store_true",
                   help="ReVOS: compute A and R on binary masks instead of the official 0/255 arithmetic")
    p.set_defaults(func=_runner("glus.eval.command:evaluate_command"))


def add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="check predictions for completeness and write the server's zip")
    p.add_argument("--dataset", choices=("mevis", "refytvos"), required=True)
    p.add_argument("--split-dir", required=True,
                   help="the split's annotations (meta_expressions) to check completeness against")
    p.add_argument("--split", default=None, help="split name where the folder does not imply it")
    p.add_argument("--convert", action="store_true",
                   help="re-encode readable masks that are not 8-bit 0/255 (0/1, palette, 16-bit) instead of "
                        "rejecting them")
    p.add_argument("pred_dir")
    p.add_argument("out_zip")
    p.set_defaults(func=_runner("glus.eval.submission:submit_command"))


def add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment the objects that expressions refer to in one video")
    p.add_argument("video", help="video file (mp4, mov, webm, avi, mkv), folder of frames, or an image")
    p.add_argument("-e", "--expression", action="append", required=True, dest="expressions",
                   help="referring expression (repeat for several)")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id (released layout or glus format)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--key-frame", default="none", help="none, auto (built-in selector) or a frame index")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--vision-tower", default=None, help="CLIP folder or id (released checkpoints)")
    p.add_argument("--sam2-config", default=None, help="Meta SAM-2 yaml (released checkpoints; default Hiera-L)")
    p.add_argument("--compat", default=None, choices=("official", "stored"),
                   help="fuser gamma of released checkpoints: official (the authors' 1e-6) or stored values")
    p.add_argument("--load-in", type=int, default=None, choices=(4, 8),
                   help="load the LLM in 4 or 8 bits with bitsandbytes (CUDA only)")
    p.add_argument("--mode", default="fast", choices=("fast", "reference"),
                   help="fast path (default) or the released per-frame protocol; both give the same masks")
    p.add_argument("--stride", type=int, default=1, help="use every N-th frame")
    p.add_argument("--max-frames", type=int, default=None, help="use at most this many frames")
    p.add_argument("--start", type=int, default=0, help="first frame to use")
    p.add_argument("--max-batch", type=int, default=16, help="most prompts per LLM call")
    p.add_argument("--rle", action="store_true", help="also write masks_rle.json (COCO RLE)")
    p.add_argument("--no-overlay", action="store_true", help="do not draw the overlay video")
    p.set_defaults(func=_runner("glus.inference.segment:segment_command"))


def build_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glus", description="GLUS referring video object segmentation: segment videos from sentences, run and "
                                 "score benchmarks, convert checkpoints.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_evaluate, add_submit, add_segment, *COMMANDS, *extra):
        add(sub)
    return parser


# Further sub-commands (convert, segment, infer, train, demo) register here.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def add_convert(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_runner("glus.model.convert:convert_command"))


COMMANDS.append(add_convert)


def add_infer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("infer", help="segment a whole dataset split into <out>/<video>/<exp_id>/<frame>.png "
                                     "(sharded, resumable)")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--split-dir", required=True, help="folder with the split's annotation files and frames")
    p.add_argument("--split", default=None, help="split name where the folder does not imply it")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id (released layout or glus format)")
    p.add_argument("--out", required=True, help="prediction folder (a rerun resumes where it stopped)")
    p.add_argument("--vision-tower", default=None, help="CLIP folder or id (released checkpoints)")
    p.add_argument("--sam2-config", default=None, help="Meta SAM-2 yaml (released checkpoints; default Hiera-L)")
    p.add_argument("--compat", default=None, choices=("official", "stored"),
                   help="fuser gamma of released checkpoints: official (the authors' 1e-6) or stored values")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cuda under torchrun: cuda:$LOCAL_RANK)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--key-frame", default="none", choices=("none", "auto"),
                   help="none: one forward pass from frame 0; auto: the built-in key-frame selector "
                        "(for expressions the key-frame file does not list)")
    p.add_argument("--key-frame-json", default=None,
                   help='released key-frame file {"<video>_<exp_id>": "<frame>"}')
    p.add_argument("--num-shards", type=int, default=None, help="split the videos into N shards (with --shard-index)")
    p.add_argument("--shard-index", type=int, default=None, help="the shard this process runs, 0..N-1")
    p.add_argument("--max-batch", type=int, default=16, help="most prompts per LLM call")
    p.add_argument("--load-in", type=int, default=None, choices=(4, 8),
                   help="load the LLM in 4 or 8 bits with bitsandbytes (CUDA only)")
    p.add_argument("--limit-videos", type=int, default=None, help="only the first N videos of the split")
    p.set_defaults(func=_runner("glus.inference.runner:infer_command"))


COMMANDS.append(add_infer)


def add_train(sub: argparse._SubParsersAction) -> None:
    from glus.commands.train import register

    register(sub)


COMMANDS.append(add_train)


def add_data(sub: argparse._SubParsersAction) -> None:
    from glus.commands.data import register

    register(sub)


COMMANDS.append(add_data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
    except GlusError as exc:
        print(f"glus {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"glus {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
