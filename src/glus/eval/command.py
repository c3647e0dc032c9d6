"""``glus evaluate``: score a prediction folder against a split, write RESULT.json + CSVs, print a summary.

``--split-dir example`` and ``--pred example`` name the small example split packaged with glus
(``glus/assets/example``: real SA-V masks, see its README) and a prediction set for it, so the command runs
offline from a fresh install. A folder that really is called ``example`` in the working directory wins.
"""

from __future__ import annotations

import argparse
import logging
from importlib import resources
from pathlib import Path

from rich.console import Console
from tqdm import tqdm

from glus.errors import GlusError
from glus.eval.protocols import evaluate
from glus.eval.report import report_paths, summary_table, write_reports

logger = logging.getLogger(__name__)

__all__ = ["EXAMPLE", "example_dir", "resolve_input", "evaluate_command"]

#: The keyword that names the packaged example split (``--split-dir``) or its predictions (``--pred``).
EXAMPLE = "example"


def example_dir() -> Path:
    """Folder of the packaged example (``valid_u/`` = a MeViS-format split, ``pred/`` = predictions)."""
    return Path(str(resources.files("glus").joinpath("assets", "example")))


def resolve_input(value: str, part: str) -> Path:
    """A user path, or the packaged example's ``part`` (``"valid_u"`` / ``"pred"``) for the keyword ``example``."""
    path = Path(value)
    if value == EXAMPLE and not path.exists():
        packaged = example_dir() / part
        if not packaged.is_dir():
            raise GlusError("the packaged example is missing (reinstall glus)", packaged)
        logger.info("using the packaged example %s: %s", part, packaged)
        return packaged
    return path


def _check_output(output: Path) -> None:
    """Fail before the (possibly long) evaluation if the result cannot be written."""
    if output.exists() and output.is_dir():
        raise GlusError("--output must be a file name (RESULT.json), not a folder", output)
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GlusError(f"cannot create the output folder: {exc.strerror or exc}", parent) from None
    if not parent.is_dir():
        raise GlusError("the output folder is not a folder", parent)


def evaluate_command(args: argparse.Namespace) -> int:
    """Run ``glus evaluate`` from parsed arguments (see :func:`glus.cli.add_evaluate`)."""
    split_dir = resolve_input(args.split_dir, "valid_u")
    pred_dir = resolve_input(args.pred, "pred")
    output = Path(args.output)
    _check_output(output)
    bar = tqdm(total=0, unit="expr", desc="evaluating", disable=None, leave=False)
    try:
        result = evaluate(args.dataset, split_dir, pred_dir, split=getattr(args, "split", None),
                          protocol=getattr(args, "protocol", None), workers=args.workers,
                          official_drop_missing=args.official_drop_missing, corrected=args.corrected,
                          progress=bar.update, on_start=lambda n: bar.reset(total=n))
    finally:
        bar.close()
    written = write_reports(result, output, per_frame=args.per_frame)
    console = Console(soft_wrap=True)
    console.print(summary_table(result.summary))
    for key, reason in list(result.summary.get("missing", {}).items())[:10]:
        console.print(f"  missing {key}: {reason}", highlight=False)
    extra = len(result.summary.get("missing", {})) - 10
    if extra > 0:
        console.print(f"  ... and {extra} more (see {report_paths(output)['json'].name})", highlight=False)
    console.print("wrote " + ", ".join(str(p) for p in written.values()), highlight=False)
    return 0
