"""Fitted transformers and the samples -> tensor Batch encoder.

Public API:
    Vocabulary, Hasher, IdentityIds, Normalizer, Bucketizer   scikit-learn-style fitted transformers
    PiecewiseLinear                                           bin edges of the ``ple``/``ple_tree`` encodings
    stable_hash(values)                                       run-independent 64-bit hashes
    Encoder(spec).fit(train_table).transform(table) -> Batch
    Batch                                                     dense / sparse / bags / labels tensors
Row convention of every embedding table: 0 = missing/padding (zeros, no gradient), 1 = OOV, 2.. = known values.
"""

from deepcrossing.encoding.batch import Batch
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.encoding.numeric import PiecewiseLinear
from deepcrossing.encoding.transformers import (
    OOV,
    PAD,
    Bucketizer,
    Hasher,
    IdentityIds,
    Normalizer,
    Vocabulary,
    stable_hash,
)

__all__ = ["OOV", "PAD", "Batch", "Bucketizer", "Encoder", "Hasher", "IdentityIds", "Normalizer",
           "PiecewiseLinear", "Vocabulary", "stable_hash"]
