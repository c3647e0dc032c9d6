"""``glus submit``: check a prediction folder against a split and write the zip an evaluation server expects
(:mod:`glus.eval.submission`). Every problem found is listed; no zip is written until there is none."""

from __future__ import annotations

import argparse

#: How many problems are listed before "... and N more".
SHOWN_PROBLEMS = 20


def register(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from tqdm import tqdm

    from glus.errors import GLUSError
    from glus.eval.submission import make_submission

    bar = tqdm(total=0, unit="expr", desc="checking", disable=None, leave=False)
    try:
        check = make_submission(args.dataset, args.split_dir, args.pred_dir, args.out_zip, split=args.split,
                                convert=args.convert, progress=bar.update, on_start=lambda n: bar.reset(total=n))
    finally:
        bar.close()
    if not check.ok:
        console = Console(stderr=True, soft_wrap=True)
        for line in check.problems[:SHOWN_PROBLEMS]:
            console.print(f"  {line}", highlight=False)
        if len(check.problems) > SHOWN_PROBLEMS:
            console.print(f"  ... and {len(check.problems) - SHOWN_PROBLEMS} more", highlight=False)
        raise GLUSError(f"{len(check.problems)} problems in the predictions (listed above); no zip written",
                        args.pred_dir)
    out_zip = Path(args.out_zip)
    note = f", {len(check.convert)} converted to 8-bit 0/255" if check.convert else ""
    extra = f"; {check.extra} files not in the split left out" if check.extra else ""
    Console(soft_wrap=True).print(
        f"{check.expressions} expressions, {len(check.files)} frames checked{note}{extra}; "
        f"wrote {out_zip} ({out_zip.stat().st_size / 1e6:.1f} MB, {args.dataset} layout)", highlight=False)
    return 0
