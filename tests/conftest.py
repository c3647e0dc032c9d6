"""Shared fixtures: paths to ../shared and the authors' tiny reference checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL_TINY = SHARED / "reference" / "official_tiny"


@pytest.fixture(scope="session")
def official_tiny() -> Path:
    if not OFFICIAL_TINY.is_dir():
        pytest.skip("../shared/reference/official_tiny is not available")
    return OFFICIAL_TINY


@pytest.fixture(scope="session")
def reference() -> dict:
    """The authors' recorded runs of the tiny checkpoint (``reference.json``)."""
    if not OFFICIAL_TINY.is_dir():
        pytest.skip("../shared/reference/official_tiny is not available")
    return json.loads((OFFICIAL_TINY / "reference.json").read_text())


@pytest.fixture(scope="session")
def tok():
    """The authors' tiny slow LLaMA tokenizer (703 ids: the tiny preset's vocabulary)."""
    from glus.tokenizer import GLUSTokenizer

    if not OFFICIAL_TINY.is_dir():
        pytest.skip("../shared/reference/official_tiny is not available")
    return GLUSTokenizer.from_pretrained(OFFICIAL_TINY)


def pytest_configure(config):
    # The tests run tiny models: one intra-op thread is fastest, and with pytest-xdist it keeps 2 workers on
    # 2 cores from oversubscribing (OpenMP spin-waits make oversubscribed torch many times slower).
    import torch

    torch.set_num_threads(1)
