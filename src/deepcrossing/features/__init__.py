"""The Feature layer: leakage-free, point-in-time samples from normalized rating logs.

Public API:
    FeatureConfig                  label threshold, N of recent positives, split kind/fractions/seed
    build_samples(dataset, config, out_dir, fmt)   train/valid/test files + items.parquet + manifest.json
    latest_features(dataset, config)               (users, movies) features as of the end of the data
    user_side_columns(), movie_side_columns()      which sample columns describe the user / the movie
    read_samples(path)             our Parquet or a SparrowRecSys CSV -> pyarrow Table of the sample schema
    SAMPLE_COLUMNS                 name -> (type, meaning) of every sample column

Example:
    >>> from deepcrossing.features import FeatureConfig, build_samples  # doctest: +SKIP
    >>> build_samples(dataset, FeatureConfig(recent_n=10), "samples")["splits"]["test"]["rows"]  # doctest: +SKIP
"""

from deepcrossing.features.config import FeatureConfig
from deepcrossing.features.samples import (
    build_samples,
    compute_samples,
    latest_features,
    movie_side_columns,
    user_side_columns,
)
from deepcrossing.features.sparrow import SPARROW_COLUMNS, read_samples
from deepcrossing.features.sql import SAMPLE_COLUMNS, feature_sql

__all__ = [
    "SAMPLE_COLUMNS",
    "SPARROW_COLUMNS",
    "FeatureConfig",
    "build_samples",
    "compute_samples",
    "feature_sql",
    "latest_features",
    "movie_side_columns",
    "read_samples",
    "user_side_columns",
]
