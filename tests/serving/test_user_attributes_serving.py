"""The static user attributes served (issue 11) on ml-100k: ``publish`` stores them with each user's features and
the service scores a user exactly as the model scores that user's sample at t_end (the sample SQL), for users
with a row in the users table, users without one (NULL attributes) and an unknown user (cold: NULLs, the
encoder's unknown rows, never an error)."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from deepcrossing import load
from deepcrossing.config import FeatureSpec, ModelConfig, TrainConfig, load_builtin
from deepcrossing.data.schema import Dataset
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.features import FeatureConfig, compute_samples
from deepcrossing.features.columns import USER_ATTRIBUTES
from deepcrossing.features.pair import GENRE_PAIR
from deepcrossing.model.deep_crossing import DeepCrossing
from deepcrossing.serving.engine import Engine
from deepcrossing.errors import DeepCrossingError
from deepcrossing.serving.publish import publish_dataset, publish_for_model
from deepcrossing.serving.store import open_store
from deepcrossing.training import artifact
from deepcrossing.training.default_spec import USER_ATTRIBUTE_FEATURES

pytestmark = pytest.mark.slow
WITHOUT_ROW = (1, 2, 3)   # users whose row is removed from the users table
UNKNOWN = 10**9


def _probed(dataset: Dataset, users: list[int], movies: list[int], folder) -> tuple[Dataset, int]:
    """The dataset plus one probe rating per (user, movie) at t_end: their samples are what the service sees."""
    ratings = pq.read_table(dataset.ratings)
    t_end = int(pc.max(ratings.column("timestamp")).as_py()) + 1
    n = len(users) * len(movies)
    probes = pa.table({"user_id": pa.array([u for u in users for _ in movies], pa.int64()),
                       "item_id": pa.array([m for _ in users for m in movies], pa.int64()),
                       "rating": pa.array([3.0] * n, pa.float64()), "label": pa.nulls(n, pa.int8()),
                       "timestamp": pa.array([t_end] * n, pa.int64())})
    path = folder / "probed.parquet"
    pq.write_table(pa.concat_tables([ratings.select(probes.column_names).cast(probes.schema), probes]), path)
    return dataclasses.replace(dataset, ratings=path), t_end


def test_served_score_equals_the_offline_score_with_user_attributes(ml_100k_dir, ml_small_dir, tmp_path):
    from deepcrossing.data import load_dataset

    full = load_dataset(ml_100k_dir, workdir=tmp_path / "data")
    assert full.users is not None
    users_table = pq.read_table(full.users)
    kept = users_table.filter(pc.invert(pc.is_in(users_table.column("user_id"), pa.array(WITHOUT_ROW, pa.int64()))))
    pq.write_table(kept, tmp_path / "users.parquet")
    dataset = dataclasses.replace(full, users=tmp_path / "users.parquet")

    # a model reading the attributes (weights trained a few steps: only the equality matters)
    samples = compute_samples(dataset)
    base = tuple(f for f in load_builtin("movielens").spec.features if f.name not in GENRE_PAIR)
    spec = FeatureSpec((*base, *USER_ATTRIBUTE_FEATURES))
    encoder = Encoder(spec).fit(samples)
    torch.manual_seed(0)
    model = DeepCrossing(spec, ModelConfig(hidden=(32, 32), width=24, dropout=0.0, embedding_dropout=0.0),
                         encoder.cardinalities)
    batch = encoder.transform(samples)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        part = batch.take(torch.randint(0, len(batch), (1024,)))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(part), part.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    artifact.save(tmp_path / "model", model.eval(), encoder, TrainConfig(epochs=1))

    # data without a users table cannot serve this model: refused in one line, nothing published
    with pytest.raises(DeepCrossingError, match="reads the user attributes userGender, userAge, userOccupation, "
                                                "userZipPrefix but .* has no users table"):
        publish_for_model(tmp_path / "model", ml_small_dir, f"sqlite:///{tmp_path / 'refused.db'}", emb=False)
    assert not (tmp_path / "refused.db").exists()
    url = f"sqlite:///{tmp_path / 'f.db'}"
    publish_dataset(dataset, url, feature_config=FeatureConfig())
    store = open_store(url, readonly=True)
    try:  # the store holds each user's attributes with the features: the users table's, NULL without a row
        by_id = {r["user_id"]: r for r in users_table.to_pylist()}
        for uid, record in zip((1, 4, 5), store.get_users([1, 4, 5]), strict=True):
            features = record["features"]
            want = (None, None, None, None) if uid in WITHOUT_ROW else (
                by_id[uid]["gender"], by_id[uid]["age"], by_id[uid]["occupation"], by_id[uid]["zip"][:3])
            assert tuple(features[c] for c in USER_ATTRIBUTES) == want, uid
    finally:
        store.close()

    rated = pq.read_table(dataset.ratings, columns=["user_id", "item_id"])
    rng = random.Random(7)
    users = [*WITHOUT_ROW, *rng.sample(range(4, 944), 12), UNKNOWN]
    popular = pc.value_counts(rated.column("item_id")).to_pylist()
    movies = [v["values"] for v in sorted(popular, key=lambda v: (-v["counts"], v["values"]))[:20]]
    movies += rng.sample(sorted(set(rated.column("item_id").to_pylist()) - set(movies)), 10)
    engine = Engine.open(tmp_path / "model", url)
    served = {u: engine.score(u, movies)["scores"] for u in users}

    probed, t_end = _probed(dataset, users, movies, tmp_path)
    at_end = compute_samples(probed).filter(pc.equal(pc.field("timestamp"), t_end))
    offline = load(tmp_path / "model").predict(at_end)
    got = {(u, m): s for u, m, s in zip(at_end.column("userId").to_pylist(), at_end.column("movieId").to_pylist(),
                                        offline.tolist(), strict=True)}
    for u in users:
        np.testing.assert_allclose(served[u], [got[(u, m)] for m in movies], rtol=0, atol=2e-5, err_msg=str(u))
    # the attributes reach the score: the same rows with the attributes blanked score differently
    blank = at_end
    for name in USER_ATTRIBUTES:
        i = blank.schema.get_field_index(name)
        blank = blank.set_column(i, blank.schema.field(name), pa.nulls(blank.num_rows, blank.schema.field(name).type))
    assert np.abs(load(tmp_path / "model").predict(blank) - offline).max() > 1e-4
    attrs = at_end.filter(pc.equal(pc.field("userId"), UNKNOWN)).select(list(USER_ATTRIBUTES)).to_pylist()
    assert attrs and all(v is None for row in attrs for v in row.values())   # the unknown user: NULLs
