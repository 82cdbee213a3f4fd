"""Raw rating logs in: MovieLens readers (CSV, '::' dat, ml-100k), a person's own logs, download, synthetic data.

Everything here ends in the normalized :class:`~deepcrossing.data.schema.Dataset` (see ``schema.py``).

Example:
    >>> from deepcrossing.data import load_dataset
    >>> ds = load_dataset("ml-latest-small", workdir="work")   # doctest: +SKIP
"""

from deepcrossing.data.download import DATASETS, download, find_cached_movielens
from deepcrossing.data.readers import ColumnMapping, load_dataset
from deepcrossing.data.schema import Dataset

__all__ = ["DATASETS", "ColumnMapping", "Dataset", "download", "find_cached_movielens", "load_dataset"]
