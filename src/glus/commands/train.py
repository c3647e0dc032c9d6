"""``glus train``: run or resume training (:mod:`glus.train.trainer`), ``check-official`` (glus's step against the
authors' recorded one, as a table: exit 0 only when every compared record is within
:data:`glus.train.official.TOLERANCES` and every name set matches, else 1) and ``export`` (a run's model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from glus.commands import transformers_progress_bars_off
from glus.errors import GLUSError
from glus.fileio import atomic_write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train GLUS (the authors' recipe); check the step against theirs; export a run's model",
        description="glus train [--config CONFIG.yaml] [--resume] [KEY=VALUE ...]   run (or continue) training\n"
                    "glus train check-official DIR [--record NAME] [--json OUT]    the authors' recorded step\n"
                    "glus train export RUN [--out DIR]                              LoRA-merged model of a run",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="*", metavar="ARG",
                   help="KEY=VALUE overrides of the config (e.g. steps=200 data=[mevis=data/mevis/train:1]), or "
                        "check-official DIR, or export RUN")
    p.add_argument("--config", default=None, help="YAML file of training settings (see glus.train.config)")
    p.add_argument("--data", action="append", default=[], metavar="NAME=PATH[:RATE]",
                   help="a training dataset in its official layout (repeat for a mix; adds to the config's data), "
                        "e.g. --data mevis=data/mevis/train:1 --data refytvos=data/ref-youtube-vos:1")
    p.add_argument("--resume", action="store_true", help="continue the run in its out folder from its newest "
                                                         "complete checkpoint")
    p.add_argument("--record", action="append", default=None, dest="records",
                   help="check-official: only this record (repeat for several; default: all)")
    p.add_argument("--json", default=None, help="check-official: also write the deviations to this JSON file")
    p.add_argument("--out", default=None, help="export: folder for the model (default RUN/model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    words = list(args.words)
    if words and words[0] == "check-official":
        if len(words) != 2:
            raise GLUSError("usage: glus train check-official DIR [--record NAME] [--json OUT]")
        return run_check_official(Path(words[1]), args.records, args.json)
    if words and words[0] == "export":
        if len(words) != 2:
            raise GLUSError("usage: glus train export RUN [--out DIR]")
        return run_export(Path(words[1]), args.out)
    return run_training(args.config, words, args.resume, args.data)


def run_training(config: str | None, overrides: list[str], resume: bool, data: list[str]) -> int:
    from glus.train.config import load_train_config
    from glus.train.trainer import Trainer

    settings = load_train_config(config, overrides, extra_data=data)
    with transformers_progress_bars_off():
        summary = Trainer(settings, resume=resume).run()
    if summary.model_dir is not None:
        terms = ", ".join(f"{k} {v:.4f}" for k, v in summary.losses.items())
        Console(soft_wrap=True).print(f"trained {summary.step} steps in {summary.seconds:.0f}s ({terms}); model: "
                                      f"{summary.model_dir}", highlight=False)
    return 0


def run_export(run_dir: Path, out: str | None) -> int:
    from glus.train.trainer import export_run

    with transformers_progress_bars_off():
        folder = export_run(run_dir, Path(out) if out else None)
    Console(soft_wrap=True).print(f"model (LoRA merged) -> {folder}", highlight=False)
    return 0


def run_check_official(folder: Path, records: list[str] | None, json_out: str | None) -> int:
    from glus.train.official import TOLERANCES, check_official

    with transformers_progress_bars_off():
        checks = check_official(folder, records)
    console = Console(soft_wrap=True)
    table = Table(title=f"glus training step vs the authors' ({folder})")
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
    if json_out:
        atomic_write_json(json_out, {"tolerances": TOLERANCES, "records": [c.to_dict() for c in checks]}, indent=2)
    return 0 if all(c.passed for c in checks) else 1
