"""``glus demo``: the embedded model on the bundled clips, fully offline (:func:`glus.demo.run_demo`)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="segment the bundled synthetic clips with the embedded model (offline) and "
                                    "score each expression")
    p.add_argument("--out", default="glus-demo", help="output folder (default glus-demo)")
    p.add_argument("--clip", action="append", default=None, metavar="NAME",
                   help="a bundled clip (repeatable; default: all of them)")
    p.add_argument("--video", default=None, help="your own clip instead (a video file or a folder of frames) ...")
    p.add_argument("-e", "--expression", action="append", default=[], dest="expressions", metavar="TEXT",
                   help="... and what to segment in it (repeatable)")
    p.add_argument("--model", default=None, help="a glus checkpoint folder (default: the embedded demo model)")
    p.add_argument("--key-frame", choices=("auto", "none"), default="auto",
                   help="auto: key-frame selection, then propagation both ways (default); none: from frame 0")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from glus.demo import run_demo

    report = run_demo(args.out, clips=args.clip, video=args.video, expressions=args.expressions, model=args.model,
                      device=args.device, key_frame=args.key_frame)
    console = Console(soft_wrap=True)
    scored = bool(report.tiers)
    table = Table(title=f"glus demo: {len(report.rows)} expressions in {report.seconds:.1f} s")
    for column in ("clip", "tier", "expression", *(("J", "F", "J&F") if scored else ())):
        table.add_column(column, justify="right" if column in ("J", "F", "J&F") else "left")
    for row in report.rows:
        numbers = [f"{100 * row[k]:.1f}" for k in ("J", "F", "J&F")] if scored else []
        table.add_row(row["clip"], row["tier"] or "-", row["expression"], *numbers)
    if scored:
        table.add_section()
        for tier, score in report.tiers.items():
            table.add_row("" if tier != "all" else "all", tier if tier != "all" else "",
                          f"mean of {score['expressions']} expressions",
                          *[f"{100 * score[k]:.1f}" for k in ("J", "F", "J&F")], style="bold" if tier == "all" else None)
    console.print(table)
    if scored:
        console.print(f"J&F {100 * report.tiers['all']['J&F']:.1f} over the bundled clips "
                      f"(scores: {report.out_dir / 'scores.csv'})", highlight=False)
    else:
        console.print("no ground truth for your clip: look at the overlay", highlight=False)
    for name, overlay in report.overlays.items():
        console.print(f"  {name}: {overlay}", highlight=False)
    return 0
