"""The built-in spec ``train`` (and ``benchmarks/compare_peers.py``) uses for a sample file when no spec is given.

SparrowRecSys CSVs get ``specs/sparrow.toml``; our Parquet samples get ``specs/movielens.toml``, plus the
item-CF score ``userItemCFScore`` when the samples were prepared with it (``prepare --itemcf``; the column is
NULL otherwise). Chosen on validation AUC (Deep Crossing, 3 seeds): ml-latest-small 0.7973 with it vs 0.7839
without, ml-100k 0.7511 vs 0.7456. Samples with the static user attributes (a dataset with a users table:
ml-100k, ml-1m) add :data:`USER_ATTRIBUTE_FEATURES`; on ml-100k's valid split (item-CF samples, 3 seeds) AUC
0.7528 +- 0.0006 with them vs 0.7513 +- 0.0001 without (GAUC 0.6886 vs 0.6885, NDCG@10 0.7986 vs 0.8015); age
numeric (0.7528) vs categorical (0.7526); zip prefix min_count 500 rows (0.7528) vs 100 (0.7511), 1000
(0.7516), no zip prefix (0.7515).

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

ZIP_MIN_COUNT = 500
"""A zip prefix seen in fewer train rows shares the unknown row (ml-100k: ~100 rows per user)."""
ITEMCF_FEATURE = Feature("userItemCFScore", "numeric", "context", transform="standardize")
"""The item-CF score as the default spec reads it (a pair column, served per candidate)."""


USER_ATTRIBUTE_FEATURES = (
    Feature("userGender", "categorical", "user", dim=4),
    Feature("userAge", "numeric", "user", transform="standardize"),
    Feature("userOccupation", "categorical", "user", dim=4, min_count=200),
    Feature("userZipPrefix", "categorical", "user", dim=4, min_count=ZIP_MIN_COUNT),
)
"""The static user attributes as the default spec reads them (samples of a dataset with a users table).
Rare values (counted in train rows) share the unknown row, as does a NULL (a user without a row)."""


def _manifest(train_file: Path) -> dict[str, object]:
    manifest = Path(train_file).parent / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        return read_json_object(manifest)
    except InputError:
        return {}


def samples_have_itemcf(train_file: Path) -> bool:
    """True when the sample file's folder has a manifest whose feature config has ``itemcf`` on."""
    config = _manifest(train_file).get("config")
    return isinstance(config, dict) and config.get("itemcf") is True


def samples_have_user_attributes(train_file: Path) -> bool:
    """True when the sample file's folder has a manifest listing every user attribute column (``prepare`` of
    a dataset with a users table: ml-100k, ml-1m)."""
    features = _manifest(train_file).get("features")
    names = {f.get("name") for f in features if isinstance(f, dict)} if isinstance(features, list) else set()
    return all(f.name in names for f in USER_ATTRIBUTE_FEATURES)


def with_user_attributes(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with :data:`USER_ATTRIBUTE_FEATURES` appended (those it reads already are kept as they are).

    Example:
        >>> [f.name for f in with_user_attributes(load_builtin("movielens")).spec.features][-2:]
        ['userOccupation', 'userZipPrefix']
    """
    have = {f.name for f in config.spec.features}
    add = tuple(f for f in USER_ATTRIBUTE_FEATURES if f.name not in have)
    return dataclasses.replace(config, spec=FeatureSpec((*config.spec.features, *add))) if add else config


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
    config = with_itemcf(config) if samples_have_itemcf(train_file) else config
    return with_user_attributes(config) if samples_have_user_attributes(train_file) else config


__all__ = ["ITEMCF_FEATURE", "USER_ATTRIBUTE_FEATURES", "default_config", "samples_have_itemcf",
           "samples_have_user_attributes", "with_itemcf", "with_user_attributes"]
