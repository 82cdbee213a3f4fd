"""Fitted transformers: scikit-learn contract, OOV/padding convention, NaN imputation, stable hashes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from deepcrossing.encoding import OOV, PAD, Bucketizer, Hasher, IdentityIds, Normalizer, Vocabulary, stable_hash
from deepcrossing.errors import InputError


def test_vocabulary_min_count_oov_and_padding():
    v = Vocabulary(min_count=2).fit(pa.array([5, 7, 5, 9, 7, 7, None]))
    assert v.vocab_ == [7, 5] and len(v) == 4  # most frequent first; 9 seen once -> OOV
    assert v.transform(pa.array([7, 5, 9, 123, None])).tolist() == [2, 3, OOV, OOV, PAD]
    # CSV-style strings of an integer vocabulary still match; garbage is OOV, never out of range
    assert v.transform(pa.array(["5", None])).tolist() == [3, PAD]
    assert v.transform(pa.array(["x"])).tolist() == [OOV]


@pytest.mark.parametrize("kind", ["int", "str"])
def test_vocabulary_small_inputs_by_dict_equal_the_arrow_lookup(kind, monkeypatch):
    # a served request's few ids take the dict path (transformers.SMALL); larger inputs one Arrow index_in
    rng = np.random.default_rng(0)
    train = rng.integers(0, 300, 2000)
    v = Vocabulary(min_count=3).fit(pa.array(train if kind == "int" else [str(x) for x in train]))
    fresh = Vocabulary.from_state(json.loads(json.dumps(v.state())))   # the served vocabulary: from JSON
    inputs = [pa.array([], pa.int64()), pa.array([None, None]), pa.array(["7", "x", None]), pa.array([7, None, 10**9]),
              pa.array([7, 8], pa.int32()), pa.array(["012", "12"]),
              *(pa.array([None if x < 0 else int(x) if kind == "int" else str(x) for x in rng.integers(-20, 400, n)])
                for n in (1, 5, 64, 256))]
    small = [vocab.transform(a) for a in inputs for vocab in (v, fresh)]
    monkeypatch.setattr("deepcrossing.encoding.transformers.SMALL", -1)   # every input through index_in
    big = [vocab.transform(a) for a in inputs for vocab in (v, fresh)]
    assert all(a.dtype == b.dtype == np.int64 and a.tolist() == b.tolist() for a, b in zip(small, big, strict=True))
    assert small[-2].tolist() != [OOV] * 64 and PAD in small[-1]        # the draws hit known, unknown and NULL


def test_vocabulary_ties_are_deterministic():
    a = Vocabulary().fit(np.array(["b", "a", "c", "a", "c"], dtype=object))
    assert a.vocab_ == ["a", "c", "b"]


def test_hash_is_stable_across_runs():
    # fixed values: Python's hash() of strings is salted per process, ours must not be
    assert stable_hash(pa.array(["Drama"])).tolist() == [14665935292735364497]  # BLAKE2b-64, pinned
    h1 = stable_hash(pa.array(["Drama", "Comedy", None]))
    h2 = stable_hash(pa.array(["Comedy", "Drama"]))
    assert h1[0] == h2[1] and h1[1] == h2[0] and h1[2] == 0
    assert stable_hash(pa.array([0, 1, 2**40])).tolist() == [
        16294208416658607535, 10451216379200822465, 2296115805719413641]  # SplitMix64, pinned
    rows = Hasher(buckets=10).fit().transform(pa.array(["Drama", "Drama", None, "x"]))
    assert rows[0] == rows[1] and rows[2] == PAD and ((rows[[0, 3]] >= 1) & (rows[[0, 3]] <= 10)).all()


def test_hash_of_strings_is_pinned():
    import subprocess
    import sys

    code = "from deepcrossing.encoding import stable_hash; print(int(stable_hash(['Drama'])[0]))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout  # another str-hash salt
    assert int(other) == int(stable_hash(pa.array(["Drama"]))[0]) == 14665935292735364497


def test_identity_ids():
    t = IdentityIds(n_values=5).fit()
    assert t.transform(pa.array([0, 4, 5, -1, None])).tolist() == [2, 6, OOV, OOV, PAD]
    assert len(t) == 7


def test_normalizer_imputes_nan_and_inf_with_train_mean():
    n = Normalizer().fit(np.array([1.0, 2.0, 3.0, np.nan, np.inf]))
    assert n.mean_ == 2.0 and n.std_ == pytest.approx(np.std([1.0, 2.0, 3.0]))
    out = n.transform(pa.array([2.0, None, float("nan"), float("-inf"), 3.0]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0, 0, 1 / np.std([1.0, 2.0, 3.0])], rtol=1e-6)
    log = Normalizer(log1p=True).fit(np.array([0.0, np.e - 1]))
    assert (log.mean_, log.std_) == pytest.approx((0.5, 0.5))
    assert Normalizer().fit(np.array([4.0, 4.0])).std_ == 1.0  # constant column: no division by 0


def test_normalizer_rejects_strings():
    with pytest.raises(InputError, match="numbers"):
        Normalizer().fit(pa.array(["a"]))


def test_bucketizer_quantiles_and_missing():
    b = Bucketizer(n_buckets=4).fit(np.arange(1.0, 9.0))
    assert b.boundaries_ == [2.75, 4.5, 6.25]
    assert b.transform(np.array([1.0, 3.0, 4.5, 100.0, np.nan])).tolist() == [2, 3, 4, 5, OOV]
    assert len(b) == 6


@pytest.mark.parametrize("make", [
    lambda: (Vocabulary(min_count=1), pa.array(["a", "b", "a", None])),
    lambda: (Hasher(buckets=16), pa.array(["a", "b"])),
    lambda: (IdentityIds(n_values=3), pa.array([0, 1, 2])),
    lambda: (Normalizer(log1p=True), pa.array([1.0, 10.0, None])),
    lambda: (Bucketizer(n_buckets=3), pa.array([1.0, 2.0, 3.0, 4.0])),
])
def test_common_transformer_contract(make):
    """scikit-learn's check_estimator idea: fit returns self, transform is pure, state round-trips via JSON."""
    tr, values = make()
    params = dict(vars(tr))
    assert tr.fit(values) is tr
    assert all(vars(tr)[k] == v for k, v in params.items())  # constructor params untouched
    first = tr.transform(values)
    again = tr.transform(values)
    np.testing.assert_array_equal(first, again)
    clone = type(tr).from_state(json.loads(json.dumps(tr.state())))
    np.testing.assert_array_equal(clone.transform(values), first)
    with pytest.raises(InputError):
        type(tr).from_state({**tr.state(), "surprise": 1})
