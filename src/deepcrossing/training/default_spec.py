"""The built-in spec ``train`` (and ``benchmarks/compare_peers.py``) uses for a sample file when no spec is given.

SparrowRecSys CSVs get ``specs/sparrow.toml``; our Parquet samples get ``specs/movielens.toml``, plus the
item-CF score ``userItemCFScore`` when the samples were prepared with it (``prepare --itemcf``; the column is
NULL otherwise). Chosen on validation AUC (Deep Crossing, 3 seeds): ml-latest-small 0.7973 with it vs 0.7839
without, ml-100k 0.7511 vs 0.7456.

Example:
    >>> [f.name for f in default_config(Path("samples/train.parquet")).spec.features][-1]   # doctest: +SKIP
    'userSecondsSincePrevRating'
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from deepcrossing.config import ExperimentConfig, Feature, FeatureSpec, load_builtin
from deepcrossing.errors import InputError
from deepcrossing.jsonfile import read_json_object

ITEMCF_FEATURE = Feature("userItemCFScore", "numeric", "context", transform="standardize")
"""The item-CF score as the default spec reads it (a pair column, served per candidate)."""


def samples_have_itemcf(train_file: Path) -> bool:
    """True when the sample file's folder has a manifest whose feature config has ``itemcf`` on."""
    manifest = Path(train_file).parent / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        config = read_json_object(manifest).get("config")
    except InputError:
        return False
    return isinstance(config, dict) and config.get("itemcf") is True


def with_itemcf(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with :data:`ITEMCF_FEATURE` after the other pair columns (unchanged if it reads it already).

    Example:
        >>> names = [f.name for f in with_itemcf(load_builtin("movielens")).spec.features]
        >>> names.index("userItemCFScore") == names.index("userGenreAvgRating") + 1
        True
    """
    features = list(config.spec.features)
    if any(f.name == ITEMCF_FEATURE.name for f in features):
        return config
    names = [f.name for f in features]
    at = names.index("userGenreAvgRating") + 1 if "userGenreAvgRating" in names else len(features)
    features.insert(at, ITEMCF_FEATURE)
    return dataclasses.replace(config, spec=FeatureSpec(tuple(features)))


def default_config(train_file: Path) -> ExperimentConfig:
    """The built-in config for ``train_file`` (see the module docstring)."""
    if Path(train_file).suffix.lower() == ".csv":
        return load_builtin("sparrow")
    config = load_builtin("movielens")
    return with_itemcf(config) if samples_have_itemcf(train_file) else config


__all__ = ["ITEMCF_FEATURE", "default_config", "samples_have_itemcf", "with_itemcf"]
