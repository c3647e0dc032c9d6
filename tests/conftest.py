"""Shared fixtures: the test data shipped in ``tests/fixtures`` (see its README) and the authors' tiny reference
checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL_TINY = FIXTURES / "reference" / "official_tiny"  # the authors' tiny checkpoint and their recorded runs
REFERENCE_NUMBERS = FIXTURES / "reference"  # the official evaluators' numbers on the SA-V split (*_official.json)
BEDROOM = FIXTURES / "data" / "bedroom"  # 24 real JPEG frames, 960x540
SAV = FIXTURES / "data" / "sav_000001"  # real SA-V masklets (COCO RLE)
SPLIT_TOOL = FIXTURES / "tools" / "make_sav_mevis.py"  # builds the MeViS / ReVOS / DAVIS17 splits from SAV
REPO = FIXTURES.parent.parent


def load_script(relative: str) -> ModuleType:
    """A script of the repository that is not part of the package (``experiments/*.py``), imported by path."""
    path = REPO / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def official_tiny() -> Path:
    return OFFICIAL_TINY


@pytest.fixture(scope="session")
def reference() -> dict:
    """The authors' recorded runs of the tiny checkpoint (``reference.json``)."""
    return json.loads((OFFICIAL_TINY / "reference.json").read_text())


@pytest.fixture(scope="session")
def tok():
    """The authors' tiny slow LLaMA tokenizer (703 ids: the tiny preset's vocabulary)."""
    from glus.tokenizer import GLUSTokenizer

    return GLUSTokenizer.from_pretrained(OFFICIAL_TINY)


def pytest_configure(config):
    # The tests run tiny models: one intra-op thread is fastest, and with pytest-xdist it keeps 2 workers on
    # 2 cores from oversubscribing (OpenMP spin-waits make oversubscribed torch many times slower).
    import torch

    torch.set_num_threads(1)
