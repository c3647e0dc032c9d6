"""The paper's ablation (GLUS Table 4) at small scale: what global context, local query frames, the memory bank, the
object contrastive loss and key-frame selection each add, on the synthetic benchmark.

Every variant trains the ``small`` preset with the embedded model's recipe (``configs/train/embedded.yaml``) and the
same budget, for several seeds, then segments the benchmark's test split with ``glus infer`` and is scored with
``glus evaluate``'s code, overall and per tier:

=================  ==================================================================================
variant            what changes from the embedded recipe
=================  ==================================================================================
local-only         no context frames (``context_frames 0``): query frames, no memory bank, no contrastive loss
global-only        context frames and one query frame per prompt (``query_frames 1``), no memory bank or
                   contrastive loss: every frame is segmented from the global view alone
global+local       4 context + 4 query frames, no memory bank, no contrastive loss
+memory-bank       global+local with SAM-2's memory bank
+contrastive       +memory-bank with the object contrastive loss (the embedded recipe)
+key-frame         the +contrastive models, segmented from the selected key frame (``--key-frame auto``)
=================  ==================================================================================

Resumable across machines and sessions: each run trains under ``--runs`` (checkpoints, predictions; not kept in
git), and its scores go to ``--results`` (``experiments/ablation/<variant>-s<seed>.json``, kept in git, with the
budget they were made at). A run whose scores are there is never redone; an interrupted training continues from
its last checkpoint, an interrupted inference from its last finished expression. Runs go seed by seed (every
variant's seed 0 first), so a partial table already compares the variants. Run it in the background, rerun the
same command after an interruption, and commit ``experiments/ablation/`` as runs finish::

    nohup python experiments/ablation.py > runs/ablation.log 2>&1 &

At the end it writes ``docs/ablation.md`` (mean and spread over seeds, overall and per tier, next to the paper's
MeViS numbers, every variant listed with the number of seeds it has so far, then ``experiments/ablation/notes.md``)
and ``experiments/ablation_results.json`` (every run's numbers); ``--table-only`` writes them from the scores
there are, training nothing.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "configs" / "train" / "embedded.yaml"

# name -> (training overrides, key-frame mode at inference, trained like) ; "trained like" reuses another
# variant's models instead of training new ones.
VARIANTS: dict[str, tuple[dict[str, Any], str, str | None]] = {
    "local-only": ({"context_frames": 0, "memory_bank": False, "contrastive": False}, "none", None),
    "global-only": ({"query_frames": 1, "memory_bank": False, "contrastive": False}, "none", None),
    "global+local": ({"memory_bank": False, "contrastive": False}, "none", None),
    "+memory-bank": ({"contrastive": False}, "none", None),
    "+contrastive": ({}, "none", None),
    "+key-frame": ({}, "auto", "+contrastive"),
}
# GLUS paper, Table 4 (MeViS val^u J&F), as quoted in the spec (section 5; from a secondary source, unverified).
PAPER = {"global-only": 44.3, "local-only": 44.4, "global+local": 48.2, "+memory-bank": 49.3, "+contrastive": 50.3}

logger = logging.getLogger("ablation")


def train_run(run: Path, overrides: dict[str, Any], seed: int, data: Path, steps: int | None) -> Path:
    """Train (or finish training) one variant and seed; returns the final model folder."""
    from glus.train.config import load_train_config
    from glus.train.trainer import Trainer, latest_checkpoint

    model = run / "model"
    if (model / "model.safetensors").is_file():
        return model
    settings = {"out": str(run), "seed": seed, "data": [f"mevis={data / 'train'}:1"], "val_data": None,
                **overrides}
    if steps is not None:  # a shorter budget keeps the recipe's share of click steps (SAM-2 learning to follow prompts)
        recipe = load_train_config(RECIPE)
        settings["steps"] = steps
        settings["click_steps"] = recipe.click_steps * steps // recipe.steps
    config = load_train_config(RECIPE, [f"{k}={json.dumps(v)}" for k, v in settings.items()])
    resume = latest_checkpoint(run) is not None
    logger.info("training %s (%s)", run.name, "resuming" if resume else "from scratch")
    Trainer(config, resume=resume).run()
    return model


def test_run(run: Path, model: Path, data: Path, key_frame: str) -> dict[str, float]:
    """Segment the test split with ``model`` and score it: J&F (%) overall and per tier."""
    from glus.data.benchmark import score_predictions
    from glus.inference.runner import InferSettings, run_dataset

    pred = run / f"test-{key_frame}"
    run_dataset(InferSettings("mevis", data / "test", pred, model, key_frame=key_frame), progress=False)
    return score_predictions(data / "test", pred)


def write_table(results: dict[str, dict[str, dict[str, float]]], steps: int, out_md: Path, out_json: Path,
                command: str, notes: str = "") -> None:
    """``docs/ablation.md`` (the table, how to regenerate it, then ``notes``: what the numbers say, written by
    whoever ran them) and the JSON of every run's scores."""
    from glus.data.benchmark import TIERS
    from glus.fileio import atomic_write_json, atomic_write_text

    atomic_write_json(out_json, results, indent=1)
    columns = ["all", *TIERS]
    lines = ["| variant | seeds | " + " | ".join(columns) + " | paper (MeViS) |",
             "|---|---|" + "---|" * len(columns) + "---|"]
    for variant in VARIANTS:  # every variant, those without a finished run too: the table shows what is missing
        runs = results.get(variant, {})
        cells = []
        for column in columns:
            values = [r[column] for r in runs.values() if column in r]
            spread = f" ± {np.std(values):.1f}" if len(values) > 1 else ""  # one seed has no spread to show
            cells.append(f"{np.mean(values):.1f}{spread}" if values else "-")
        paper = PAPER.get(variant)
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + f" | {paper if paper else '-'} |")
    text = ABLATION_DOC.format(table="\n".join(lines), command=command, steps=steps, notes=notes)
    atomic_write_text(out_md, text)


ABLATION_DOC = """# The ablation, reproduced at small scale

J&F (%) on the synthetic benchmark's test split, mean ± standard deviation over seeds, overall and per tier
(see `glus.data.benchmark` for the tiers). Every variant trains the `small` preset from random weights with the
embedded model's recipe (`configs/train/embedded.yaml`) and the same budget, {steps} steps; only the column "paper"
comes from elsewhere: the GLUS paper's MeViS val^u J&F (Table 4, as the spec quotes it; a real 7B model on real
videos, so compare the direction of each step, not the numbers).

{table}

Regenerate (resumable, in the background; about 8 hours on 2 CPU cores at the recipe's budget):

    {command}

`experiments/ablation/` holds each run's scores with its budget and time (`experiments/ablation_results.json`: all
of them together). A variant with fewer seeds than the others is still running: its spread is not comparable yet.
{notes}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "synth",
                        help="benchmark root (written with the embedded recipe's command when missing)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--results", type=Path, default=ROOT / "experiments" / "ablation",
                        help="one JSON of scores per finished run (kept in git: the table's source)")
    parser.add_argument("--table-only", action="store_true", help="write the table from the results there are")
    parser.add_argument("--out-md", type=Path, default=ROOT / "docs" / "ablation.md")
    parser.add_argument("--out-json", type=Path, default=ROOT / "experiments" / "ablation_results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from glus.errors import GLUSError

    try:
        run_all(args)
    except GLUSError as exc:  # a result made at another budget, a bad benchmark folder: one line, no traceback
        parser.exit(2, f"ablation: error: {exc}\n")
    return 0


def read_results(folder: Path, steps: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Every run's scores in ``folder`` (``<variant>-s<seed>.json``), by variant and seed; a result made at another
    budget is an error, not a row of this table."""
    from glus.errors import GLUSError
    from glus.fileio import read_json_object

    results: dict[str, dict[str, dict[str, Any]]] = {}
    for variant in VARIANTS:
        for result_file in sorted(folder.glob(f"{glob.escape(variant)}-s*.json")):
            seed = result_file.stem[len(variant) + 2:]
            if not seed.isdigit():
                continue
            scores = read_json_object(result_file, "ablation result")
            if scores.get("steps") != steps:
                raise GLUSError(f"made with {scores.get('steps')} training steps, not {steps}: give another "
                                "--results folder for another budget", result_file)
            results.setdefault(variant, {})[seed] = scores
    return {variant: dict(sorted(runs.items(), key=lambda kv: int(kv[0]))) for variant, runs in results.items()}


def run_all(args: argparse.Namespace) -> None:
    """Train, segment and score every run without scores yet (all of them unless ``--table-only``); write the
    table."""
    from glus.data.benchmark import TIERS
    from glus.fileio import atomic_write_json
    from glus.train.config import load_train_config
    from glus.train.machine import MACHINE_FILE, read_machines

    if not args.table_only and not (args.data / "test").is_dir():
        from glus.data.benchmark import write_benchmark

        write_benchmark(args.data, (1000, 50, 100), seed=0)
    recipe_steps = load_train_config(RECIPE).steps
    steps = args.steps or recipe_steps
    # The command that makes the whole table at this budget (a call for some variants or seeds makes part of it).
    command = "python experiments/ablation.py" + (f" --steps {steps}" if steps != recipe_steps else "")
    read_results(args.results, steps)  # a result of another budget stops the call before it trains anything
    for seed in args.seeds:
        for variant in args.variants:
            overrides, key_frame, trained_like = VARIANTS[variant]
            run = args.runs / f"{trained_like or variant}-s{seed}"
            result_file = args.results / f"{variant}-s{seed}.json"
            if args.table_only or result_file.is_file():
                continue
            started = time.perf_counter()
            model = train_run(run, VARIANTS[trained_like][0] if trained_like else overrides, seed, args.data,
                              None if steps == recipe_steps else steps)
            scores = {**test_run(run, model, args.data, key_frame), "steps": steps,
                      "seconds": round(time.perf_counter() - started, 1),
                      "trained_on": read_machines(run / MACHINE_FILE)}  # other processors differ like seeds
            atomic_write_json(result_file, scores, indent=1)
            logger.info("%s seed %d: J&F %.2f (%s)", variant, seed, scores["all"],
                        ", ".join(f"{k} {v}" for k, v in scores.items() if k in TIERS))
    # The table shows every result there is, also those of variants and seeds this call was not asked to run.
    results = read_results(args.results, steps)
    notes_file = args.results / "notes.md"  # the reading of the numbers, kept beside them
    notes = "\n" + notes_file.read_text(encoding="utf-8") if notes_file.is_file() else ""
    write_table(results, steps, args.out_md, args.out_json, command, notes)
    logger.info("wrote %s and %s", args.out_md, args.out_json)


if __name__ == "__main__":
    sys.exit(main())
