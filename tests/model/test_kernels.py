"""The fused C kernels against the pure-torch path: the same vectors and gradients bit for bit; the build cache;
the fallback when they are off or cannot be built; out-of-range ids raise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from deepcrossing.model import kernels
from deepcrossing.model.lookup import bag_lookup

needs_compiler = pytest.mark.skipif(shutil.which(os.environ.get("CC") or "cc") is None, reason="no C compiler")


def _lookup_case(n: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor,
                                             torch.Tensor]:
    """Three tables of one width (a large one, a tiny one with many duplicates, a middle one holding two
    bags of 4 and 2 ids): (tables, ids (n, c_t), per_id (N,) with weight-0 padding, offsets, bag_of)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [[1], [1, 1, 1], [4, 2]]                                  # ids per output bag, per table
    tables = [torch.randn(rows, 5, generator=g) for rows in (5000, 4, 30)]
    ids = [torch.randint(0, t.shape[0], (n, sum(s)), generator=g) for t, s in zip(tables, sizes)]
    ids[2][:, 4:][::2] = 0                                            # padding in the second bag
    per_id = torch.cat([torch.rand(n, sum(s), generator=g) for s in sizes], dim=1)
    per_id[:, -2:][::2] = 0.0                                         # padding weighs 0
    counts = torch.tensor([c for s in sizes for c in s]).repeat(n)
    return tables, ids, per_id.view(-1), counts.cumsum(0) - counts, torch.repeat_interleave(counts)


def _run(case: tuple, sparse: bool, upstream_seed: int = 9) -> tuple[torch.Tensor, list[torch.Tensor]]:
    tables, ids, per_id, offsets, bag_of = case
    weights = [t.clone().requires_grad_() for t in tables]
    out = bag_lookup(weights, ids, per_id, offsets, bag_of, sparse)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed)))
    return out.detach(), [w.grad for w in weights]


@needs_compiler
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("n", [64, 0])                                # a batch, an empty batch
def test_fused_lookup_equals_the_torch_path_bit_for_bit(monkeypatch, sparse, n):
    case = _lookup_case(n, seed=n + 1)
    assert kernels.available() and kernels.fits([*case[0], case[2]], [*case[1], case[4]])
    fused_out, fused_grads = _run(case, sparse)
    monkeypatch.setenv("DEEPCROSSING_KERNELS", "0")
    assert not kernels.available()
    torch_out, torch_grads = _run(case, sparse)
    assert torch.equal(fused_out, torch_out)                          # embedding_bag's fused multiply-adds
    for fused, plain in zip(fused_grads, torch_grads):
        assert fused.is_sparse == plain.is_sparse == sparse
        if sparse:                                                    # ascending distinct rows, as torch's
            rows = fused._indices()[0]
            assert bool((rows[1:] > rows[:-1]).all()) and torch.equal(fused._indices(), plain._indices())
            assert torch.equal(fused._values(), plain._values())      # duplicates summed in index_add_'s order
        else:
            assert torch.equal(fused, plain)


@needs_compiler
def test_backward_rows_of_a_large_table_are_ascending_and_distinct():
    ids = [torch.tensor([[2_000_003], [7], [2_000_003], [0]])]
    rows, values = kernels.bag_backward([3_000_000], ids, torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.arange(4),
                                        torch.ones(4, 2))[0]
    assert rows.tolist() == [0, 7, 2_000_003] and values.tolist() == [[0.0, 0.0], [2.0, 2.0], [4.0, 4.0]]


@needs_compiler
@pytest.mark.parametrize("bad", [5, -1])
def test_an_id_outside_the_table_raises_before_anything_is_written(bad):
    table = torch.zeros(5, 2)
    ids = [torch.tensor([[1], [bad]])]
    with pytest.raises(IndexError, match="out of range"):
        kernels.bag_forward([table], ids, torch.ones(2), torch.arange(2), 2)
    with pytest.raises(IndexError, match="out of range"):
        kernels.bag_backward([5], ids, torch.ones(2), torch.arange(2), torch.ones(2, 2))
    for bags in (torch.tensor([0, 2]), torch.tensor([-1, 0])):                                           # a bag
        with pytest.raises(IndexError, match="bag .* out of range"):
            kernels.bag_forward([table], [torch.tensor([[1], [2]])], torch.ones(2), bags, 2)
        with pytest.raises(IndexError, match="bag .* out of range"):
            kernels.bag_backward([5], [torch.tensor([[1], [2]])], torch.ones(2), bags, torch.ones(2, 2))


@needs_compiler
def test_build_is_cached_and_concurrent_builds_leave_one_library(tmp_path):
    built: list[Path] = []
    threads = [threading.Thread(target=lambda: built.append(kernels.build(tmp_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(built)) == 1 and built[0].is_file()
    assert [p.name for p in tmp_path.iterdir()] == [built[0].name]    # no temporary file left behind
    mtime = built[0].stat().st_mtime_ns
    assert kernels.build(tmp_path) == built[0] and built[0].stat().st_mtime_ns == mtime   # not rebuilt


FALLBACK = """
import logging, torch
logging.basicConfig(level=logging.WARNING)
from deepcrossing.model import kernels
from deepcrossing.model.lookup import bag_lookup
w = torch.arange(8.0).view(4, 2).requires_grad_()
for _ in range(3):
    out = bag_lookup([w], [torch.tensor([[3, 1, 3]])], torch.tensor([1.0, 0.5, 0.5]), torch.tensor([0, 1]),
                     torch.tensor([0, 1, 1]), True)
    out.sum().backward()
print(kernels.available(), out.tolist(), w.grad.coalesce().values().tolist())
"""


def test_a_failed_build_falls_back_to_the_torch_path_with_one_warning(tmp_path):
    src = str(Path(kernels.__file__).parents[2])
    done = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": src, "XDG_CACHE_HOME": str(tmp_path), "CC": "/no/cc"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "False [[6.0, 7.0], [4.0, 5.0]] [[1.5, 1.5], [4.5, 4.5]]"
    assert done.stderr.count("fused embedding kernels off (build failed: no C compiler") == 1, done.stderr
    assert not any(tmp_path.rglob("*.so"))


def test_switched_off_the_torch_path_runs_with_at_most_one_warning(monkeypatch, caplog):
    monkeypatch.setenv("DEEPCROSSING_KERNELS", "0")
    case = _lookup_case(16, seed=3)
    with caplog.at_level("WARNING", logger="deepcrossing.model.kernels"):
        results = [_run(case, sparse=True) for _ in range(3)]
    assert not kernels.available()
    assert len([r for r in caplog.records if "kernels off" in r.message]) <= 1      # once per process, not per step
    assert all(torch.equal(out, results[0][0]) for out, _ in results)


def _features() -> tuple[kernels.FeatureLayout, list[torch.Tensor], list[torch.Tensor]]:
    """Two tables (widths 2 and 3); features table by table: a single and a mean bag of table 0, a sum bag of
    table 1; output columns in another order (the bag of table 1 first)."""
    tables = [torch.arange(10.0).view(5, 2), torch.arange(12.0).view(4, 3)]
    layout = kernels.FeatureLayout(tab=[0, 0, 1], cols=[1, 3, 2], at=[3, 5, 0], mean=[False, True, False],
                                   rows=[5, 4], dims=[2, 3])
    ids = [torch.tensor([4, 0]), torch.tensor([[1, 2, 0], [0, 0, 0]]), torch.tensor([[3, 3], [0, 1]])]
    return layout, tables, ids


@needs_compiler
def test_feature_forward_pools_every_feature_into_its_columns():
    layout, tables, ids = _features()
    out, per_id = kernels.feature_forward(layout, tables, ids, [None, None, None])
    assert per_id.tolist() == [1.0, 0.5, 0.5, 0.0, 1.0, 1.0,                        # sample 0
                               0.0, 0.0, 0.0, 0.0, 0.0, 1.0]                        # NULL single, empty bag
    assert out.tolist() == [[18.0, 20.0, 22.0, 8.0, 9.0, 3.0, 4.0],
                            [3.0, 4.0, 5.0, 0.0, 0.0, 0.0, 0.0]]
    given = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])                       # weights_from: used as given
    out, per_id = kernels.feature_forward(layout, tables, ids, [None, given, None])
    assert per_id.view(2, 6)[:, 1:4].tolist() == given.tolist() and out[0, 5:].tolist() == [4.0, 7.0]
    rows_values = kernels.feature_backward(layout, ids, per_id, torch.ones(2, 7))
    assert [(r.tolist(), v.tolist()) for r, v in rows_values] == [
        ([0, 1, 2, 4], [[4.0, 4.0], [2.0, 2.0], [0.0, 0.0], [1.0, 1.0]]),           # row 0: given 1 + 3
        ([0, 1, 3], [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])]           # row 0: padding, 0


@needs_compiler
@pytest.mark.parametrize("bad", [5, -1])
def test_a_feature_id_outside_its_table_raises_in_forward_and_backward(bad):
    layout, tables, ids = _features()
    _, per_id = kernels.feature_forward(layout, tables, ids, [None, None, None])
    ids[1][1, 2] = bad
    with pytest.raises(IndexError, match=f"index {bad} is out of range for a table of 5 rows"):
        kernels.feature_forward(layout, tables, ids, [None, None, None])
    with pytest.raises(IndexError, match=f"index {bad} is out of range for a table of 5 rows"):
        kernels.feature_backward(layout, ids, per_id, torch.ones(2, 7))
    ids[1] = torch.zeros(2, 2, dtype=torch.int64)                                   # not the layout's 3 columns
    with pytest.raises(ValueError, match="for a layout of"):
        kernels.feature_forward(layout, tables, ids, [None, None, None])


@needs_compiler
def test_feature_backward_reads_a_column_slice_of_a_wider_gradient_in_place():
    layout, tables, ids = _features()
    _, per_id = kernels.feature_forward(layout, tables, ids, [None, None, None])
    wide = torch.randn(2, 10)
    sliced = kernels.feature_backward(layout, ids, per_id, wide[:, :7])             # row stride 10
    copied = kernels.feature_backward(layout, ids, per_id, wide[:, :7].contiguous())
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(sliced, copied))
    transposed = kernels.feature_backward(layout, ids, per_id, wide[:, :7].t().contiguous().t())   # copied first
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(transposed, copied))
