"""Numeric embeddings, fitted half: PLE bins against hand-computed values, tree bins, the encoder's
``Batch.numeric``, state round trips, the bad-input fallbacks and the spec keys."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch
from dc_synthetic import numeric_spec, sample_table

from deepcrossing.config import Feature, FeatureSpec, load_config
from deepcrossing.encoding import Encoder
from deepcrossing.encoding.numeric import PiecewiseLinear, input_width
from deepcrossing.errors import InputError


def test_ple_quantile_bins_hand_computed():
    p = PiecewiseLinear(n_bins=4).fit(np.arange(9.0))      # quantiles 0, 1/4, 1/2, 3/4, 1 of 0..8
    assert p.edges_ == [0.0, 2.0, 4.0, 6.0, 8.0] and p.mean_ == 4.0 and p.note_ is None
    got = p.transform(np.array([-1.0, 3.0, 8.0, 10.0, np.nan, np.inf]))
    expected = [[-0.5, 0, 0, 0],     # below the first edge: the first bin extrapolates
                [1, 0.5, 0, 0],      # (3 - 2) / 2 in the second bin
                [1, 1, 1, 1],
                [1, 1, 1, 2],        # above the last edge: the last bin extrapolates
                [1, 1, 0, 0],        # NaN -> the train mean 4
                [1, 1, 0, 0]]        # inf -> the train mean
    np.testing.assert_allclose(got, expected)
    assert got.dtype == np.float32 and got.shape == (6, 4)


def test_ple_one_bin_is_linear_and_unclipped():
    p = PiecewiseLinear(n_bins=3).fit(np.array([0.0, 0.0, 2.0, 2.0]))
    assert p.edges_ == [0.0, 2.0] and "2 distinct values" in p.note_
    np.testing.assert_allclose(p.transform(np.array([-2.0, 1.0, 4.0])), [[-1, 0, 0], [0.5, 0, 0], [2, 0, 0]])


def test_ple_tree_bins_follow_the_label():
    x = np.linspace(0.0, 10.0, 2001)
    y = (x > 6.3).astype(np.int8)                           # one cut explains the label
    p = PiecewiseLinear(n_bins=4, tree=True).fit(x, y)
    assert len(p.edges_) == 3 and p.edges_[0] == 0.0 and p.edges_[2] == 10.0
    assert abs(p.edges_[1] - 6.3) < 0.01
    quantile = PiecewiseLinear(n_bins=4).fit(x)
    assert len(quantile.edges_) == 5                        # the same data without labels: 4 equal-mass bins
    with pytest.raises(InputError, match="labels"):
        PiecewiseLinear(tree=True).fit(x)


@pytest.mark.parametrize(("values", "edges", "note"), [
    ([5.0, 5.0, 5.0, np.nan], [], "constant on train"),
    ([np.nan, np.inf, np.nan], [], "no finite value"),
    ([1.0, 1.0, 2.0, 3.0, 3.0], [1.0, 2.0, 3.0], "only 3 distinct values on train for 8 bins: 2 bin(s)"),
])
def test_ple_fallbacks_never_nan(values, edges, note):
    p = PiecewiseLinear(n_bins=8).fit(np.array(values))
    assert p.edges_ == edges and note in p.note_
    out = p.transform(np.array([0.0, 2.0, 9.0, np.nan, -np.inf]))
    assert out.shape == (5, 8) and np.isfinite(out).all()
    assert (out[:, len(edges) - 1 if edges else 0:] == 0).all()   # unused bins stay zero


def test_ple_state_round_trip_and_strictness():
    p = PiecewiseLinear(n_bins=4, tree=True).fit(np.arange(100.0), np.arange(100) % 3 == 0)
    q = PiecewiseLinear.from_state(json.loads(json.dumps(p.state())))
    x = np.array([-3.0, 7.5, 50.0, 200.0, np.nan])
    np.testing.assert_array_equal(q.transform(x), p.transform(x))
    with pytest.raises(InputError, match="unknown keys"):
        PiecewiseLinear.from_state({**p.state(), "bins": 3})
    with pytest.raises(InputError, match="must increase"):
        PiecewiseLinear.from_state({**p.state(), "edges": [0.0, 2.0, 1.0]})


def test_encoder_numeric_blocks_and_round_trip():
    spec, table = numeric_spec(), sample_table(300, seed=1)
    enc = Encoder(spec).fit(table)
    batch = enc.transform(table)
    assert {k: tuple(v.shape) for k, v in batch.numeric.items()} == {
        "userAvgRating": (300, 4), "movieAvgRating": (300, 1), "movieRatingCount": (300, 5),
        "userRatingCount": (300, 1)}
    assert enc.dense_names == ["userId"] and batch.dense.shape == (300, 1)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in batch.numeric.values())
    # periodic inputs are standardized; PLE rows are monotone in x
    assert abs(float(batch.numeric["movieAvgRating"].mean())) < 1e-5
    assert 0 < len(enc.numeric_["movieRatingCount"].edges_) <= 6
    state = json.loads(json.dumps(enc.state()))
    assert set(state["numeric"]) == {"userAvgRating", "movieAvgRating", "movieRatingCount", "userRatingCount"}
    again = Encoder.from_state(spec, state).transform(table)
    for name in batch.numeric:
        assert torch.equal(again.numeric[name], batch.numeric[name])
    # serving encodes one side at a time: the other side's numeric blocks are zeros of the right width
    user_only = enc.transform(table.select(["userAvgRating", "userRatingCount", "userGenreCounts", "userId"]),
                              only={"userAvgRating", "userRatingCount", "userGenreCounts", "userId"})
    assert user_only.numeric["movieRatingCount"].shape == (300, input_width(spec["movieRatingCount"]))
    assert not user_only.numeric["movieRatingCount"].any()
    # strict state: missing or extra numeric entries fail
    with pytest.raises(InputError, match="numeric"):
        Encoder.from_state(spec, {k: v for k, v in state.items() if k != "numeric"})
    with pytest.raises(InputError, match="numeric"):
        Encoder.from_state(spec, {**state, "numeric": {k: v for k, v in state["numeric"].items()
                                                      if k != "userAvgRating"}})
    plain = FeatureSpec((Feature("userId", "numeric", transform="standardize"),))
    assert "numeric" not in Encoder(plain).fit(table).state()   # old model folders stay loadable


@pytest.mark.parametrize("transform", ["ple", "ple_tree", "periodic"])
def test_bad_columns_warn_and_fall_back(transform):
    n = 40
    table = pa.table({"const": [3.0] * n, "nan": pa.array([None] * n, pa.float64()),
                      "few": [float(i % 2) for i in range(n)], "label": pa.array([i % 2 for i in range(n)], pa.int8())})
    spec = FeatureSpec(tuple(Feature(c, "numeric", transform=transform, n_buckets=8, dim=2)
                             for c in ("const", "nan", "few")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = Encoder(spec).fit(table, source="train.parquet")
    messages = [str(w.message) for w in caught]
    assert any("'const'" in m and "train.parquet" in m and "constant" in m for m in messages)
    assert any("'nan'" in m and "no finite value" in m for m in messages)
    # two distinct values: fewer bins than asked (a periodic embedding needs no bins)
    assert any("'few'" in m and "2 distinct values" in m for m in messages) == (transform != "periodic")
    batch = enc.transform(table)
    assert all(torch.isfinite(v).all() for v in batch.numeric.values())


@pytest.mark.parametrize("transform", ["ple", "ple_tree", "periodic", "standardize", "buckets"])
def test_numeric_transform_on_a_string_column_is_one_line(transform):
    table = pa.table({"movieTag": ["a", "b", "c"], "label": pa.array([0, 1, 0], pa.int8())})
    spec = FeatureSpec((Feature("movieTag", "numeric", "item", transform=transform),))
    with pytest.raises(InputError) as info:
        Encoder(spec).fit(table, source="samples/train.parquet")
    text = str(info.value)
    assert "\n" not in text and "movieTag" in text and "samples/train.parquet" in text and "string" in text


def test_spec_toml_with_numeric_embeddings(tmp_path):
    good = tmp_path / "spec.toml"
    good.write_text('[[features]]\nname = "userAvgRating"\nkind = "numeric"\nside = "user"\n'
                    'transform = "ple_tree"\nn_buckets = 12\ndim = 6\n\n'
                    '[[features]]\nname = "movieAvgRating"\nkind = "numeric"\nside = "item"\n'
                    'transform = "periodic"\nn_frequencies = 8\nsigma = 0.05\ndim = 4\n')
    spec = load_config(good).spec
    assert (spec["userAvgRating"].transform, spec["userAvgRating"].n_buckets) == ("ple_tree", 12)
    assert (spec["movieAvgRating"].n_frequencies, spec["movieAvgRating"].sigma) == (8, 0.05)
    for old, new, key in [("n_frequencies = 8", "n_frequencys = 8", "n_frequencys"),
                          ('transform = "periodic"', 'transform = "PLE"', "transform"),
                          ("sigma = 0.05", "sigma = 0", "sigma")]:
        path = tmp_path / "bad.toml"
        path.write_text(good.read_text().replace(old, new))
        with pytest.raises(InputError) as info:
            load_config(path)
        assert key in str(info.value) and str(path) in str(info.value)
    cat = tmp_path / "cat.toml"
    cat.write_text('[[features]]\nname = "movieId"\nkind = "categorical"\ntransform = "ple"\n')
    with pytest.raises(InputError, match="only numeric features have a transform"):
        load_config(cat)


def test_benchmark_specs_load():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "benchmarks" / "specs"
    for path in sorted(folder.glob("movielens_*.toml")):
        spec = load_config(path).spec
        assert any(f.transform in ("ple", "ple_tree", "periodic") for f in spec.features), path
