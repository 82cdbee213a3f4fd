"""Ids at scale: a hashed user id feature keeps the embedding table at ``hash_buckets + 1`` rows and the memory
of fit + training independent of how many distinct users there are (a vocabulary grows with them).

The 10M-distinct-users run is ``benchmarks/scale.py --users 10000000``; here the same pipeline runs at 2,000
vs 400,000 distinct users over the same 400,000 rows, each in its own child process (peak RSS).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepcrossing.config import Feature, FeatureSpec
from deepcrossing.training.stream import StreamOptions, fit_streaming

ROOT = Path(__file__).resolve().parents[2]
ROWS, BUCKETS = 400_000, 4096


def _samples(path: Path, distinct: int) -> Path:
    rng = np.random.default_rng(0)
    users = rng.permutation(np.arange(ROWS) % distinct) * 7919 + 10**9  # ids far from 0..distinct
    x = rng.standard_normal(ROWS)
    table = pa.table({"userId": pa.array(users, pa.int64()), "x": x, "label": (x > 0).astype(np.int8)})
    pq.write_table(table, path, row_group_size=50_000)
    return path


def _spec(kind: str) -> FeatureSpec:
    user = Feature("userId", "hashed", "user", hash_buckets=BUCKETS, dim=8) if kind == "hashed" else \
        Feature("userId", "categorical", "user", dim=8)
    return FeatureSpec((user, Feature("x", "numeric", transform="standardize")))


def test_the_hashed_table_has_the_bucket_count_whatever_the_number_of_users(tmp_path):
    from deepcrossing.model import DeepCrossing
    from deepcrossing.config import ModelConfig

    for distinct in (2_000, ROWS):
        path = _samples(tmp_path / f"{distinct}.parquet", distinct)
        hashed = fit_streaming(path, _spec("hashed"), StreamOptions())
        assert hashed.cardinalities == {"userId": BUCKETS + 1}
        assert hashed.state()["tables"]["userId"]["state"] == {"buckets": BUCKETS}  # no per-id state
        model = DeepCrossing(_spec("hashed"), ModelConfig(hidden=(8,), width=8), hashed.cardinalities)
        assert model.embedding.tables["userId"].weight.shape == (BUCKETS + 1, 8)
        rows = hashed.transform(pq.read_table(path)).sparse["userId"]
        assert int(rows.min()) >= 1 and int(rows.max()) <= BUCKETS
        assert len(set(rows.tolist())) > min(distinct, BUCKETS) * 0.6  # the buckets are used, not collapsed
        vocab = fit_streaming(path, _spec("vocab"), StreamOptions())
        assert vocab.cardinalities == {"userId": distinct + 2}  # what a vocabulary would cost instead


CHILD = textwrap.dedent("""
    import json, sys, torch
    from deepcrossing.config import Feature, FeatureSpec, ModelConfig, TrainConfig
    from deepcrossing.model import DeepCrossing, DeepCrossingTrain
    from deepcrossing.training.stream import ParquetStream, StreamOptions, fit_streaming
    from deepcrossing.training.trainer import Trainer

    torch.set_num_threads(1)
    path, buckets = sys.argv[1], int(sys.argv[2])
    spec = FeatureSpec((Feature("userId", "hashed", "user", hash_buckets=buckets, dim=8),
                        Feature("x", "numeric", transform="standardize")))
    encoder = fit_streaming(path, spec, StreamOptions())
    model = DeepCrossing(spec, ModelConfig(hidden=(8,), width=8), encoder.cardinalities, sparse=True)
    stream = ParquetStream(path, encoder, None, StreamOptions(window=2))
    import pyarrow.parquet as pq
    valid = encoder.transform(pq.ParquetFile(path).read_row_group(0))
    config = TrainConfig(epochs=1, batch_size=4096, optimizer="sparse_adam", patience=0)
    Trainer(DeepCrossingTrain(model), config).fit(stream, valid)
    status = open("/proc/self/status").read()
    print(json.dumps({"peak_rss": int(next(l for l in status.splitlines() if l.startswith("VmHWM")).split()[1])}))
""")


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_distinct_users(tmp_path):
    peaks = {}
    for distinct in (2_000, ROWS):
        path = _samples(tmp_path / f"{distinct}.parquet", distinct)
        proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(BUCKETS)], capture_output=True, text=True,
                              timeout=300, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        peaks[distinct] = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss"] / 1024  # MiB
    # 200x more distinct users: the same peak (within allocator noise), bounded by the bucket count
    assert abs(peaks[ROWS] - peaks[2_000]) < 24, peaks
