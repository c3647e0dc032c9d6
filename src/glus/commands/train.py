"""``glus train``: run or resume training (:mod:`glus.train.trainer`), ``check-official`` (glus's step against the
authors' recorded one, as a table: exit 0 only when every compared record is within
:data:`glus.train.official.TOLERANCES` and every name set matches, else 1), ``export`` (a run's model) and
``scorer`` (a key-frame scorer for a checkpoint, :mod:`glus.train.scorer`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from glus.commands import add_model_arguments, at_least, transformers_progress_bars_off
from glus.errors import GLUSError
from glus.fileio import atomic_write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train GLUS (the authors' recipe); check the step against theirs; export a run's model",
        description="glus train [--config CONFIG.yaml] [--resume] [KEY=VALUE ...]   run (or continue) training\n"
                    "glus train check-official DIR [--record NAME] [--json OUT]    the authors' recorded step\n"
                    "glus train export RUN [--out DIR]                              LoRA-merged model of a run\n"
                    "glus train scorer --model M --data NAME=SPLIT --work W [--out DIR] [KEY=VALUE ...]\n"
                    "                                                               key-frame scorer for M",
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
    p.add_argument("--out", default=None, help="export: folder for the model (default RUN/model); scorer: folder "
                                              "for the scorer (default: the --model folder, which serves it)")
    scorer = p.add_argument_group("glus train scorer", "label a checkpoint's own first passes on --data (one "
                                  "training split) and fit its key-frame scorer; KEY=VALUE words set the fit "
                                  "(glus.train.scorer.ScorerTrainConfig: epochs, hidden_size, lr, val_fraction, ...)")
    scorer.add_argument("--work", default=None, help="folder for the first pass, its labels, the curve and the report "
                                                     "(a rerun resumes)")
    add_model_arguments(scorer, required=False, key_frame_scorer=False)
    scorer.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N for the first pass")
    scorer.add_argument("--max-batch", type=at_least(1), default=16, help="most prompts per LLM call")
    scorer.add_argument("--limit-videos", type=at_least(1), default=None,
                        help="first pass on the split's first N videos only")
    scorer.add_argument("--pred", default=None, help="an existing first pass (glus infer --save-frame-features) "
                                                     "instead of running one; with --labels")
    scorer.add_argument("--labels", default=None, help="its per-frame scores (glus evaluate --per-frame's "
                                                       "RESULT.frames.csv); with --pred")
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
    if words and words[0] == "scorer":
        return run_scorer(args, words[1:])
    return run_training(args.config, words, args.resume, args.data)


def run_scorer(args: argparse.Namespace, overrides: list[str]) -> int:
    from glus.train.config import parse_data_source
    from glus.train.scorer import ScorerJob, load_scorer_config, train_scorer

    if len(args.data) != 1 or args.work is None:
        raise GLUSError("usage: glus train scorer --model M --data NAME=SPLIT --work W [--out DIR] [KEY=VALUE ...] "
                        "(one --data: the split whose first passes are labelled)")
    if (args.pred is None) != (args.labels is None):
        raise GLUSError("glus train scorer: --pred and --labels go together (an existing first pass and its "
                        "per-frame scores)")
    config = load_scorer_config(overrides)  # before any work: a typo in a setting costs nothing
    source = parse_data_source(args.data[0])
    out = args.out
    if out is None:
        if args.model is None or not Path(args.model).expanduser().is_dir():
            raise GLUSError("glus train scorer: say where the scorer goes (--out DIR); only a local --model folder "
                            "is its default")
        out = args.model
    options = {"vision_tower": args.vision_tower, "sam2_config": args.sam2_config, "compat": args.compat,
               "load_in_bits": args.load_in_bits}
    job = ScorerJob(source.name, source.path, args.work, out, model=args.model, split=source.split, pred=args.pred,
                    labels=args.labels, limit_videos=args.limit_videos, device=args.device, dtype=args.dtype,
                    max_batch=args.max_batch, model_options=options)
    with transformers_progress_bars_off():
        report = train_scorer(job, config)
    console = Console(soft_wrap=True)
    table = Table(title=f"key-frame scorer on {report['data']['held_out_videos']} held-out videos"
                  if report["held_out"] else "key-frame scorer (no held-out videos: training expressions)")
    for column in ("selector", "rank corr.", "pooled rank corr.", "IoU at key frame", "L1"):
        table.add_column(column, justify="right")
    metrics = report["held_out"] or report["train"]
    for name in ("trained", "heuristic"):
        m = metrics[name]
        table.add_row(name, f"{m['spearman']:.3f}", f"{m['spearman_pooled']:.3f}", f"{m['key_frame_iou']:.3f}",
                      f"{m['l1']:.3f}")
    m = metrics["trained"]
    table.add_row("oracle / frame 0", "", "", f"{m['oracle_iou']:.3f} / {m['first_frame_iou']:.3f}", "")
    console.print(table)
    console.print(f"scorer (epoch {report['best_epoch']} of {report['epochs_run']}) -> {report['scorer']}; "
                  f"report: {Path(args.work) / 'scorer_report.json'}", highlight=False)
    return 0


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
