"""Key-frame selection on the synthetic benchmark's test split: no key frame, the heuristic, the trained scorer and
the oracle, with the embedded model (or any model with a scorer, ``--model``).

* **none**: one forward pass from frame 0 (``glus infer --key-frame none``), run with ``--save-frame-features`` so
  that its first pass, scored per frame by ``glus evaluate --per-frame``, is also the rank-correlation data;
* **heuristic** / **trained**: ``--key-frame auto`` with ``--key-frame-scorer heuristic`` / ``trained``;
* **oracle**: the frame whose first-pass IoU (per-frame J of the ``none`` run) is highest, given to ``glus infer``
  as a released-format key-frame file: the best any selector could do from this first pass.

The rank correlation is that of each selector's first-pass scores with the true per-frame IoU
(:func:`glus.train.scorer.selection_metrics`). Resumable (every run keeps its folder under ``--runs``)::

    python experiments/key_frames.py --data /path/to/synth --runs runs/key_frames

writes ``docs/key_frames.md`` and ``experiments/key_frames_results.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SELECTORS = ("none", "heuristic", "trained", "oracle")

logger = logging.getLogger("key_frames")


def scores_of(split: Path, pred: Path, per_frame: bool = False) -> tuple[dict[str, float], Path]:
    """J&F (%) overall and per tier of a prediction folder; the per-frame CSV path (written with ``per_frame``)."""
    from glus.data.benchmark import read_tiers, tier_scores
    from glus.eval.files import evaluate_to_files

    result, paths = evaluate_to_files("mevis", split, pred, pred.with_name(pred.name + ".eval.json"),
                                      per_frame=per_frame)
    tiers = tier_scores(result.summary["per_expression"], read_tiers(split))
    return {name: round(float(s["J&F"]) * 100, 2) for name, s in tiers.items()}, paths.get("frames", Path())


def oracle_key_frames(split: Path, frames_csv: Path, out: Path) -> Path:
    """The released-format key-frame file of the best first-pass frame (highest J, earliest on ties)."""
    from glus.data.formats import load_dataset
    from glus.fileio import atomic_write_json
    from glus.inference.keyframes import select_key_frame
    from glus.train.scorer import read_frame_labels

    labels = read_frame_labels(frames_csv)
    table = {}
    for video in load_dataset("mevis", split).videos.values():
        for expression in video.expressions.values():
            if expression.key in labels:
                table[expression.key] = video.frame_names[select_key_frame(labels[expression.key])]
    atomic_write_json(out, table, indent=1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "synth",
                        help="benchmark root (written with the embedded recipe's command when missing)")
    parser.add_argument("--model", default=str(ROOT / "src" / "glus" / "assets" / "demo" / "model"))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "key_frames")
    parser.add_argument("--out-md", type=Path, default=ROOT / "docs" / "key_frames.md")
    parser.add_argument("--out-json", type=Path, default=ROOT / "experiments" / "key_frames_results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from glus.fileio import atomic_write_json
    from glus.inference.runner import InferSettings, run_dataset
    from glus.model.key_frame_scorer import load_key_frame_scorer
    from glus.train.scorer import compare_selectors, load_labelled_expressions

    if not (args.data / "test").is_dir():
        from glus.data.benchmark import write_benchmark

        write_benchmark(args.data, (1000, 50, 100), seed=0)
    split = args.data / "test"
    runs: Path = args.runs
    runs.mkdir(parents=True, exist_ok=True)
    settings = {
        "none": dict(key_frame="none", save_frame_features=True),
        "heuristic": dict(key_frame="auto", key_frame_scorer="heuristic"),
        "trained": dict(key_frame="auto", key_frame_scorer="trained"),
    }
    results: dict[str, Any] = {"j_and_f": {}}
    frames_csv = None
    for name in SELECTORS:
        pred = runs / name
        if name == "oracle":
            keys = oracle_key_frames(split, frames_csv, runs / "oracle_key_frames.json")
            options = dict(key_frame="none", key_frame_json=str(keys))
        else:
            options = settings[name]
        logger.info("%s: glus infer -> %s", name, pred)
        run_dataset(InferSettings("mevis", split, pred, args.model, **options), progress=False)
        results["j_and_f"][name], csv_path = scores_of(split, pred, per_frame=name == "none")
        if name == "none":
            frames_csv = csv_path
        logger.info("%s: J&F %.2f", name, results["j_and_f"][name]["all"])
    expressions = load_labelled_expressions("mevis", split, runs / "none", frames_csv)
    ranking = compare_selectors(expressions, load_key_frame_scorer(args.model))
    results["first_pass"] = ranking
    command = "python experiments/key_frames.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["command"] = command
    atomic_write_json(args.out_json, results, indent=1)
    write_doc(results, args.out_md)
    logger.info("wrote %s and %s", args.out_md, args.out_json)
    return 0


def write_doc(results: dict[str, Any], out_md: Path) -> None:
    from glus.data.benchmark import TIERS
    from glus.fileio import atomic_write_text

    columns = ["all", *TIERS]
    lines = ["| key frame | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in SELECTORS:
        row = results["j_and_f"][name]
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    rank = ["| scorer | rank corr. (mean per expression) | rank corr. (all frames) | first-pass IoU at its key frame "
            "| L1 |", "|---|---|---|---|---|"]
    for name in ("heuristic", "trained"):
        m = results["first_pass"][name]
        rank.append(f"| {name} | {m['spearman']:.3f} | {m['spearman_pooled']:.3f} | {m['key_frame_iou']:.3f} | "
                    f"{m['l1']:.3f} |")
    m = results["first_pass"]["trained"]
    rank.append(f"| (oracle / frame 0) | | | {m['oracle_iou']:.3f} / {m['first_frame_iou']:.3f} | |")
    atomic_write_text(out_md, KEY_FRAMES_DOC.format(table="\n".join(lines), rank="\n".join(rank),
                                                    command=results["command"]))


KEY_FRAMES_DOC = """# Key-frame selection on the synthetic benchmark

The embedded model on the test split of the synthetic benchmark (J&F %, overall and per tier). *none* segments
from frame 0; *heuristic* and *trained* pick the key frame from the first pass with SAM-2's IoU x object score or
with the trained scorer (`glus train scorer`, shipped beside the model); *oracle* starts from the frame whose
first-pass IoU is highest (a released-format key-frame file), the ceiling of any selector of this first pass.

{table}

How well each scorer ranks the first pass's frames by their true IoU (per-frame J of the *none* run):

{rank}

Regenerate (resumable, about ten minutes on 2 CPU cores):

    {command}

How the scorer was trained is in `docs/training.md` ("Key-frame scorer").
"""


if __name__ == "__main__":
    sys.exit(main())
