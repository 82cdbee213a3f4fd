"""The Feature layer: leakage-free, point-in-time samples from normalized rating logs, and the online records.

Public API:
    FeatureConfig                  label threshold, N of recent positives, split kind/fractions/seed
    build_samples(dataset, config, out_dir, fmt, spark=None)   train/valid/test files + items.parquet +
                                   manifest.json, with DuckDB or (spark=SparkOptions(...)) Apache Spark
    SparkOptions                   Spark master, settings and driver memory for build_samples
    online_records(dataset, config, history_n=, max_candidates=) -> OnlineRecords
                                   latest user/movie features (same SQL as the samples), histories, rated
                                   sets, candidates and cold-start records: everything the service stores
    latest_features(dataset, config)               (users, movies) features as of the end of the data
    user_side_columns(), movie_side_columns()      which sample columns describe the user / the movie
    cold_features(side, key)       the features of a user / movie with no earlier ratings (cold start)
    read_samples(path)             our Parquet or a SparrowRecSys CSV -> pyarrow Table of the sample schema
    SAMPLE_COLUMNS                 name -> (type, meaning) of every sample column
    COLUMNS                        name -> Column(type, side, cold, meaning): the one column definition

Example:
    >>> from deepcrossing.features import FeatureConfig, build_samples  # doctest: +SKIP
    >>> build_samples(dataset, FeatureConfig(recent_n=10), "samples")["splits"]["test"]["rows"]  # doctest: +SKIP
"""

from deepcrossing.features.columns import (
    COLUMNS,
    SAMPLE_COLUMNS,
    Column,
    cold_features,
    movie_side_columns,
    user_side_columns,
)
from deepcrossing.features.config import FeatureConfig
from deepcrossing.features.online import OnlineRecords, latest_features, online_records
from deepcrossing.features.samples import build_samples, compute_samples
from deepcrossing.features.spark import SparkOptions
from deepcrossing.features.sparrow import SPARROW_COLUMNS, read_samples
from deepcrossing.features.sql import feature_sql

__all__ = [
    "COLUMNS",
    "SAMPLE_COLUMNS",
    "SPARROW_COLUMNS",
    "SparkOptions",
    "Column",
    "FeatureConfig",
    "OnlineRecords",
    "build_samples",
    "cold_features",
    "compute_samples",
    "feature_sql",
    "latest_features",
    "movie_side_columns",
    "online_records",
    "read_samples",
    "user_side_columns",
]
