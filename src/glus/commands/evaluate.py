"""``glus evaluate``: score a prediction folder against a split, write RESULT.json + CSVs, print a summary.

``--split-dir example`` and ``--pred example`` name the small example split packaged with glus and a prediction set
for it (:mod:`glus.eval.example`), so the command runs offline from a fresh install.
"""

from __future__ import annotations

import argparse

from glus.commands import at_least
from glus.data.formats import DATASET_NAMES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score predicted masks against a split (J, F, J&F)")
    p.add_argument("--dataset", choices=DATASET_NAMES, required=True)
    p.add_argument("--split-dir", required=True,
                   help="folder with the split's annotation files ('example': the packaged example split)")
    p.add_argument("--split", default=None, help="split name where the folder does not imply it")
    p.add_argument("--pred", required=True,
                   help="folder holding <video>/<exp_id>/<frame>.png ('example': the packaged example's)")
    p.add_argument("--protocol", default="default", choices=("default", "mevis", "visa", "referformer", "revos"),
                   help="davis17: 'visa' (GLUS / VISA, mask_dict.pkl; default) or 'referformer' (DAVIS "
                        "unsupervised toolkit over the four annotator sets); others have one")
    p.add_argument("--output", required=True, help="RESULT.json to write (a per-expression CSV goes beside it)")
    p.add_argument("--workers", type=at_least(1), default=1)
    p.add_argument("--per-frame", action="store_true", help="also write per-frame J and F")
    p.add_argument("--official-drop-missing", action="store_true",
                   help="reproduce the official evaluator: silently drop missing or mis-sized predictions")
    p.add_argument("--corrected", action="store_true",
                   help="ReVOS: compute A and R on binary masks instead of the official 0/255 arithmetic")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from tqdm import tqdm

    from glus.eval.example import resolve_input
    from glus.eval.files import evaluate_to_files
    from glus.eval.report import report_paths, summary_table

    split_dir = resolve_input(args.split_dir, "valid_u")
    pred_dir = resolve_input(args.pred, "pred")
    bar = tqdm(total=0, unit="expr", desc="evaluating", disable=None, leave=False)
    try:
        result, written = evaluate_to_files(
            args.dataset, split_dir, pred_dir, args.output, split=args.split, protocol=args.protocol,
            workers=args.workers, per_frame=args.per_frame, official_drop_missing=args.official_drop_missing,
            corrected=args.corrected, progress=bar.update, on_start=lambda n: bar.reset(total=n))
    finally:
        bar.close()
    console = Console(soft_wrap=True)
    headline = summary_table(result.summary)
    table = Table(title=headline.title, caption=headline.caption)
    for i, column in enumerate(headline.columns):
        table.add_column(column, justify="right" if i >= headline.first_number else "left")
    for row in headline.rows:
        table.add_row(*row)
    console.print(table)
    if result.summary.get("tiers"):
        tiers = Table(title="per tier (glus synthetic benchmark)")
        for column in ("tier", "expressions", "J", "F", "J&F"):
            tiers.add_column(column, justify="left" if column == "tier" else "right")
        for tier, score in result.summary["tiers"].items():
            tiers.add_row(tier, str(score["expressions"]), *[f"{100 * score[k]:.2f}" for k in ("J", "F", "J&F")])
        console.print(tiers)
    missing = result.summary.get("missing", {})
    for key, reason in list(missing.items())[:10]:
        console.print(f"  missing {key}: {reason}", highlight=False)
    if len(missing) > 10:
        console.print(f"  ... and {len(missing) - 10} more (see {report_paths(args.output)['json'].name})",
                      highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in written.values()), highlight=False)
    return 0
