"""Shared fixtures: where the real data lives, and skips with a reason when it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEEPCROSSING_SHARED_DATA", ROOT.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _require(path: Path) -> Path:
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} is missing, but CI always has ../shared/data")
        pytest.skip(f"real data not found at {path} (set DEEPCROSSING_SHARED_DATA or place ../shared/data)")
    return path


@pytest.fixture(scope="session")
def ml_small_dir() -> Path:
    """The read-only ml-latest-small folder (ratings.csv, movies.csv, tags.csv, links.csv)."""
    return _require(SHARED_DATA / "ml-latest-small")


@pytest.fixture(scope="session")
def sparrow_dir() -> Path:
    """The read-only SparrowRecSys folder (testSamples.csv, movies.csv, links.csv)."""
    return _require(SHARED_DATA / "sparrowrecsys")
