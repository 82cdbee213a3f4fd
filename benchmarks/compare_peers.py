#!/usr/bin/env python
"""Peer benchmark: deepcrossing against what people use today, on the same sample files, in one run.

Peers (each in its own child process, so that its peak RSS is its own):

* ``avg_rating``      one feature: score = userAvgRating (the user's mean rating before t; missing -> the
                      global mean rating of train). No training.
* ``logreg``          scikit-learn LogisticRegression on z-scored numerics (log1p first for counts and
                      durations), missing-value indicators, one-hot genres (movieGenre1..3, userGenre1..5)
                      and multi-hot movieGenres. No id columns (high cardinality). C tuned on valid.
* ``lightgbm_ids``    LightGBM with every column: numerics raw (NaN native), genres and the id columns
                      (userId, movieId, userRatedMovie1..5) as categorical features, movieGenres multi-hot.
* ``lightgbm_noids``  the same without the id columns. num_leaves / learning_rate / min_data_in_leaf tuned
                      on valid; early stopping on valid AUC. The better of the two counts for the target.
* ``deepctr_dnn``     DeepCTR-Torch 0.3.0 ``WDL`` with the wide part empty, i.e. Embedding(10) + DNN(128,128):
                      userId, movieId, genres, userRatedMovie1..5 (sharing the movieId table) as SparseFeat,
                      movieGenres and userRecentPositives as mean-pooled VarLenSparseFeat, z-scored numerics
                      (+ missing indicators) as DenseFeat. Trained epoch by epoch, the best valid-AUC epoch
                      kept (patience 2); dropout / embedding L2 / learning rate / batch size tuned on valid.
* ``deepcrossing``    our model, default spec, through ``deepcrossing train`` in a subprocess; MLP dropout,
                      embedding dropout and learning rate tuned on valid with the same budget as LightGBM
                      and DeepCTR (8 settings, 2 with ``--grid small``; the spec's own setting is one of them).
* ``deepcrossing_mlp`` our model as SparrowRecSys's plain MLP 128-128 (embedding 10).
* ``*_refit``         (``logreg``, ``lightgbm_ids``, ``lightgbm_noids``, ``deepcrossing``) the peer chosen on
                      valid exactly as above, then refitted on train ∪ valid with what valid chose (LightGBM: the
                      setting and its best iteration count, no early stopping; logistic regression: the same C;
                      Deep Crossing: ``train --refit`` with the chosen setting, i.e. its best epoch count), every
                      vocabulary / scaler / encoder refitted on train ∪ valid; test is scored by the refitted
                      model only. Its valid columns are the selection model's (held out), not the refit's.

Every peer gets the same columns of the sample file (ids, genres, numerics, the list columns where it can
take them); vocabularies and scalers are fitted on train only; tuning reads valid only; test is scored once.
Seeds: hyper-parameters are tuned once (seed 0), then every seed retrains with them; the table shows the
mean and std over seeds (``logreg`` and ``avg_rating`` are deterministic: run once, std 0).

Columns of the table:
  AUC, log loss, GAUC, NDCG@10 on test (deepcrossing.metrics); train s = wall seconds of fitting, validation
  passes included, data loading and encoding excluded (for deepcrossing: its trainer's own timing when the
  model folder reports one, else the subprocess wall time); samples/s = training samples processed per
  second (rows x epochs / fit seconds for the neural peers; rows / seconds of the whole fit for LightGBM and
  logistic regression); peak RSS = ru_maxrss of the peer's child process (and its children), which includes
  loading the data; ratios are peer / deepcrossing (AUC: difference).

Usage:
    .venv/bin/python benchmarks/compare_peers.py                      # prepare ml-latest-small, both formats
    .venv/bin/python benchmarks/compare_peers.py --samples DIR --sparrow-samples DIR2 --seeds 3
    .venv/bin/python benchmarks/compare_peers.py --quick              # 1 seed, small grids, few epochs

Writes benchmarks/results/peers-<dataset>.md and .json, and benchmarks/results/peers-latest.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ml-latest-small"
DATA_100K = ROOT.parent / "shared" / "data" / "ml-100k"
# Sample columns no peer reads (same input columns for everyone): none since the user x movie (pair) columns
# are served and in Deep Crossing's default spec; `--exclude-columns` compares without some.
DEFAULT_EXCLUDE = ""

PEERS = ("avg_rating", "logreg", "logreg_refit", "lightgbm_ids", "lightgbm_ids_refit", "lightgbm_noids",
         "lightgbm_noids_refit", "deepctr_dnn", "deepcrossing", "deepcrossing_refit", "deepcrossing_mlp",
         "deepcrossing_ens3")
OURS = "deepcrossing"
DETERMINISTIC = ("avg_rating", "logreg", "logreg_refit")  # same result for every seed: run once

# Column families: which vocabulary each categorical / list column uses.
ID_COLUMNS = {"userId": "user", "movieId": "movie", **{f"userRatedMovie{i}": "movie" for i in range(1, 6)}}
GENRE_COLUMNS = {**{f"movieGenre{i}": "genre" for i in range(1, 4)}, **{f"userGenre{i}": "genre" for i in range(1, 6)}}
# The static user attributes (samples of a dataset with a users table, e.g. ml-100k): categorical, not ids
ATTRIBUTE_COLUMNS = {"userGender": "gender", "userOccupation": "occupation", "userZipPrefix": "zip"}
NON_ID_FAMILIES = ("genre", *ATTRIBUTE_COLUMNS.values())   # what the peers without id columns still read
LIST_COLUMNS = {"movieGenres": ("genre", 10), "userRecentPositives": ("movie", 10)}


def attribute_min_counts() -> dict[str, int]:
    """Family -> the default spec's ``min_count`` of each user attribute: a value rarer in train shares the
    unseen code for every peer, as it shares the unknown row in Deep Crossing (same columns, same vocabulary).
    Without it the ~400 zip prefixes as one LightGBM categorical overfit: ml-100k test AUC 0.7554 vs 0.7747
    with the column left out."""
    from deepcrossing.training.default_spec import USER_ATTRIBUTE_FEATURES

    return {ATTRIBUTE_COLUMNS[f.name]: f.min_count for f in USER_ATTRIBUTE_FEATURES if f.name in ATTRIBUTE_COLUMNS}
NOT_FEATURES = {"rating", "timestamp", "label"}


# ============================================================================================ data


def load_splits(samples: Path) -> dict[str, Any]:
    """Read train/valid/test of a samples folder (Parquet or SparrowRecSys CSV) into pyarrow Tables."""
    from deepcrossing.features import read_samples
    from deepcrossing.training.evaluate import find_split_file

    return {split: read_samples(find_split_file(samples, split)) for split in ("train", "valid", "test")}


class Features:
    """Every peer's input, fitted on train: vocabularies, numeric columns, list columns.

    Categorical codes: 0 = missing (and list padding), 1 = a value not seen in train, 2.. = train values.
    Numerics are returned raw (NaN where missing); :class:`Scaler` z-scores them for the neural peers.
    """

    def __init__(self, train) -> None:
        excluded = {c for c in os.environ.get("PEERS_EXCLUDE", DEFAULT_EXCLUDE).split(",") if c}
        cols = [c for c in train.column_names if c not in excluded]
        self.cat = {c: fam for c, fam in {**ID_COLUMNS, **GENRE_COLUMNS, **ATTRIBUTE_COLUMNS}.items() if c in cols}
        self.lists = {c: spec for c, spec in LIST_COLUMNS.items() if c in cols}
        self.numeric = [c for c in cols if c not in NOT_FEATURES and c not in self.cat and c not in self.lists
                        and c != "userGenreCounts" and _is_numeric(train.schema.field(c).type)]
        values: dict[str, list[np.ndarray]] = {}
        for c, fam in self.cat.items():
            values.setdefault(fam, []).append(_as_str(train.column(c)))
        for c, (fam, _) in self.lists.items():
            values.setdefault(fam, []).append(_as_str(train.column(c).combine_chunks().flatten()))
        self.vocab: dict[str, dict[str, int]] = {}
        min_counts = attribute_min_counts()
        for fam, arrays in values.items():
            uniq, counts = np.unique(np.concatenate(arrays), return_counts=True)
            uniq = uniq[(uniq != "") & (counts >= min_counts.get(fam, 1))]
            self.vocab[fam] = {v: i + 2 for i, v in enumerate(uniq.tolist())}
        self.genres = sorted(self.vocab.get("genre", {}))
        self.genre_counts = "userGenreCounts" in cols
        if self.genre_counts:
            self.numeric += [f"userGenreCount:{g}" for g in self.genres]

    def size(self, family: str) -> int:
        return len(self.vocab[family]) + 2

    def encode_cat(self, column, family: str) -> np.ndarray:
        """(N,) int64 codes of one column."""
        vocab = self.vocab[family]
        strs = _as_str(column)
        uniq, inv = np.unique(strs, return_inverse=True)
        codes = np.array([0 if u == "" else vocab.get(u, 1) for u in uniq.tolist()], dtype=np.int64)
        return codes[inv]

    def encode_list(self, column, family: str, maxlen: int) -> np.ndarray:
        """(N, maxlen) int64 codes, padded with 0, the first ``maxlen`` items kept."""
        import pyarrow.compute as pc

        column = column.combine_chunks()
        n = len(column)
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy()
        flat = self.encode_cat(column.flatten(), family)
        out = np.zeros((n, maxlen), dtype=np.int64)
        row = np.repeat(np.arange(n), lengths)
        pos = np.arange(flat.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        keep = pos < maxlen
        out[row[keep], pos[keep]] = flat[keep]
        return out

    def numerics(self, table) -> np.ndarray:
        """(N, n_numeric) float64, NaN where missing."""

        cols = []
        for c in self.numeric:
            if c.startswith("userGenreCount:"):
                continue
            cols.append(table.column(c).to_numpy(zero_copy_only=False).astype(np.float64))
        if self.genre_counts:
            m = table.column("userGenreCounts").combine_chunks()
            n = len(m)
            lengths = np.diff(m.offsets.to_numpy())
            keys = _as_str(m.keys)
            vals = m.items.to_numpy(zero_copy_only=False).astype(np.float64)
            index = {g: i for i, g in enumerate(self.genres)}
            gi = np.array([index.get(k, -1) for k in keys.tolist()], dtype=np.int64)
            row = np.repeat(np.arange(n), lengths)
            counts = np.zeros((n, len(self.genres)))
            ok = gi >= 0
            counts[row[ok], gi[ok]] = vals[ok]
            cols.extend(counts.T)
        return np.stack(cols, axis=1) if cols else np.zeros((table.num_rows, 0))


def _is_numeric(t) -> bool:
    import pyarrow.types as pt

    return pt.is_integer(t) or pt.is_floating(t)


def _as_str(column) -> np.ndarray:
    """Values as strings ("" for null), so ints and strings share one code path."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return np.asarray(pc.fill_null(pc.cast(column, pa.string()), "").to_numpy(zero_copy_only=False), dtype=object)


class Scaler:
    """log1p for counts and durations, then z-score with train statistics; NaN -> 0 plus an indicator."""

    def __init__(self, names: list[str], train: np.ndarray) -> None:
        self.log = np.array([("Count" in n or "Seconds" in n) for n in names])
        x = self._pre(train)
        self.mean = np.nanmean(x, axis=0)
        self.std = np.nanstd(x, axis=0)
        self.std[~(self.std > 0)] = 1.0
        self.mean = np.nan_to_num(self.mean)
        self.flag = np.isnan(train).any(axis=0)
        self.names = list(names) + [f"{n}:missing" for n, f in zip(names, self.flag) if f]

    def _pre(self, x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[:, self.log] = np.log1p(np.clip(x[:, self.log], 0, None))
        return x

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z = (self._pre(x) - self.mean) / self.std
        missing = np.isnan(x)
        z[missing] = 0.0
        return np.concatenate([z, missing[:, self.flag].astype(np.float64)], axis=1).astype(np.float32)


class Data:
    """The three splits, encoded once per child process."""

    def __init__(self, samples: Path, tables: dict[str, Any] | None = None) -> None:
        self.samples = samples
        self.tables = tables or load_splits(samples)
        self.f = Features(self.tables["train"])
        self.y = {s: t.column("label").to_numpy().astype(np.float32) for s, t in self.tables.items()}
        self.users = {s: t.column("userId").to_numpy() for s, t in self.tables.items()}
        self.cats = {s: {c: self.f.encode_cat(t.column(c), fam) for c, fam in self.f.cat.items()}
                     for s, t in self.tables.items()}
        self.lists = {s: {c: self.f.encode_list(t.column(c), fam, ml) for c, (fam, ml) in self.f.lists.items()}
                      for s, t in self.tables.items()}
        self.num = {s: self.f.numerics(t) for s, t in self.tables.items()}

    @property
    def n_train(self) -> int:
        return int(self.y["train"].shape[0])

    def refit(self) -> Data:
        """The same splits with train ∪ valid as train (valid rows after train's): every vocabulary and scaler
        is then fitted on both, as the refit models are."""
        from deepcrossing.training.refit import union_of

        t = self.tables
        return Data(self.samples, {"train": union_of(t["train"], t["valid"], {}), "valid": t["valid"],
                                   "test": t["test"]})


# ============================================================================================ peers


def _auc(y, p) -> float:
    from deepcrossing.metrics import auc

    return auc(y, p)


def peer_avg_rating(d: Data, params: dict, seed: int) -> dict:
    t0 = time.perf_counter()
    train = d.tables["train"]
    if "rating" in train.column_names and train.column("rating").null_count < train.num_rows:
        global_mean = float(np.nanmean(train.column("rating").to_numpy(zero_copy_only=False).astype(float)))
    else:
        global_mean = float(np.nanmean(train.column("userAvgRating").to_numpy(zero_copy_only=False).astype(float)))

    def score(split):
        s = d.tables[split].column("userAvgRating").to_numpy(zero_copy_only=False).astype(np.float64)
        return np.where(np.isnan(s), global_mean, s)

    return {"valid": score("valid"), "test": score("test"), "probabilities": False,
            "fit_seconds": time.perf_counter() - t0, "passes": 0, "info": {"global_mean": global_mean}}


def _onehot_design(d: Data):
    """Sparse design matrix of the logistic regression: scaled numerics, one-hot genres, multi-hot lists."""
    import scipy.sparse as sp

    scaler = Scaler(d.f.numeric, d.num["train"])
    n_genre = d.f.size("genre") if "genre" in d.f.vocab else 0
    out = {}
    for split in ("train", "valid", "test"):
        blocks = [sp.csr_matrix(scaler(d.num[split]))]
        n = d.y[split].shape[0]
        for c, fam in d.f.cat.items():
            if fam not in NON_ID_FAMILIES:
                continue
            codes = d.cats[split][c]
            blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), codes)), shape=(n, d.f.size(fam))))
        if "movieGenres" in d.lists[split]:
            codes = d.lists[split]["movieGenres"]
            r, k = np.nonzero(codes)
            blocks.append(sp.csr_matrix((np.ones(r.shape[0]), (r, codes[r, k])), shape=(n, n_genre)))
        out[split] = sp.hstack(blocks).tocsr()
    return out


def peer_logreg(d: Data, params: dict, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression

    x = _onehot_design(d)
    grid = [params["C"]] if "C" in params else [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.1, 1.0]
    best = None
    t0 = time.perf_counter()
    for c in grid:
        model = LogisticRegression(C=c, max_iter=2000)
        t_fit = time.perf_counter()
        model.fit(x["train"], d.y["train"])
        fit_s = time.perf_counter() - t_fit
        v = model.predict_proba(x["valid"])[:, 1]
        a = _auc(d.y["valid"], v)
        if best is None or a > best[0]:
            best = (a, c, model, v, fit_s)
    a, c, model, v, fit_s = best
    return {"valid": v, "test": model.predict_proba(x["test"])[:, 1], "probabilities": True,
            "fit_seconds": fit_s, "passes": 1, "tuned": {"C": c},
            "info": {"C": c, "n_features": x["train"].shape[1], "tuning_seconds": time.perf_counter() - t0}}


def peer_logreg_refit(d: Data, params: dict, seed: int) -> dict:
    """``logreg`` (C chosen on valid), then the same C fitted on train ∪ valid (scaler and vocabularies too)."""
    from sklearn.linear_model import LogisticRegression

    chosen = peer_logreg(d, params, seed)
    both = d.refit()
    x = _onehot_design(both)
    t0 = time.perf_counter()
    model = LogisticRegression(C=chosen["tuned"]["C"], max_iter=2000).fit(x["train"], both.y["train"])
    fit_s = time.perf_counter() - t0
    return {**chosen, "test": model.predict_proba(x["test"])[:, 1], "fit_seconds": chosen["fit_seconds"] + fit_s,
            "passes": 1 + both.n_train / d.n_train,                 # rows fitted, in train passes
            "info": {**chosen["info"], "refit_rows": both.n_train, "refit_seconds": fit_s}}


def _lgb_matrix(d: Data, split: str, with_ids: bool):
    names, cols, cat_names = [], [], []
    for c in d.f.numeric:
        names.append(c)
    cols.append(d.num[split])
    for c, fam in d.f.cat.items():
        if fam not in NON_ID_FAMILIES and not with_ids:
            continue
        names.append(c)
        cat_names.append(c)
        codes = d.cats[split][c].astype(np.float64)
        codes[codes == 0] = np.nan                                  # missing stays missing
        cols.append(codes[:, None])
    if "movieGenres" in d.lists[split]:
        codes = d.lists[split]["movieGenres"]
        onehot = np.zeros((codes.shape[0], d.f.size("genre")))
        r, k = np.nonzero(codes)
        onehot[r, codes[r, k]] = 1.0
        onehot = onehot[:, 2:]
        names += [f"movieGenres:{g}" for g in d.f.genres]
        cols.append(onehot)
    names = [re.sub(r"[^0-9A-Za-z_]", "_", n) for n in names]          # LightGBM rejects JSON characters
    cat_names = [re.sub(r"[^0-9A-Za-z_]", "_", n) for n in cat_names]
    return np.concatenate(cols, axis=1), names, cat_names


def _peer_lightgbm(d: Data, params: dict, seed: int, with_ids: bool, quick: bool) -> dict:
    import lightgbm as lgb

    xs = {s: _lgb_matrix(d, s, with_ids) for s in ("train", "valid", "test")}
    x_train, names, cats = xs["train"]
    base = _lgb_base(seed)
    if "num_leaves" in params:
        grid = [params]
    elif quick:
        grid = [{"num_leaves": 31, "learning_rate": 0.05, "min_data_in_leaf": 100}]
    elif os.environ.get("PEERS_GRID") == "small":
        grid = [{"num_leaves": 63, "learning_rate": 0.03, "min_data_in_leaf": 20},
                {"num_leaves": 31, "learning_rate": 0.05, "min_data_in_leaf": 100}]
    else:
        grid = [{"num_leaves": nl, "learning_rate": lr, "min_data_in_leaf": md}
                for nl, lr, md in itertools.product((15, 63), (0.03, 0.1), (20, 200))]
    best = None
    for g in grid:
        train_set = lgb.Dataset(x_train, d.y["train"], feature_name=names, categorical_feature=cats,
                                free_raw_data=False)
        valid_set = lgb.Dataset(xs["valid"][0], d.y["valid"], reference=train_set)
        t0 = time.perf_counter()
        booster = lgb.train({**base, **g}, train_set, num_boost_round=3000, valid_sets=[valid_set],
                            callbacks=[lgb.early_stopping(100, verbose=False)])
        fit_s = time.perf_counter() - t0
        v = booster.predict(xs["valid"][0], num_iteration=booster.best_iteration)
        a = _auc(d.y["valid"], v)
        if best is None or a > best[0]:
            best = (a, g, booster, v, fit_s)
    a, g, booster, v, fit_s = best
    return {"valid": v, "test": booster.predict(xs["test"][0], num_iteration=booster.best_iteration),
            "probabilities": True, "fit_seconds": fit_s, "passes": 1, "tuned": g,
            "info": {**g, "best_iteration": booster.best_iteration, "categorical": cats,
                     "grid_size": len(grid)}}


def _lgb_base(seed: int) -> dict:
    return {"objective": "binary", "metric": "auc", "verbosity": -1, "num_threads": 2, "seed": seed,
            "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "cat_smooth": 10.0}


def _refit_lightgbm(d: Data, params: dict, seed: int, with_ids: bool, quick: bool) -> dict:
    """LightGBM chosen on valid (setting and early-stopped iteration count), then the same setting trained on
    train ∪ valid (vocabularies refitted) for that many iterations, no early stopping; test scored by it."""
    import lightgbm as lgb

    chosen = _peer_lightgbm(d, params, seed, with_ids, quick)
    both = d.refit()
    x_train, names, cats = _lgb_matrix(both, "train", with_ids)
    rounds = int(chosen["info"]["best_iteration"])
    t0 = time.perf_counter()
    booster = lgb.train({**_lgb_base(seed), **chosen["tuned"]},
                        lgb.Dataset(x_train, both.y["train"], feature_name=names, categorical_feature=cats),
                        num_boost_round=rounds)
    fit_s = time.perf_counter() - t0
    return {**chosen, "test": booster.predict(_lgb_matrix(both, "test", with_ids)[0]),
            "fit_seconds": chosen["fit_seconds"] + fit_s,
            "info": {**chosen["info"], "refit_rows": both.n_train, "refit_rounds": rounds, "refit_seconds": fit_s}}


def peer_lightgbm_ids(d, params, seed, quick=False):
    return _peer_lightgbm(d, params, seed, True, quick)


def peer_lightgbm_noids(d, params, seed, quick=False):
    return _peer_lightgbm(d, params, seed, False, quick)


def peer_lightgbm_ids_refit(d, params, seed, quick=False):
    return _refit_lightgbm(d, params, seed, True, quick)


def peer_lightgbm_noids_refit(d, params, seed, quick=False):
    return _refit_lightgbm(d, params, seed, False, quick)


def peer_deepctr_dnn(d: Data, params: dict, seed: int, quick: bool = False) -> dict:
    import torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import WDL

    torch.set_num_threads(2)
    scaler = Scaler(d.f.numeric, d.num["train"])
    dense = {s: scaler(d.num[s]) for s in ("train", "valid", "test")}
    columns = []
    for c, fam in d.f.cat.items():
        columns.append(SparseFeat(c, d.f.size(fam), embedding_dim=10, embedding_name=fam))
    for c, (fam, maxlen) in d.f.lists.items():
        columns.append(VarLenSparseFeat(SparseFeat(c, d.f.size(fam), embedding_dim=10, embedding_name=fam),
                                        maxlen=maxlen, combiner="mean"))
    for i in range(len(scaler.names)):
        columns.append(DenseFeat(f"num{i}", 1))

    def inputs(split):
        x = {c: d.cats[split][c] for c in d.f.cat}
        x.update({c: d.lists[split][c] for c in d.f.lists})
        x.update({f"num{i}": dense[split][:, i] for i in range(dense[split].shape[1])})
        return x

    xs = {s: inputs(s) for s in ("train", "valid", "test")}
    max_epochs = 3 if quick else 12
    if "lr" in params:
        grid = [params]
    elif quick:
        grid = [{"lr": 1e-3, "batch_size": 256, "dropout": 0.0, "l2_emb": 1e-5}]
    elif os.environ.get("PEERS_GRID") == "small":
        grid = [{"lr": 1e-3, "batch_size": 1024, "dropout": 0.5, "l2_emb": 1e-5},
                {"lr": 1e-3, "batch_size": 256, "dropout": 0.0, "l2_emb": 1e-5}]
    else:
        grid = [{"lr": 1e-3, "batch_size": bs, "dropout": dr, "l2_emb": l2}
                for bs, dr, l2 in itertools.product((256, 1024), (0.0, 0.5), (1e-5, 1e-3))]
    best = None
    for g in grid:
        model = WDL([], columns, dnn_hidden_units=(128, 128), l2_reg_embedding=g["l2_emb"],
                    dnn_dropout=g["dropout"], seed=seed, device="cpu")
        model.compile(torch.optim.Adam(model.parameters(), lr=g["lr"]), "binary_crossentropy")
        torch.manual_seed(seed)
        fit_s, total0, epochs, since = 0.0, time.perf_counter(), 0, 0
        run_best = (-1.0, None, 0)
        for epoch in range(max_epochs):
            t0 = time.perf_counter()
            model.fit(dict(xs["train"]), d.y["train"], batch_size=g["batch_size"], epochs=1, verbose=0)
            fit_s += time.perf_counter() - t0
            epochs += 1
            a = _auc(d.y["valid"], model.predict(dict(xs["valid"]), 4096).reshape(-1))
            if a > run_best[0]:
                run_best, since = (a, copy.deepcopy(model.state_dict()), epoch + 1), 0
            else:
                since += 1
                if since >= 2:
                    break
        total_s = time.perf_counter() - total0
        if best is None or run_best[0] > best[0]:
            best = (run_best[0], g, model, run_best[1], run_best[2], fit_s, epochs, total_s)
    a, g, model, state, best_epoch, fit_s, epochs, total_s = best
    model.load_state_dict(state)
    v = model.predict(dict(xs["valid"]), 4096).reshape(-1)
    t = model.predict(dict(xs["test"]), 4096).reshape(-1)
    return {"valid": v, "test": t, "probabilities": True, "fit_seconds": fit_s, "wall_seconds": total_s,
            "passes": epochs, "tuned": g,
            "info": {**g, "best_epoch": best_epoch, "epochs_run": epochs, "grid_size": len(grid)}}


def _dc_grid(params: dict, quick: bool, mlp: bool) -> list[dict]:
    """Deep Crossing's tuning grid, the same budget as LightGBM's and DeepCTR's (8 full, 2 small, 1 quick):
    MLP dropout x embedding dropout x learning rate; ``{}`` is the spec's own setting. The plain-MLP variant
    (SparrowRecSys's network) is not tuned."""
    if params or quick or mlp:   # a later seed (the setting chosen on seed 0), or not tuned
        return [{k: v for k, v in params.items() if k in ("dropout", "embedding_dropout", "lr")}]
    if os.environ.get("PEERS_GRID") == "small":
        return [{}, {"dropout": 0.4, "embedding_dropout": 0.3, "lr": 0.001}]
    return [{"dropout": dr, "embedding_dropout": ed, "lr": lr}
            for dr, ed, lr in itertools.product((0.2, 0.4), (0.1, 0.3), (0.002, 0.001))]


def _dc_spec(d: Data, setting: dict, mlp: bool, folder: Path) -> str | None:
    """The spec file of one grid setting: the base spec (``DC_PEER_SPEC`` or the built-in one for the samples'
    format) with the setting's model dropouts and learning rate, as JSON in ``folder``; None: the default."""
    from deepcrossing.config import load_config, save_config
    from deepcrossing.training.default_spec import default_config

    spec = os.environ.get("DC_PEER_SPEC_MLP" if mlp else "DC_PEER_SPEC")
    if not setting:
        return spec
    csv = (Path(d.samples) / "train.csv").exists()
    base = load_config(spec) if spec else default_config(Path(d.samples) / ("train.csv" if csv else "train.parquet"))
    model = dataclasses.replace(base.model, **{k: v for k, v in setting.items() if k != "lr"})
    train = dataclasses.replace(base.train, lr=setting.get("lr", base.train.lr))
    path = folder / f"spec-{len(list(folder.glob('spec-*')))}.json"
    save_config(dataclasses.replace(base, model=model, train=train), path)
    return str(path)


def _deepcrossing(d: Data, params: dict, seed: int, quick: bool, mlp: bool, ensemble: int = 1) -> dict:
    """Tune on valid over :func:`_dc_grid` (seed 0; later seeds get the chosen setting in ``params``), each
    setting trained through the CLI in a subprocess (what a user runs) and scored with ``deepcrossing.load``."""
    grid = _dc_grid(params, quick, mlp)
    best: dict | None = None
    for setting in grid:
        run = _deepcrossing_once(d, setting, seed, quick, mlp, ensemble)
        run["tuned"] = setting or {"default": True}
        run["info"]["grid_size"] = len(grid)
        if best is None or _auc(d.y["valid"], run["valid"]) > _auc(d.y["valid"], best["valid"]):
            best = run
    assert best is not None
    return best


def _deepcrossing_once(d: Data, setting: dict, seed: int, quick: bool, mlp: bool, ensemble: int = 1,
                       refit: bool = False) -> dict:
    import deepcrossing

    with tempfile.TemporaryDirectory(prefix="dc-peer-") as tmp:
        model_dir = Path(tmp) / "model"
        cmd = [sys.executable, "-m", "deepcrossing.cli", "train", "--samples", str(d.samples),
               "--out", str(model_dir), "--seed", str(seed), "--device", "cpu"]
        spec = _dc_spec(d, setting, mlp, Path(tmp))
        if spec:
            cmd += ["--spec", spec]
        if mlp:
            cmd += ["--mlp", "plain"]              # SparrowRecSys's network: plain MLP 128-128
        if quick:
            cmd += ["--epochs", "2"]
        if ensemble > 1:                           # K members, seeds K*seed .. K*seed+K-1 (disjoint per seed)
            cmd[cmd.index("--seed") + 1] = str(ensemble * seed)
            cmd += ["--ensemble", str(ensemble)]
        if refit:
            cmd += ["--refit"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"deepcrossing train failed ({proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stderr[-3000:]}")
        model = deepcrossing.load(model_dir)
        v = np.asarray(model.predict(d.tables["valid"]), dtype=np.float64)
        t = np.asarray(model.predict(d.tables["test"]), dtype=np.float64)
        manifest = json.loads((model_dir / "manifest.json").read_text())
        refit_record = manifest["metrics"].get("refit", {})
        jsonl = model_dir / "metrics.jsonl"
        if jsonl.is_file():                        # the trainer's per-epoch records
            manifest = {"history": [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]}
    timing = _find_timing(manifest)
    return {"valid": v, "test": t, "probabilities": True,
            "fit_seconds": timing.get("fit_seconds", wall), "wall_seconds": wall,
            "passes": timing.get("epochs", 1), "info": {"command": " ".join(cmd[2:]), **timing,
                                                        **({"refit": {k: v for k, v in refit_record.items()
                                                                      if k != "history"}} if refit else {})}}


def _find_timing(manifest: dict) -> dict:
    """Training seconds and epochs as the trainer recorded them: the per-epoch history (a list of records
    with ``epoch`` and ``train_seconds``, validation excluded), wherever the manifest keeps it."""
    histories: list[list[dict]] = []

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            if node and all(isinstance(r, dict) and "epoch" in r and "train_seconds" in r for r in node):
                histories.append(node)
            else:
                for v in node:
                    walk(v)

    walk(manifest)
    if not histories:
        return {}
    history = max(histories, key=len)
    return {"fit_seconds": float(sum(r["train_seconds"] for r in history)), "epochs": len(history),
            "valid_auc_by_epoch": [r.get("valid_auc") for r in history]}


def peer_deepcrossing(d, params, seed, quick=False):
    return _deepcrossing(d, params, seed, quick, mlp=False)


def peer_deepcrossing_mlp(d, params, seed, quick=False):
    return _deepcrossing(d, params, seed, quick, mlp=True)


def peer_deepcrossing_refit(d, params, seed, quick=False):
    """``deepcrossing`` chosen on valid exactly as that peer (same grid, same runs), then ``train --refit`` with
    the chosen setting: its selection run repeats the chosen run (same seed) and picks the same best epoch E,
    then a fresh model trains E epochs on train ∪ valid; test is scored by that model. The valid columns are the
    chosen (selection) model's: held out."""
    chosen = _deepcrossing(d, params, seed, quick, mlp=False)
    setting = {k: v for k, v in chosen["tuned"].items() if k != "default"}
    refit = _deepcrossing_once(d, setting, seed, quick, mlp=False, refit=True)
    info = {**chosen["info"], "refit": refit["info"]}
    return {**chosen, "test": refit["test"], "fit_seconds": chosen["fit_seconds"] + refit["fit_seconds"],
            "passes": chosen["passes"] + refit["passes"], "info": info}


def peer_deepcrossing_ens3(d, params, seed, quick=False):
    """The default spec, tuned like ``deepcrossing``, as a fused ensemble of 3 seeds (``train --ensemble 3``)."""
    return _deepcrossing(d, params, seed, quick, mlp=False, ensemble=3)


def run_peer(peer: str, samples: Path, params: dict, seed: int, quick: bool) -> dict:
    """Child-process body: load, train (tune when ``params`` is empty), score test, compute metrics."""
    import random

    from deepcrossing import metrics as M

    random.seed(seed)
    np.random.seed(seed)
    t_load = time.perf_counter()
    d = Data(samples)
    load_s = time.perf_counter() - t_load
    fn = globals()[f"peer_{peer}"]
    simple = peer in ("avg_rating", "logreg", "logreg_refit")   # no quick argument
    result = fn(d, params, seed) if simple else fn(d, params, seed, quick=quick)
    y, g, s = d.y["test"], d.users["test"], result["test"]
    out = {
        "peer": peer, "seed": seed, "n_train": d.n_train, "load_seconds": load_s,
        "valid_auc": M.auc(d.y["valid"], result["valid"]),
        "valid_gauc": M.gauc(d.users["valid"], d.y["valid"], result["valid"]).value,
        "valid_ndcg10": M.ndcg_at_k(d.users["valid"], d.y["valid"], result["valid"], k=10).value,
        "auc": M.auc(y, s),
        "logloss": M.logloss(y, np.clip(s, 0, 1)) if result["probabilities"] else None,
        "gauc": M.gauc(g, y, s).value,
        "ndcg10": M.ndcg_at_k(g, y, s, k=10).value,
        "fit_seconds": result["fit_seconds"],
        "samples_per_second": (result.get("info", {}).get("samples_per_second")
                               or (d.n_train * result["passes"] / result["fit_seconds"]
                                   if result["passes"] else None)),
        "tuned": result.get("tuned", {}),
        "info": result.get("info", {}),
    }
    return out


# ======================================================================================== orchestration


def run_child(job: dict, log) -> dict:
    """Run one peer in a child process; its peak RSS comes from wait4 (children included)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(job, fh)
        job_path = fh.name
    out_path = job_path + ".out"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", job_path, out_path], cwd=ROOT, env=env,
                            stdout=log, stderr=log)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            return {"peer": job["peer"], "seed": job["seed"], "error": f"exit {proc.returncode} (see log)"}
        result = json.loads(Path(out_path).read_text())
        result["peak_rss_mib"] = usage.ru_maxrss / 1024.0          # Linux: KiB
        result["child_wall_seconds"] = wall
        return result
    finally:
        for p in (job_path, out_path):
            Path(p).unlink(missing_ok=True)


def _mean_std(values):
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v))


def summarize(runs: list[dict]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for peer in dict.fromkeys(r["peer"] for r in runs):
        ok = [r for r in runs if r["peer"] == peer and "error" not in r]
        errors = [r["error"] for r in runs if r["peer"] == peer and "error" in r]
        row: dict[str, Any] = {"n_seeds": len(ok), "errors": errors}
        for key in ("auc", "logloss", "gauc", "ndcg10", "valid_auc", "valid_gauc", "valid_ndcg10", "fit_seconds",
                    "samples_per_second", "peak_rss_mib"):
            row[key], row[key + "_std"] = _mean_std([r.get(key) for r in ok])
        row["tuned"] = ok[0]["tuned"] if ok else {}
        rows[peer] = row
    return rows


def render(dataset: str, rows: dict[str, dict], meta: dict) -> str:
    ours = rows.get(OURS, {})

    def f(x, nd=4):
        return "-" if x is None else f"{x:.{nd}f}"

    def ms(row, key, nd=4):
        if row.get(key) is None:
            return "-"
        return f"{row[key]:.{nd}f} ± {row[key + '_std']:.{nd}f}"

    def ratio(row, key):
        a, b = row.get(key), ours.get(key)
        return "-" if a is None or not b else f"{a / b:.2f}x"

    lines = [
        f"## Peers on {dataset}",
        "",
        f"samples: `{meta['samples']}` — train {meta['n_train']:,} / valid {meta['n_valid']:,} / "
        f"test {meta['n_test']:,} rows; seeds {meta['seeds']}; {meta['when']}; {meta['machine']}",
        "",
        "| peer | test AUC | Δ AUC vs dc | log loss | GAUC | NDCG@10 | train s | samples/s | "
        "samples/s ÷ dc | peak RSS MiB | RSS ÷ dc | valid AUC | valid GAUC | valid NDCG@10 | tuned |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for peer, row in rows.items():
        if row["n_seeds"] == 0:
            lines.append(f"| {peer} | failed: {row['errors'][0] if row['errors'] else '?'} |" + " |" * 13)
            continue
        delta = "-" if ours.get("auc") is None else f"{row['auc'] - ours['auc']:+.4f}"
        tuned = ", ".join(f"{k}={v}" for k, v in row["tuned"].items())
        lines.append(
            f"| {peer} | {ms(row, 'auc')} | {delta} | {ms(row, 'logloss')} | {ms(row, 'gauc')} | "
            f"{ms(row, 'ndcg10')} | {f(row['fit_seconds'], 1)} | {f(row['samples_per_second'], 0)} | "
            f"{ratio(row, 'samples_per_second')} | {f(row['peak_rss_mib'], 0)} | {ratio(row, 'peak_rss_mib')} | "
            f"{f(row['valid_auc'])} | {f(row['valid_gauc'])} | {f(row['valid_ndcg10'])} | {tuned} |")
    lines += ["", "Δ AUC: peer minus deepcrossing (default spec). Timings are wall-clock on a shared machine "
              "(noisy). log loss '-': the score is not a probability."]
    return "\n".join(lines) + "\n"


def prepare(data: Path, fmt: str, out: Path) -> Path:
    cmd = [sys.executable, "-m", "deepcrossing.cli", "prepare", "--data", str(data), "--out", str(out)]
    if fmt == "sparrow":
        cmd += ["--format", "sparrow"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=Path, help="samples folder (Parquet); default: prepare ml-latest-small")
    ap.add_argument("--sparrow-samples", type=Path,
                    help="SparrowRecSys-CSV samples folder; default: prepare --format sparrow of the same data")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="raw data for the default samples")
    ap.add_argument("--datasets", default="ml-latest-small,sparrow-csv",
                    help="comma list of ml-latest-small, ml-100k, sparrow-csv")
    ap.add_argument("--samples-100k", type=Path, help="ml-100k samples folder; default: prepare --data-100k")
    ap.add_argument("--data-100k", type=Path, default=DATA_100K, help="raw ml-100k for the default samples")
    ap.add_argument("--exclude-columns", default=DEFAULT_EXCLUDE,
                    help="sample columns no peer reads (comma list; '' = none): keep the peers' inputs the "
                         "columns the deepcrossing spec reads")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list of " + ", ".join(PEERS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 seed, one setting per peer, few epochs")
    ap.add_argument("--grid", choices=("full", "small"), default="full",
                    help="tuning grids: full (LightGBM 8, DeepCTR 8 settings) or small (2 each: the settings "
                         "that won on ml-latest-small, and one more)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--merge", action="store_true",
                    help="keep the runs of peers not run now from an earlier peers-<dataset>.json in --out")
    ap.add_argument("--merge-from", type=Path, action="append", default=[],
                    help="also keep runs of peers not run now from this peers-<dataset>.json (repeatable; "
                         "a file of another dataset is skipped)")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        job = json.loads(Path(args.worker[0]).read_text())
        res = run_peer(job["peer"], Path(job["samples"]), job["params"], job["seed"], job["quick"])
        Path(args.worker[1]).write_text(json.dumps(res))
        return 0

    seeds = list(range(1 if args.quick else args.seeds))
    os.environ["PEERS_GRID"] = args.grid                                # read by the child processes
    os.environ["PEERS_EXCLUDE"] = args.exclude_columns
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]   # "" = none: only merge and render
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        ap.error(f"unknown peers: {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="peers-"))
    datasets = {}
    for name in [x.strip() for x in args.datasets.split(",") if x.strip()]:
        if name == "ml-latest-small":
            datasets[name] = args.samples or prepare(args.data, "parquet", tmp / "samples")
        elif name == "ml-100k":
            datasets[name] = args.samples_100k or prepare(args.data_100k, "parquet", tmp / "samples-100k")
        elif name == "sparrow-csv":
            datasets[name] = args.sparrow_samples or prepare(args.data, "sparrow", tmp / "sparrow")
        else:
            ap.error(f"unknown dataset {name}")
    log_path = args.out / "peers.log"
    with open(log_path, "a") as log:
        for dataset, samples in datasets.items():
            samples = samples.resolve()
            runs: list[dict] = []
            for peer in peers:
                params: dict = {}
                for seed in seeds[:1] if peer in DETERMINISTIC else seeds:
                    job = {"peer": peer, "samples": str(samples), "params": params, "seed": seed,
                           "quick": args.quick}
                    print(f"[{dataset}] {peer} seed {seed}{' (tuning on valid)' if not params else ''} ...",
                          end=" ", flush=True)
                    log.write(f"\n==== {dataset} {peer} seed {seed} params {params}\n")
                    log.flush()
                    r = run_child(job, log)
                    runs.append(r)
                    with open(args.out / f"peers-{dataset}.runs.jsonl", "a") as fh:   # survives a kill
                        fh.write(json.dumps(r) + "\n")
                    if "error" in r:
                        print(r["error"], flush=True)
                        continue
                    params = r["tuned"] or {"fixed": True}
                    print(f"test AUC {r['auc']:.4f} valid AUC {r['valid_auc']:.4f} "
                          f"fit {r['fit_seconds']:.1f}s RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
            sources = ([args.out / f"peers-{dataset}.json"] if args.merge else []) + list(args.merge_from)
            kept: dict[str, list[dict]] = {}
            for previous in sources:
                if previous.is_file():
                    earlier = json.loads(previous.read_text())
                    # a file of another dataset is skipped (older files name it only in their file name)
                    if earlier["meta"].get("dataset", previous.name[len("peers-"):-len(".json")]) != dataset:
                        continue
                    for peer_name, group in itertools.groupby(
                            sorted(earlier["runs"], key=lambda r: r["peer"]),
                            key=lambda r: r["peer"]):
                        if peer_name not in peers:
                            kept[peer_name] = list(group)          # a later file wins for the same peer
            runs = sorted([r for g in kept.values() for r in g] + runs,
                          key=lambda r: (PEERS.index(r["peer"]), r["seed"]))
            rows = summarize(runs)
            from deepcrossing.features import read_samples  # noqa: F401 - only to fail early if missing
            splits = load_splits(samples)
            meta = {"dataset": dataset, "samples": str(samples), "seeds": seeds,
                    "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "machine": f"{os.cpu_count()} CPU cores (shared), torch threads 2",
                    "n_train": splits["train"].num_rows, "n_valid": splits["valid"].num_rows,
                    "n_test": splits["test"].num_rows, "command": " ".join(sys.argv)}
            text = render(dataset, rows, meta)
            print("\n" + text)
            (args.out / f"peers-{dataset}.md").write_text(text)
            (args.out / f"peers-{dataset}.json").write_text(json.dumps(
                {"meta": meta, "summary": rows, "runs": runs}, indent=2))
            if dataset == "ml-latest-small":
                best_peer = max((r for p, r in rows.items() if not p.startswith(OURS) and r.get("auc")),
                                key=lambda r: r["auc"], default=None)
                note = ""
                if best_peer is not None:
                    name = [p for p, r in rows.items() if r is best_peer][0]
                    note = (f"\nBest peer (not deepcrossing): **{name}**, test AUC {best_peer['auc']:.4f}; "
                            f"the target is deepcrossing >= {best_peer['auc'] + 0.01:.4f}.\n")
                (args.out / "peers-latest.md").write_text(text + note + f"\nCommand: `{meta['command']}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
