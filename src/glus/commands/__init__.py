"""The command layer: one module per ``glus`` sub-command, the only modules that see argparse, rich and exit codes."""

from __future__ import annotations

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
