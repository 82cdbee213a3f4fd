"""Encoder: samples -> Batch, vectorized; OOV for unseen ids, padding ignored, missing columns named."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from dc_synthetic import sample_table, small_spec

from deepcrossing.config import Feature, FeatureSpec
from deepcrossing.encoding import OOV, PAD, Encoder
from deepcrossing.errors import InputError


def tiny():
    return pa.table({
        "movieId": pa.array([10, 20, 10, None], pa.int64()),
        "recent": pa.array([[10, 20, 30], [], None, [20, 99, 10, 10]], pa.list_(pa.int64())),
        "genres": pa.array([[("a", 2), ("b", 1)], [], None, [("c", 5)]], pa.map_(pa.string(), pa.int64())),
        "x": pa.array([1.0, None, 3.0, float("nan")]),
        "label": pa.array([1, 0, 1, 0], pa.int8()),
    })


def tiny_spec():
    return FeatureSpec((
        Feature("movieId", "categorical", "item", table="movie"),
        Feature("recent", "multi_hot", "user", table="movie", max_len=3),
        Feature("genres", "multi_hot", "user", weights_from="values"),
        Feature("x", "numeric", "user", transform="standardize"),
    ))


def test_encode_tiny_exact():
    enc = Encoder(tiny_spec()).fit(tiny())
    # shared movie table counts movieId and recent together: 10 x4, 20 x3, 30 x1, 99 x1
    assert enc.tables_["movie"].vocab_ == [10, 20, 30, 99]
    b = enc.transform(tiny())
    assert b.sparse["movieId"].tolist() == [2, 3, 2, PAD]
    assert b.bags["recent"].tolist() == [[2, 3, 4], [0, 0, 0], [0, 0, 0], [3, 5, 2]]  # first max_len kept
    assert enc.tables_["genres"].vocab_ == ["a", "b", "c"]
    assert b.bags["genres"].tolist() == [[2, 3], [0, 0], [0, 0], [4, 0]]
    assert b.bag_weights["genres"].tolist() == [[2.0, 1.0], [0.0, 0.0], [0.0, 0.0], [5.0, 0.0]]
    np.testing.assert_allclose(b.dense[:, 0].numpy(), [-1.0, 0.0, 1.0, 0.0])  # NaN/NULL -> train mean -> 0
    assert b.labels.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert b.dense.dtype == torch.float32 and b.sparse["movieId"].dtype == torch.int64


def test_unseen_ids_go_to_oov_and_stay_in_range():
    enc = Encoder(tiny_spec()).fit(tiny())
    other = pa.table({
        "movieId": pa.array([777, 10], pa.int64()),
        "recent": pa.array([[555, 20], [-1]], pa.list_(pa.int64())),
        "genres": pa.array([[("zzz", 1)], []], pa.map_(pa.string(), pa.int64())),
        "x": pa.array([1e30, -1e30]),
    })
    b = enc.transform(other)
    assert b.sparse["movieId"].tolist() == [OOV, 2]
    assert b.bags["recent"].tolist() == [[OOV, 3, 0], [OOV, 0, 0]]
    assert b.bags["genres"][0, 0].item() == OOV
    for name, size in (("movieId", len(enc.tables_["movie"])), ("recent", len(enc.tables_["movie"]))):
        ids = b.sparse.get(name, b.bags.get(name))
        assert int(ids.min()) >= 0 and int(ids.max()) < size
    assert b.labels.tolist() == [0.0, 0.0]  # no label column: zeros


def test_missing_column_names_column_and_file():
    enc = Encoder(tiny_spec()).fit(tiny())
    with pytest.raises(InputError) as info:
        enc.transform(tiny().drop_columns(["recent"]), source="samples/test.parquet")
    assert info.value.field == "recent" and info.value.path == "samples/test.parquet"
    assert "recent" in str(info.value) and "samples/test.parquet" in str(info.value)
    with pytest.raises(InputError, match="genres"):
        Encoder(tiny_spec()).fit(tiny().drop_columns(["genres"]), source="train.parquet")


@pytest.mark.parametrize(("spec", "message"), [
    (FeatureSpec((Feature("genres", "categorical", "user"),)),
     "field genres: feature 'genres' holds map<string, int64"),
    (FeatureSpec((Feature("recent", "categorical", "user"),)),
     "field recent: feature 'recent' holds list<item: int64> values, not one id or string per row"),
    (FeatureSpec((Feature("x", "categorical", "user"),)),
     "field x: feature 'x' holds double values that are not whole-number ids"),
])
def test_a_column_that_is_not_ids_names_its_feature(spec, message):
    """`train --spec` with `kind = "categorical"` on the map column userGenreCounts said `features sharing a
    table hold different kinds of values (map<...> vs int64)` without a field, for a feature that shares no
    table; now the error names the feature and what is wrong with its column."""
    from deepcrossing.encoding.streaming import StreamingFit

    for fit in (lambda: Encoder(spec).fit(tiny(), source="train.parquet"),
                lambda: StreamingFit(spec, source="train.parquet").update(tiny())):
        with pytest.raises(InputError) as info:
            fit()
        assert str(info.value).startswith(f"train.parquet: {message}"), str(info.value)


def test_bad_labels_are_rejected_with_a_count():
    t = tiny().set_column(4, "label", pa.array([1, 2, 0, 7], pa.int8()))
    with pytest.raises(InputError, match="2 labels") as info:
        Encoder(tiny_spec()).fit(tiny()).transform(t, source="f.parquet")
    assert info.value.field == "label"


def test_min_count_sends_rare_ids_to_oov():
    spec = FeatureSpec((Feature("movieId", "categorical", "item", min_count=2),))
    enc = Encoder(spec).fit(tiny())
    assert enc.transform(tiny()).sparse["movieId"].tolist() == [2, OOV, 2, PAD]


def test_state_round_trip_and_take():
    t = sample_table(300, seed=1)
    enc = Encoder(small_spec()).fit(t)
    clone = Encoder.from_state(small_spec(), json.loads(json.dumps(enc.state())))
    a, b = enc.transform(t), clone.transform(t)
    for name in a.sparse:
        assert torch.equal(a.sparse[name], b.sparse[name])
    for name in a.bags:
        assert torch.equal(a.bags[name], b.bags[name])
    assert torch.equal(a.dense, b.dense)
    assert a.dense.shape == (300, 3) and set(a.sparse) == {"userId", "movieId", "movieGenre1",
                                                            "userRatingCount", "movieTag"}
    idx = torch.tensor([5, 0, 299])
    part = a.take(idx)
    assert len(part) == 3 and torch.equal(part.bags["userRecentPositives"], a.bags["userRecentPositives"][idx])
    assert torch.equal(part.labels, a.labels[idx])
    with pytest.raises(InputError, match="tables"):
        Encoder.from_state(FeatureSpec((Feature("userId", "categorical"),)), enc.state())


def test_encoder_matches_a_per_row_reference():
    """The vectorized bag padding against a slow per-row Python reference."""
    t = sample_table(200, seed=3)
    spec = FeatureSpec((Feature("userRecentPositives", "multi_hot", "user", max_len=4),))
    enc = Encoder(spec).fit(t)
    vocab = {v: i + 2 for i, v in enumerate(enc.tables_["userRecentPositives"].vocab_)}
    expected = []
    for row in t.column("userRecentPositives").to_pylist():
        ids = [vocab.get(v, OOV) for v in (row or [])][:4]
        expected.append(ids + [0] * (4 - len(ids)))
    assert enc.transform(t).bags["userRecentPositives"].tolist() == expected


def test_a_large_table_is_encoded_in_slices_with_the_same_result(monkeypatch):
    """transform encodes more than TRANSFORM_ROWS rows a slice at a time into preallocated tensors (bounded
    memory): every tensor equals the one-shot encoding, whatever the slice size; a bad label anywhere is counted
    over the whole table."""
    from deepcrossing.encoding import encoder as encoder_module

    spec, table = small_spec(), sample_table(n=1_000, seed=3)
    enc = Encoder(spec).fit(table)
    whole = enc.transform(table)
    for rows in (7, 100, 999):
        monkeypatch.setattr(encoder_module, "TRANSFORM_ROWS", rows)
        sliced = enc.transform(table)
        assert len(sliced) == len(whole) == 1_000
        assert torch.equal(sliced.dense, whole.dense) and torch.equal(sliced.labels, whole.labels)
        for group in ("sparse", "bags", "bag_weights", "numeric"):
            got, want = getattr(sliced, group), getattr(whole, group)
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), (rows, group)
    labels = np.zeros(1_000, np.int8)
    labels[[5, 500, 990]] = 3
    bad = table.set_column(table.column_names.index("label"), "label", pa.array(labels))
    with pytest.raises(InputError, match=": 3 labels are not 0 or 1"):
        enc.transform(bad, source="big.parquet")


def test_a_column_outside_the_sample_schema_is_named_without_the_prepare_hint():
    from deepcrossing.encoding.encoder import missing_column

    error = missing_column("myOwnScore", "x/train.parquet")
    assert error.field == "myOwnScore" and "remove the feature from the spec" in str(error)
    assert "prepare again" in str(missing_column("userLastRating", "x/train.parquet"))
