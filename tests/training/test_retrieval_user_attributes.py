"""The offline ranker of `evaluate --retrieval` (training/retrieval_data.py) gives a model reading the static user
attributes (issue 11) the user's attributes, as the service does."""

from __future__ import annotations

import pyarrow.parquet as pq
from features.test_user_attributes import _dataset

from deepcrossing.features import FeatureConfig, build_samples
from deepcrossing.features.columns import USER_ATTRIBUTES


def test_the_offline_ranker_reads_the_attributes(tmp_path):
    """evaluate --retrieval's ranker builds the user columns from the samples: the attributes are among them."""
    import numpy as np
    import torch

    from deepcrossing import load
    from deepcrossing.config import Feature, FeatureSpec, ModelConfig, TrainConfig
    from deepcrossing.encoding.encoder import Encoder
    from deepcrossing.model.deep_crossing import DeepCrossing
    from deepcrossing.training import artifact
    from deepcrossing.training.retrieval_data import load_retrieval_data, ranker

    ds = _dataset(tmp_path)
    build_samples(ds, FeatureConfig(fractions=(0.5, 0.25, 0.25)), tmp_path / "s")
    spec = FeatureSpec((Feature("movieRatingCount", "numeric", "item", transform="standardize"),
                        Feature("userGender", "categorical", "user", dim=2),
                        Feature("userAge", "numeric", "user", transform="standardize")))
    train = pq.read_table(tmp_path / "s" / "train.parquet")
    encoder = Encoder(spec).fit(train)
    torch.manual_seed(0)
    model = DeepCrossing(spec, ModelConfig(hidden=(4,), width=4), encoder.cardinalities)
    artifact.save(tmp_path / "m", model.eval(), encoder, TrainConfig(epochs=1))
    data = load_retrieval_data(tmp_path / "s", split="valid")
    assert set(USER_ATTRIBUTES) <= set(data.user_rows.column_names)
    scores = ranker(data, load(tmp_path / "m"))(0, np.array([1, 2]))
    assert np.isfinite(scores).all()
