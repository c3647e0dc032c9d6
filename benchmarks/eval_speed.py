"""Speed of ``glus evaluate`` against a plain re-implementation of the official per-frame algorithm.

Both score the six prediction sets of the SA-V split (``tests/fixtures/tools/make_sav_mevis.py``) with the MeViS
protocol, in the same run, with the same number of worker processes; the script checks that every
per-expression J and F is identical and prints expression-frames per second and the speed-up.

The baseline (``benchmarks/official_reference.py``) works as the official evaluator does: per expression,
``cv2.imread`` of every predicted frame, COCO-RLE decoding of the ground truth, full-frame ``seg2bmap`` and
full-frame ``cv2.dilate`` with a ``skimage`` disk; expressions spread over a process pool.

Usage: ``python benchmarks/eval_speed.py [--workers N] [--data DIR] [--seed S] [--repeat R]``
(without ``--data`` the split is built in a temporary folder). Exit status 1 if any number differs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from official_reference import reference_expression  # noqa: E402

from glus.eval.protocols import evaluate  # noqa: E402

SPLIT_TOOL = HERE.parent / "tests" / "fixtures" / "tools" / "make_sav_mevis.py"  # the SA-V split builder, shipped with the tests
METHODS = ["exact", "drift", "morph", "dropout", "wrong_obj", "mixed"]


def _reference_task(task: tuple[str, list[str], list[list]]) -> tuple[float, float]:
    pred_dir, frames, rles = task
    j, f = reference_expression(pred_dir, frames, rles)
    return float(j.mean()), float(f.mean())


def reference_scores(split: Path, pred_root: Path, pool: mp.pool.Pool | None) -> dict[str, tuple[float, float]]:
    """Per-expression (J, F) of one prediction set by the plain official algorithm."""
    videos = json.loads((split / "meta_expressions.json").read_text())["videos"]
    mask_dict = json.loads((split / "mask_dict.json").read_text())
    keys, tasks = [], []
    for vid, video in videos.items():
        for exp_id, exp in video["expressions"].items():
            keys.append(f"{vid}_{exp_id}")
            tasks.append((str(pred_root / vid / exp_id), video["frames"], [mask_dict[str(a)] for a in exp["anno_id"]]))
    results = pool.map(_reference_task, tasks, chunksize=1) if pool is not None else map(_reference_task, tasks)
    return dict(zip(keys, results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--data", type=Path, default=None, help="an existing make_sav_mevis.py output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each (the best is reported)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "sav"
            subprocess.run([sys.executable, str(SPLIT_TOOL), str(data), "--seed",
                            str(args.seed), "--no-frames"], check=True, capture_output=True)
        split = data / "valid_u"
        videos = json.loads((split / "meta_expressions.json").read_text())["videos"]
        exp_frames = sum(len(v["frames"]) * len(v["expressions"]) for v in videos.values()) * len(METHODS)

        pool = mp.get_context("fork").Pool(args.workers) if args.workers > 1 else None
        try:
            best_ref, best_glus = float("inf"), float("inf")
            ref_scores: dict = {}
            glus_scores: dict = {}
            for _ in range(args.repeat):
                start = time.perf_counter()
                ref_scores = {m: reference_scores(split, data / "pred" / m, pool) for m in METHODS}
                best_ref = min(best_ref, time.perf_counter() - start)
                start = time.perf_counter()
                glus_scores = {m: evaluate("mevis", split, data / "pred" / m, workers=args.workers).summary
                               for m in METHODS}
                best_glus = min(best_glus, time.perf_counter() - start)
        finally:
            if pool is not None:
                pool.close()
                pool.join()

    differences = 0
    for m in METHODS:
        for key, (j, f) in ref_scores[m].items():
            got = glus_scores[m]["per_expression"][key]
            if got["J"] != j or got["F"] != f:
                differences += 1
                print(f"DIFFERENT {m} {key}: glus J={got['J']!r} F={got['F']!r}, official J={j!r} F={f!r}")
    ref_rate, glus_rate = exp_frames / best_ref, exp_frames / best_glus
    print(f"SA-V seed {args.seed}: {len(METHODS)} prediction sets, {exp_frames} expression-frames, "
          f"{args.workers} worker(s)")
    print(f"official algorithm (plain): {ref_rate:10.1f} expression-frames/s  ({best_ref:.2f} s)")
    print(f"glus evaluate             : {glus_rate:10.1f} expression-frames/s  ({best_glus:.2f} s)")
    print(f"speed-up                  : {ref_rate and glus_rate / ref_rate:10.1f}x")
    print("numbers identical" if differences == 0 else f"{differences} expressions differ")
    return 0 if differences == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
