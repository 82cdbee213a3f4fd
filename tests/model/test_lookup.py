"""The training lookup (BagLookup) against nn.Embedding + pooling: same vectors, same table gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from deepcrossing.config import Feature, FeatureSpec
from deepcrossing.encoding import Batch
from deepcrossing.model import EmbeddingLayer
from deepcrossing.model.lookup import bag_lookup, unique_rows
from deepcrossing.training.optim import RowSparseAdam


@pytest.fixture(params=["1", "0"], ids=["kernels", "torch"])
def kernels_switch(request, monkeypatch):
    """Both paths of BagLookup and RowSparseAdam: the fused C kernels (where built) and pure torch."""
    monkeypatch.setenv("DEEPCROSSING_KERNELS", request.param)
    return request.param


@pytest.mark.parametrize(("rows", "n"), [(30, 200), (100_000, 50), (7, 0)])  # marked mask, sort, empty
def test_unique_rows_is_torch_unique(rows, n):
    ids = torch.randint(0, rows, (n,), generator=torch.Generator().manual_seed(rows))
    distinct, inverse = unique_rows(ids, rows)
    want, want_inverse = torch.unique(ids, return_inverse=True)
    assert torch.equal(distinct, want) and torch.equal(inverse, want_inverse)
    assert torch.equal(distinct[inverse], ids)


@pytest.mark.parametrize("copies", [1, 20])  # the sort path (table >> batch), the marked-mask path
def test_an_id_outside_the_table_is_an_index_error(copies, kernels_switch):
    weight = torch.zeros(5, 2, requires_grad=True)
    ids = torch.tensor([1, 5] * copies)
    with pytest.raises(IndexError):
        bag_lookup([weight], [ids.view(-1, 1)], torch.ones(len(ids)), torch.arange(len(ids)), torch.arange(len(ids)),
                   True)


SPEC = FeatureSpec((
    Feature("movieId", "categorical", "item", table="movie", dim=3),
    Feature("genre1", "categorical", "item", table="genre", dim=3),
    Feature("genre2", "categorical", "item", table="genre", dim=3),
    Feature("recent", "multi_hot", "user", table="movie", pooling="mean"),
    Feature("recentSum", "multi_hot", "user", table="movie", pooling="sum"),
    Feature("weighted", "multi_hot", "user", table="movie", pooling="mean", weights_from="values"),
    Feature("tags", "multi_hot", "item", table="tag", pooling="sum"),  # a table of one bag and no single
))


def _batch(n: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = {name: torch.randint(0, 9, (n,), generator=g) for name in ("movieId", "genre1", "genre2")}  # 0 = NULL
    bags = {name: torch.randint(0, 9, (n, width), generator=g)
            for name, width in (("recent", 4), ("recentSum", 3), ("weighted", 5), ("tags", 2))}
    bags["recent"][0] = 0  # an all-padding bag
    return Batch(torch.zeros(n, 0), ids, bags, {"weighted": torch.rand(n, 5, generator=g)}, torch.zeros(n))


def _reference(layer: EmbeddingLayer, batch: Batch) -> dict[str, torch.Tensor]:
    """The plain definition: one F.embedding per feature (padding_idx=0), weighted sum / mean of bags."""
    out = {}
    for f in SPEC.features:
        table = layer.tables[f.table_name].weight
        if not f.is_bag:
            out[f.name] = F.embedding(batch.sparse[f.name], table, padding_idx=0)
            continue
        ids = batch.bags[f.name]
        w = (ids != 0).float() * batch.bag_weights.get(f.name, torch.ones_like(ids, dtype=torch.float))
        if f.pooling == "mean":
            w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
        out[f.name] = (F.embedding(ids, table, padding_idx=0) * w.unsqueeze(2)).sum(dim=1)
    return out


@pytest.mark.parametrize("sparse", [True, False])
def test_training_lookup_gives_the_reference_vectors_and_gradients(sparse, kernels_switch):
    torch.manual_seed(0)
    layer = EmbeddingLayer(SPEC, {"movie": 9, "genre": 9, "tag": 9}, sparse=sparse)
    reference = copy.deepcopy(layer)
    batch = _batch(64, seed=1)
    got, want = layer(batch), _reference(reference, batch)
    with torch.no_grad():
        assert set(got) == set(want) == set(layer(batch))  # the training and the no-grad paths: same features
        for name, vectors in layer(batch).items():
            torch.testing.assert_close(got[name], vectors, rtol=1e-6, atol=1e-7)
    upstream = {name: torch.randn_like(v) for name, v in want.items()}
    torch.autograd.backward([got[k] for k in upstream], list(upstream.values()))
    torch.autograd.backward([want[k] for k in upstream], list(upstream.values()))
    for name, table in layer.tables.items():
        grad = table.weight.grad
        torch.testing.assert_close(grad.to_dense(), reference.tables[name].weight.grad, rtol=1e-5, atol=1e-6)
        assert grad.is_sparse == sparse
        if sparse:  # one row per distinct id, ascending: the optimizer needs no sort
            rows = grad._indices()[0]
            assert bool((rows[1:] > rows[:-1]).all())
        assert float(grad.to_dense()[0].abs().max()) == 0.0  # padding gets no gradient
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7)


def test_sparse_adam_steps_with_the_training_lookup_match_the_reference(kernels_switch):
    torch.manual_seed(0)
    layer = EmbeddingLayer(SPEC, {"movie": 9, "genre": 9, "tag": 9}, sparse=True)
    reference = copy.deepcopy(layer)
    opt, ref_opt = RowSparseAdam(layer.parameters(), lr=1e-2), torch.optim.SparseAdam(reference.parameters(), lr=1e-2)
    for step in range(10):
        batch = _batch(32, seed=step)
        for module, optimizer, out in ((layer, opt, layer(batch)), (reference, ref_opt, _reference(reference, batch))):
            optimizer.zero_grad()
            sum(((v - 1.0) ** 2).sum() for v in out.values()).backward()
            if optimizer is ref_opt:  # F.embedding's gradients are dense here: make them sparse for SparseAdam
                for p in module.parameters():
                    p.grad = p.grad.to_sparse(1)
            optimizer.step()
    for name, table in layer.tables.items():
        torch.testing.assert_close(table.weight, reference.tables[name].weight, rtol=1e-5, atol=1e-6)
        assert float(table.weight.detach()[0].abs().max()) == 0.0  # the padding row never moves


@pytest.mark.parametrize("sparse", [True, False])
def test_one_lookup_of_several_tables_equals_one_per_table_bit_for_bit(sparse, kernels_switch):
    g = torch.Generator().manual_seed(3)
    n, widths = 16, (1, 3, 1)  # ids per output bag of each table: a single, a bag of 3, a single
    tables = [torch.randn(rows, 4, generator=g).requires_grad_() for rows in (50, 7, 2000)]
    ids = [torch.randint(0, t.shape[0], (n, c), generator=g) for t, c in zip(tables, widths)]
    per_id = [torch.rand(n, c, generator=g) for c in widths]

    def layout(sizes):
        counts = torch.tensor(sizes).repeat(n)
        return counts.cumsum(0) - counts, torch.repeat_interleave(counts)

    fused = bag_lookup(tables, ids, torch.cat(per_id, dim=1).view(-1), *layout(widths), sparse).view(n, 3, 4)
    upstream = torch.randn(n, 3, 4, generator=g)
    fused.backward(upstream)
    fused_grads = [t.grad for t in tables]
    for i, (table, table_ids, weights, c) in enumerate(zip(tables, ids, per_id, widths)):
        table.grad = None
        alone = bag_lookup([table], [table_ids], weights.view(-1), *layout((c,)), sparse)   # (n, 4)
        assert torch.equal(alone, fused[:, i].detach())
        alone.backward(upstream[:, i])
        assert table.grad.is_sparse == sparse
        if sparse:
            assert torch.equal(table.grad._indices(), fused_grads[i]._indices())
            assert torch.equal(table.grad._values(), fused_grads[i]._values())
        else:
            assert torch.equal(table.grad, fused_grads[i])


def test_tables_of_two_widths_are_two_lookups_with_the_reference_gradients():
    spec = FeatureSpec((Feature("movieId", "categorical", "item", table="movie", dim=3),
                        Feature("genre1", "categorical", "item", table="genre", dim=2),
                        Feature("tags", "multi_hot", "item", table="tag", pooling="sum", dim=3)))
    torch.manual_seed(0)
    layer = EmbeddingLayer(spec, {"movie": 9, "genre": 9, "tag": 9}, sparse=True)
    reference = copy.deepcopy(layer)
    g = torch.Generator().manual_seed(5)
    batch = Batch(torch.zeros(8, 0), {k: torch.randint(0, 9, (8,), generator=g) for k in ("movieId", "genre1")},
                  {"tags": torch.randint(0, 9, (8, 3), generator=g)})
    got = layer(batch)
    with torch.no_grad():
        want = reference(batch)
    assert [v.shape[1] for v in got.values()] == [3, 2, 3]
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7)
    sum((v ** 2).sum() for v in got.values()).backward()
    ref_out = {f: reference.tables[t].weight for f, t in (("movieId", "movie"), ("genre1", "genre"))}
    (sum((torch.nn.functional.embedding(batch.sparse[f], w, padding_idx=0) ** 2).sum() for f, w in ref_out.items())
     + (torch.nn.functional.embedding(batch.bags["tags"], reference.tables["tag"].weight, padding_idx=0)
        * (batch.bags["tags"] != 0).unsqueeze(2)).sum(1).pow(2).sum()).backward()
    for name, table in layer.tables.items():
        torch.testing.assert_close(table.weight.grad.to_dense(), reference.tables[name].weight.grad, rtol=1e-5,
                                   atol=1e-6)


TWO_WIDTHS = FeatureSpec((
    Feature("tags", "multi_hot", "item", table="tag", pooling="sum", dim=3),          # a bag before the single
    Feature("movieId", "categorical", "item", table="movie", dim=3),
    Feature("genre1", "categorical", "item", table="genre", dim=2),
    Feature("recent", "multi_hot", "user", table="movie", pooling="mean", dim=3),
    Feature("weighted", "multi_hot", "user", table="movie", pooling="mean", weights_from="values", dim=3),
    Feature("genre2", "categorical", "item", table="genre", dim=2),
))


@pytest.mark.parametrize("spec", [SPEC, TWO_WIDTHS], ids=["one-width", "two-widths"])
@pytest.mark.parametrize("sparse", [True, False])
def test_the_fused_lookup_of_all_tables_equals_the_per_width_lookup_bit_for_bit(monkeypatch, spec, sparse):
    """EmbeddingLayer's one-call FeatureLookup (kernels on) against its torch path (kernels off): the same vectors
    and table gradients, bit for bit (mean, sum and weighted bags, an all-padding bag, tables of two widths)."""
    from deepcrossing.model import kernels

    if not kernels.available():
        pytest.skip("no fused kernels here")
    torch.manual_seed(0)
    layer = EmbeddingLayer(spec, {"movie": 9, "genre": 9, "tag": 9}, sparse=sparse)
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv("DEEPCROSSING_KERNELS", switch)
        copy_ = copy.deepcopy(layer)
        batch = _batch(64, seed=1)
        assert (copy_._fused_lookup(batch) is not None) == (switch == "1")
        out = copy_(batch)
        g = torch.Generator().manual_seed(4)
        torch.autograd.backward(list(out.values()), [torch.randn(v.shape, generator=g) for v in out.values()])
        results.append((out, {name: t.weight.grad for name, t in copy_.tables.items()}))
    (fused, fused_grads), (plain, plain_grads) = results
    assert list(fused) == list(plain) == [f.name for f in spec.features]
    for name in fused:
        assert torch.equal(fused[name], plain[name]), name
    for name, grad in fused_grads.items():
        assert grad.is_sparse == plain_grads[name].is_sparse == sparse
        if sparse:
            assert torch.equal(grad._indices(), plain_grads[name]._indices()), name
            assert torch.equal(grad._values(), plain_grads[name]._values()), name
        else:
            assert torch.equal(grad, plain_grads[name]), name


def test_the_fused_lookup_steps_aside_without_gradients_or_for_frozen_tables(monkeypatch):
    from deepcrossing.model import kernels

    monkeypatch.setenv("DEEPCROSSING_KERNELS", "1")
    if not kernels.available():
        pytest.skip("no fused kernels here")
    layer, batch = EmbeddingLayer(SPEC, {"movie": 9, "genre": 9, "tag": 9}), _batch(8, seed=2)
    assert layer._fused_lookup(batch) is not None
    with torch.no_grad():
        assert layer._fused_lookup(batch) is None
    layer.tables["tag"].weight.requires_grad_(False)
    assert layer._fused_lookup(batch) is None
    layer.tables["tag"].weight.requires_grad_(True)
    batch.bag_weights["weighted"] = batch.bag_weights["weighted"].double()   # not float32: the torch path
    assert layer._fused_lookup(batch) is None


def test_merge_views_merges_only_a_leading_run_of_views_that_tile_one_block():
    from deepcrossing.model.lookup import merge_views

    block, other = torch.randn(4, 6), torch.randn(4, 2)
    a, b, c = block.split([1, 2, 3], dim=1)
    assert [t.shape[1] for t in merge_views([a, b, c, other])] == [6, 2]
    assert merge_views([a, b, c, other])[0] is block
    for parts in ([b, a, c], [a, b], [a, c], [other, a, b, c], [block.t()[:2].t(), other], []):  # no tiling run
        assert merge_views(parts) == parts
    assert merge_views([a, b, c]) == [block]


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_stacking_the_fused_block_gives_the_same_gradients_as_stacking_its_views(monkeypatch, dropout):
    """DeepCrossing's step with the fused lookup: stacking the block in one piece (its gradient a column slice
    read in place) against stacking each feature's view: the same logits and gradients, bit for bit."""
    from deepcrossing.config import ModelConfig
    from deepcrossing.model import DeepCrossing, kernels
    from deepcrossing.model import layers as layers_module

    if not kernels.available():
        pytest.skip("no fused kernels here")
    results = []
    for merge in (True, False):
        if not merge:
            monkeypatch.setattr(layers_module, "merge_views", lambda parts: parts)
        torch.manual_seed(0)
        model = DeepCrossing(TWO_WIDTHS, ModelConfig(hidden=(8,), width=6, embedding_dropout=dropout),
                             {"movie": 9, "genre": 9, "tag": 9}, sparse=True).train()
        torch.manual_seed(1)
        logits = model(_batch(32, seed=3))
        logits.pow(2).sum().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (merged, merged_grads), (views, view_grads) = results
    assert torch.equal(merged, views)
    for name, grad in merged_grads.items():
        other = view_grads[name]
        assert torch.equal(grad.to_dense(), other.to_dense()), name
