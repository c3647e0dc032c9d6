"""The suite is self-contained: every fixture conftest names is in the repository, small, and no test reaches
outside the repository for data (a fresh clone has nothing beside it)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import BEDROOM, FIXTURES, OFFICIAL_TINY, REFERENCE_NUMBERS, SAV, SPLIT_TOOL

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def test_fixture_paths_exist_inside_the_repository() -> None:
    for path in (OFFICIAL_TINY / "reference.json", OFFICIAL_TINY / "train_step" / "train_step.npz", BEDROOM,
                 SAV / "sav_000001_manual.json", SPLIT_TOOL, *REFERENCE_NUMBERS.glob("sav_*_official.json")):
        assert path.exists(), path
        assert path.resolve().is_relative_to(ROOT), path
    assert len(list(REFERENCE_NUMBERS.glob("sav_*_official.json"))) == 3
    assert len(list(BEDROOM.glob("*.jpg"))) == 24


def test_fixtures_stay_small() -> None:
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert total < 16 * 2**20, f"tests/fixtures holds {total / 2**20:.1f} MiB"


def test_no_test_reads_outside_the_repository() -> None:
    # A path climbing out of the repository (parents[1].parent, ROOT.parent, the sibling folder of shared material)
    # is data a clone lacks. (The folder's name is spelt with a class so that this line does not match itself.)
    outside = re.compile(r"parents\[1\]\.parent|ROOT\.parent|\.\./shar[e]d|\"shar[e]d\"")
    offenders = [f"{p.name}:{i}" for p in sorted(TESTS.glob("*.py")) if p.name != Path(__file__).name
                 for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert not offenders, offenders
