"""A fused ensemble (model/ensemble.py) is served like any model: the split first layer (with the pair part)
ranks exactly like the plain forward pass, and its scores are the members' mean logit."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from test_pair_scorer import check_fast_equals_plain

from deepcrossing.config import TrainConfig
from deepcrossing.model.ensemble import fuse
from deepcrossing.serving.engine import Engine
from deepcrossing.serving.publish import build_records, schema_from_json
from deepcrossing.serving.scorer import Scorer, join_user_movies
from deepcrossing.training import artifact


def test_fused_model_is_served_like_the_members_mean(synth_data, sqlite_url, make_loaded, tmp_path):
    members = [make_loaded(synth_data["samples"], "residual", seed=s, steps=10) for s in range(3)]
    fused = fuse([m.model for m in members])
    artifact.save(tmp_path / "model", fused, members[0].encoder, TrainConfig(epochs=1))
    engine = Engine.open(tmp_path / "model", sqlite_url)
    assert engine.state is not None and engine.state.scorer.pair_idx is not None   # the pair part too
    check_fast_equals_plain(engine)

    users, movies, _, meta = build_records(synth_data["dataset"])
    user = pa.Table.from_pylist([users[5][1]["features"]], schema=schema_from_json(meta["user_schema"]))
    movie = pa.Table.from_pylist([r["features"] for _, r in movies[:300]],
                                 schema=schema_from_json(meta["movie_schema"]))
    joined = join_user_movies(user, movie)
    loaded = artifact.load(tmp_path / "model")
    scorer = Scorer(loaded)
    fast = scorer.fast(scorer.user(user), scorer.items(movie), np.arange(300))
    mean = torch.stack([Scorer(m).plain(joined) for m in members]).mean(dim=0)
    torch.testing.assert_close(fast, mean, atol=1e-5, rtol=0)
    assert fast.std() > 1e-3
    assert loaded.model.config.groups == 3                                 # computed as 3 blocks after the split
    pytest.importorskip("onnxruntime")
    onnx = Scorer(loaded, backend="onnx")           # the tail exported to ONNX, the blocks' batched matmul with it
    torch.testing.assert_close(onnx.fast(scorer.user(user), scorer.items(movie), np.arange(300)), fast,
                               atol=1e-5, rtol=0)
    engine.store.close()
