"""The command layer: one module per ``glus`` sub-command, the only modules that see argparse, rich and exit codes.

Every module has ``register(sub)`` (declare the sub-command and its arguments, ``set_defaults(func=run)``) and
``run(args) -> int`` (call one typed library function, report, return the exit status); :mod:`glus.cli` lists them.
A module imports its library lazily, inside ``run``, so ``glus --help`` stays fast.

Library errors name parameters, not flags (:class:`glus.errors.ParameterError`); options keep the library's
parameter names as their ``dest`` so that :func:`flag_names` can call them by their flags.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator


@contextlib.contextmanager
def transformers_progress_bars_off() -> Iterator[None]:
    """transformers' per-file progress bars (CLIP loading / saving) would bury a command's report or one-line
    error: off for the block, restored after."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def at_least(low: int):
    """An argparse ``type`` for integers ``>= low``: a bad value is refused at parse time, before anything loads,
    as ``--max-batch must be >= 1, got 0``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"  # what argparse calls the type in its messages
    return parse


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (the command, the option and the problem) and a pointer to
    ``--help``, exit status 2: the same shape as every other user error of glus, where argparse would print its
    usage block first."""

    def error(self, message: str):  # type: ignore[override]
        # argparse writes "argument --max-batch: must be >= 1"; the rest of glus writes "--max-batch must be >= 1".
        if message.startswith("argument ") and ": " in message:
            flags, _, problem = message[len("argument "):].partition(": ")
            flag = max(flags.split("/"), key=len)
            message = f"{flag} {problem}" if problem.startswith("must ") else f"{flag}: {problem}"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")  # argparse's own stderr path


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{dest: "--long-flag"}`` for the options of ``parser``: the names a library parameter has on this command."""
    return {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}


def add_model_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, required: bool = True,
                        key_frame_scorer: bool = True) -> None:
    """The options that say which model to load and how (``glus segment``, ``glus infer``, ``glus train scorer``:
    not ``required`` there, and without ``--key-frame-scorer``, which its first pass does not use)."""
    p.add_argument("--model", required=required, help="checkpoint folder or hub id (released layout or glus format)")
    p.add_argument("--vision-tower", default=None, help="CLIP folder or id (released checkpoints)")
    p.add_argument("--sam2-config", default=None, help="Meta SAM-2 yaml (released checkpoints; default Hiera-L)")
    p.add_argument("--compat", default=None, choices=("official", "stored"),
                   help="fuser gamma of released checkpoints: official (the authors' 1e-6) or stored values")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--load-in", type=int, default=None, choices=(4, 8), dest="load_in_bits",
                   help="load the LLM in 4 or 8 bits with bitsandbytes (CUDA only)")
    if not key_frame_scorer:
        return
    p.add_argument("--key-frame-scorer", default="auto", metavar="auto|trained|heuristic|DIR",
                   help="what scores --key-frame auto's first pass: the checkpoint's trained scorer where it has one "
                        "(auto), it or an error (trained), the untrained heuristic, or a folder holding a scorer "
                        "(glus train scorer --out)")
