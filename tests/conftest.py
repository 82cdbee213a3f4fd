"""Shared fixtures: where the real data lives, and what happens when it does not.

Missing data is a skip with a reason on a developer's machine, and a failure where a skip would hide a
broken setup: in CI (``CI`` set, as every CI service does), or when ``DEEPCROSSING_SHARED_DATA`` was set
explicitly (the user asked for the real-data tests). A folder that exists but lacks the files the tests
read is a failure too, never a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPLICIT_DATA = os.environ.get("DEEPCROSSING_SHARED_DATA")
SHARED_DATA = Path(EXPLICIT_DATA or ROOT.parent / "shared" / "data")
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def _require(path: Path, *files: str) -> Path:
    """``path`` if it holds ``files``; otherwise skip (developer machine) or fail (CI, explicit data dir)."""
    if not path.is_dir():
        if IN_CI:
            pytest.fail(f"{path} is missing, but CI always has ../shared/data")
        if EXPLICIT_DATA:
            pytest.fail(f"{path} is missing under DEEPCROSSING_SHARED_DATA={EXPLICIT_DATA}")
        pytest.skip(f"real data not found at {path} (set DEEPCROSSING_SHARED_DATA or place ../shared/data)")
    absent = [name for name in files if not (path / name).is_file()]
    if absent:
        pytest.fail(f"{path} exists but lacks {', '.join(absent)}: an incomplete copy of the data")
    return path


@pytest.fixture(scope="session")
def ml_small_dir() -> Path:
    """The read-only ml-latest-small folder (ratings.csv, movies.csv, tags.csv, links.csv)."""
    return _require(SHARED_DATA / "ml-latest-small", "ratings.csv", "movies.csv")


@pytest.fixture(scope="session")
def sparrow_dir() -> Path:
    """The read-only SparrowRecSys folder (testSamples.csv, movies.csv, links.csv)."""
    return _require(SHARED_DATA / "sparrowrecsys", "testSamples.csv")


@pytest.fixture(scope="session")
def ml_100k_dir() -> Path:
    """The read-only ml-100k folder (u.data, u.item, u.user: the release with a users table)."""
    return _require(SHARED_DATA / "ml-100k", "u.data", "u.item", "u.user")
