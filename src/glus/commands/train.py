"""``glus train check-official DIR``: glus's training step against the authors' recorded one, as a table.

Exit status 0 when every compared record is within :data:`glus.train.official.TOLERANCES` and every name set
matches, 1 otherwise, 2 for unusable input (one line).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from glus.commands import transformers_progress_bars_off
from glus.fileio import atomic_write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train GLUS; check the training step against the authors' recorded one")
    actions = p.add_subparsers(dest="train_command", required=True)
    check = actions.add_parser("check-official",
                               help="rebuild the authors' recorded training step and compare glus's step to it")
    check.add_argument("dir", help="reference folder with train_step/ (e.g. tests/fixtures/reference/official_tiny)")
    check.add_argument("--record", action="append", default=None, dest="records",
                       help="only this record (repeat for several; default: all)")
    check.add_argument("--json", default=None, help="also write the deviations to this JSON file")
    check.set_defaults(func=run_check_official)


def run_check_official(args: argparse.Namespace) -> int:
    from glus.train.official import TOLERANCES, check_official

    with transformers_progress_bars_off():
        checks = check_official(Path(args.dir), args.records)
    console = Console(soft_wrap=True)
    table = Table(title=f"glus training step vs the authors' ({args.dir})")
    table.add_column("record")
    for quantity in TOLERANCES:
        table.add_column(f"{quantity}\n(<= {TOLERANCES[quantity]:g})", justify="right")
    table.add_column("name sets")
    table.add_column("result")
    for check in checks:
        if check.skipped:
            table.add_row(check.name, *["-"] * len(TOLERANCES), "-", f"skipped: {check.skipped}")
            continue
        cells = [f"{check.deviations.get(q, float('inf')):.2e}" for q in TOLERANCES]
        sets = ", ".join(f"{k} {'ok' if ok else 'DIFFER'}" for k, ok in check.sets.items())
        table.add_row(check.name, *cells, sets, "[green]pass[/]" if check.passed else "[red]FAIL[/]")
    console.print(table)
    for check in checks:
        for note in check.notes:
            console.print(f"  {check.name}: {note}", highlight=False)
    if args.json:
        atomic_write_json(args.json, {"tolerances": TOLERANCES, "records": [c.to_dict() for c in checks]}, indent=2)
    return 0 if all(c.passed for c in checks) else 1
