"""The layers of the Deep Crossing paper (Shan et al., KDD 2016), one ``nn.Module`` each.

Embedding -> Stacking -> Multiple Residual Units -> Scoring. Shapes use B = batch, L = bag width,
D = embedding width, S = stacked width.
"""

from __future__ import annotations

import itertools
import math
from typing import cast

import torch
from torch import Tensor, nn

from deepcrossing.config import FeatureSpec, ModelConfig, default_dim
from deepcrossing.encoding.batch import Batch
from deepcrossing.model import kernels
from deepcrossing.model.lookup import bag_lookup, bag_weights, feature_lookup, merge_views


class EmbeddingLayer(nn.Module):
    """Looks every embedded feature up in its (possibly shared) table; pools multi-valued features.

    Row 0 of every table is padding (``padding_idx=0``: zeros, no gradient), so NULLs and the padding of
    bags contribute nothing. Bags are pooled as ``sum_l w_l * E[ids_l]`` with ``w`` the per-value weights
    (1 without ``weights_from``), divided by ``sum_l w_l`` for ``pooling = "mean"`` (an all-padding bag gives
    a zero vector): ``EmbeddingBag``'s ``mean``/``sum`` with per-sample weights, computed on padded ids.

    Args:
        spec: the feature spec (which features are embedded, which table, pooling).
        cardinalities: table name -> rows (from ``Encoder.cardinalities``).
        sparse: sparse gradients for the tables (for ``SparseAdam`` on large tables).

    Example:
        >>> from deepcrossing.config import Feature
        >>> spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),))
        >>> layer = EmbeddingLayer(spec, {"movieId": 10})
        >>> layer(Batch(torch.zeros(2, 0), {"movieId": torch.tensor([0, 3])}))["movieId"].shape
        torch.Size([2, 4])
    """

    def __init__(self, spec: FeatureSpec, cardinalities: dict[str, int], sparse: bool = False) -> None:
        super().__init__()
        self.sparse = sparse
        self.tables = nn.ModuleDict()
        table_dims: dict[str, int] = {}
        for info in spec.tables().values():
            rows = int(cardinalities[info.name])
            dim = info.dim or default_dim(rows)
            table = nn.Embedding(rows, dim, padding_idx=0, sparse=sparse)
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[0].zero_()
            self.tables[info.name] = table
            table_dims[info.name] = dim
        self.features = [(f.name, f.table_name, f.is_bag, f.pooling == "mean")
                         for f in spec.features if f.embedded]
        self.dims = {name: table_dims[t] for name, t, _, _ in self.features}
        # One lookup per table: (table, single-valued features, [(bag feature, mean)]) in spec order.
        self.groups: list[tuple[str, list[str], list[tuple[str, bool]]]] = [
            (t, [n for n, tt, bag, _ in self.features if tt == t and not bag],
             [(n, mean) for n, tt, bag, mean in self.features if tt == t and bag])
            for t in self.tables]
        self._layouts: dict[tuple[object, ...], tuple[Tensor, Tensor]] = {}  # see _layout
        # The fused lookup's features: table by table, its singles then its bags (the order of the table's ids)
        self._fused = [(name, bag, mean, t) for t, (_, singles, bags) in enumerate(self.groups)
                       for name, bag, mean in [(n, False, False) for n in singles] + [(n, True, m) for n, m in bags]]
        self._feature_layouts: dict[tuple[int, ...], kernels.FeatureLayout] = {}  # see _fused_lookup

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        """Batch -> {feature: (B, D_feature)} in spec order.

        While the tables train on CPU float32 with the fused kernels, every feature is looked up in one C call
        (:meth:`_fused_lookup`). Otherwise all features of a table go together, their ids side by side, ``(B, k +
        sum L)`` (k single-valued features, then each bag's L columns): in training one
        :class:`~deepcrossing.model.lookup.BagLookup` per width (duplicate ids summed in each table's gradient),
        without gradients (evaluation, serving, export) a gather and a weighted sum per table.
        """
        fused = self._fused_lookup(batch)
        if fused is not None:
            return fused
        found: dict[str, Tensor] = {}
        training: dict[int, list[tuple[Tensor, Tensor, Tensor, list[str], list[int]]]] = {}  # width -> tables
        for table, singles, bags in self.groups:
            parts = [batch.sparse[name].unsqueeze(1) for name in singles] + [batch.bags[name] for name, _ in bags]
            ids = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)              # (B, k + sum L)
            weight = cast(Tensor, self.tables[table].weight)                             # (R, D)
            per_id = self._id_weights(batch, ids, len(singles), bags, weight.dtype)     # (B, k + sum L)
            if torch.is_grad_enabled() and weight.requires_grad:
                sizes = [1] * len(singles) + [batch.bags[name].shape[1] for name, _ in bags]
                training.setdefault(weight.shape[1], []).append(
                    (weight, ids, per_id, [*singles, *(name for name, _ in bags)], sizes))
                continue
            vectors = self.tables[table](ids)                                           # (B, k + sum L, D)
            # unbind: one backward op for all single-valued features of the table (not one zero-filled
            # (B, k + sum L, D) gradient per feature)
            found.update(zip(singles, vectors[:, :len(singles)].unbind(1)))             # each (B, D)
            pos = len(singles)
            for name, _ in bags:
                width = batch.bags[name].shape[1]
                w = per_id[:, pos:pos + width]                                          # (B, L)
                found[name] = (vectors[:, pos:pos + width] * w.unsqueeze(2)).sum(dim=1)      # (B, D)
                pos += width
        for tables in training.values():
            found.update(self._train_lookup(tables))
        return {name: found[name] for name, _, _, _ in self.features}

    def _fused_lookup(self, batch: Batch) -> dict[str, Tensor] | None:
        """The training lookup of all tables as one :func:`~deepcrossing.model.lookup.feature_lookup` straight
        from the batch's id tensors (no concatenation, ids' weights computed in C but for ``weights_from``
        bags), {feature: (B, D_f) view of one (B, sum D_f) block}; None where it does not apply (no kernels,
        not CPU float32, a table not training, no gradients). 1 thread, batch 1024, 4 tables: 426 -> 267 us."""
        weights = [cast(Tensor, table.weight) for table in self.tables.values()]
        if not (torch.is_grad_enabled() and all(w.requires_grad for w in weights) and kernels.available()):
            return None
        ids = [batch.bags[name] if bag else batch.sparse[name] for name, bag, _, _ in self._fused]
        given = [bag_weights((batch.bags[name] != 0).to(weights[0].dtype), batch.bag_weights[name], mean)
                 .contiguous() if bag and name in batch.bag_weights else None for name, bag, mean, _ in self._fused]
        if not kernels.fits([*weights, *(g for g in given if g is not None)], ids):
            return None
        key = tuple(i.shape[1] if i.dim() == 2 else 1 for i in ids)
        if key not in self._feature_layouts:
            if len(self._feature_layouts) > 16:   # bags of varying widths: a few layouts, not one per batch
                self._feature_layouts.clear()
            at = dict(zip(self.dims, itertools.accumulate(self.dims.values(), initial=0)))   # spec-order columns
            self._feature_layouts[key] = kernels.FeatureLayout(
                [t for *_, t in self._fused], key, [at[name] for name, *_ in self._fused],
                [mean for _, _, mean, _ in self._fused], [w.shape[0] for w in weights], [w.shape[1] for w in weights])
        out = feature_lookup(self._feature_layouts[key], weights, ids, given, self.sparse)     # (B, sum D_f)
        return dict(zip(self.dims, out.split_with_sizes(list(self.dims.values()), dim=1)))

    @staticmethod
    def _id_weights(batch: Batch, ids: Tensor, k: int, bags: list[tuple[str, bool]], dtype: torch.dtype) -> Tensor:
        """(B, k + sum L) weight of each id of a table's ``ids``: 0 on padding (and on a NULL single), 1 on a
        single; a bag's are its value weights (``weights_from``), divided by their sum for ``mean`` pooling."""
        keep = (ids != 0).to(dtype)                                                     # padding weighs 0
        if not any(mean or name in batch.bag_weights for name, mean in bags):
            return keep
        parts, pos = [keep[:, :k]], k
        for name, mean in bags:
            width = batch.bags[name].shape[1]
            parts.append(bag_weights(keep[:, pos:pos + width], batch.bag_weights.get(name), mean))
            pos += width
        return torch.cat(parts, dim=1)

    def _train_lookup(self, tables: list[tuple[Tensor, Tensor, Tensor, list[str], list[int]]]) -> dict[str, Tensor]:
        """The training lookup of the tables of one width, one ``bag_lookup``: per table (weight (R, D), ids and
        their weights (B, k + sum L), its output features, ids per output bag: 1 per single, L per bag) ->
        {feature: (B, D)}. Output bags, sample after sample, are each table's features in turn."""
        n = tables[0][1].shape[0]
        names = [name for *_, table_names, _ in tables for name in table_names]
        offsets, bag_of = self._layout(n, tuple(s for *_, sizes in tables for s in sizes), tables[0][1].device)
        per_id = tables[0][2] if len(tables) == 1 else torch.cat([t[2] for t in tables], dim=1)  # (B, sum c_t)
        pooled = bag_lookup([t[0] for t in tables], [t[1] for t in tables], per_id.view(-1), offsets, bag_of,
                            self.sparse)                                                 # (B F, D)
        return dict(zip(names, pooled.view(n, len(names), -1).unbind(1)))

    def _layout(self, n: int, sizes: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
        """(n F,) first id of each output bag and (n sum sizes,) output bag of each id, for ``n`` samples of F
        output bags of ``sizes`` ids each (memoised: the same few shapes come every step)."""
        key = (n, sizes, device)
        if key not in self._layouts:
            counts = torch.tensor(sizes, device=device).repeat(n)                       # ids per output bag
            if len(self._layouts) > 16:
                self._layouts.clear()
            self._layouts[key] = (counts.cumsum(0) - counts, torch.repeat_interleave(counts))
        return self._layouts[key]


class StackingLayer(nn.Module):
    """Concatenates the feature embeddings (spec order) and then the dense numerics into one vector.

    Embedding dropout (``dropout``) applies to the embedding part only, in one call over all features.

    Attributes:
        feature_slices: feature name -> slice of the stacked vector it occupies (embedded features first,
            then one column per dense feature); the serving side splits the first MLP layer with it.
        out_dim: stacked width S.

    Example:
        >>> s = StackingLayer({"movieId": 3}, ["userAvgRating"])
        >>> s.feature_slices["userAvgRating"], s({"movieId": torch.ones(2, 3)}, torch.zeros(2, 1)).shape
        (slice(3, 4, None), torch.Size([2, 4]))
    """

    def __init__(self, embedding_dims: dict[str, int], dense_names: list[str], dropout: float = 0.0) -> None:
        super().__init__()
        self.order = list(embedding_dims)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.feature_slices: dict[str, slice] = {}
        pos = 0
        for name, dim in embedding_dims.items():
            self.feature_slices[name] = slice(pos, pos + dim)
            pos += dim
        for name in dense_names:
            self.feature_slices[name] = slice(pos, pos + 1)
            pos += 1
        self.out_dim = pos

    def forward(self, embedded: dict[str, Tensor], dense: Tensor) -> Tensor:
        """{feature: (B, D_f)}, (B, n_dense) -> (B, S)."""
        parts = merge_views([embedded[name] for name in self.order])  # the fused lookup's block: one input
        if self.dropout is None or not self.training or not self.order:
            return torch.cat([*parts, dense], dim=1)
        return torch.cat([self.dropout(torch.cat(parts, dim=1)), dense], dim=1)


class GroupedLinear(nn.Module):
    """K independent affine maps side by side: the block-diagonal ``Linear(K i, K o)`` whose block k maps input
    columns ``[k i, (k+1) i)`` to outputs ``[k o, (k+1) o)``, computed block-wise by one batched matmul, so it
    costs K ``i x o`` multiply-adds per sample, not ``(K i) x (K o)``. The hidden layers of a fused K-seed
    ensemble (:mod:`deepcrossing.model.ensemble`, ``ModelConfig.groups``).

    Args:
        in_features: K i.
        out_features: K o.
        groups: K; divides both widths.

    Attributes:
        weight: (K, o, i), block k as ``nn.Linear.weight``; each block initialized like an ``nn.Linear(i, o)``.
        bias: (K, o).

    Example:
        >>> layer, x = GroupedLinear(6, 4, groups=2), torch.randn(3, 6)
        >>> dense = layer.dense_weight()                              # (4, 6), zeros off the blocks
        >>> torch.allclose(layer(x), x @ dense.T + layer.bias.flatten(), atol=1e-6)
        True
    """

    def __init__(self, in_features: int, out_features: int, groups: int) -> None:
        super().__init__()
        if groups < 1 or in_features % groups or out_features % groups:
            raise ValueError(f"{groups} groups do not divide {in_features} -> {out_features}")
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        inner, outer = in_features // groups, out_features // groups
        bound = 1.0 / math.sqrt(inner)  # nn.Linear's default init, per block (fan-in i)
        self.weight = nn.Parameter(torch.empty(groups, outer, inner).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(groups, outer).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        """(B, K i) -> (B, K o)."""
        blocks = torch.unflatten(x, 1, (self.groups, -1)).transpose(0, 1)             # (K, B, i)
        out = torch.baddbmm(self.bias.unsqueeze(1), blocks, self.weight.transpose(1, 2))  # (K, B, o)
        return out.transpose(0, 1).flatten(1)                                          # (B, K o)

    def dense_weight(self) -> Tensor:
        """(K o, K i) the block-diagonal weight of the ``nn.Linear`` this layer computes (a detached copy)."""
        dense: Tensor = torch.block_diag(*self.weight.detach())  # type: ignore[no-untyped-call]
        return dense

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, groups={self.groups}"


def linear(in_features: int, out_features: int, groups: int | None) -> nn.Linear | GroupedLinear:
    """``nn.Linear``, or a :class:`GroupedLinear` of ``groups`` blocks (``ModelConfig.groups``; None: one)."""
    return GroupedLinear(in_features, out_features, groups) if groups else nn.Linear(in_features, out_features)


class ResidualUnit(nn.Module):
    """The paper's residual unit: ``ReLU(x + W2 ReLU(W1 x + b1) + b2)``; input and output width ``dim``.

    Args:
        dim: width of x.
        inner: width of the hidden layer (W1: dim -> inner, W2: inner -> dim).
        groups: W1 and W2 as :class:`GroupedLinear` of so many blocks (None: ``nn.Linear``).

    Example:
        >>> ResidualUnit(4, 8)(torch.zeros(3, 4)).shape
        torch.Size([3, 4])
    """

    def __init__(self, dim: int, inner: int, groups: int | None = None) -> None:
        super().__init__()
        self.linear1 = linear(dim, inner, groups)
        self.linear2 = linear(inner, dim, groups)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim) -> (B, dim)."""
        return self.from_pre(x, self.linear1(x))

    def from_pre(self, x: Tensor, pre: Tensor) -> Tensor:
        """The unit given ``pre = W1 x + b1`` (B, inner), computed elsewhere (the serving split): (B, dim)."""
        return torch.relu(x + self.linear2(torch.relu(pre)))


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    if kind == "layer":
        return nn.LayerNorm(dim)
    return nn.Identity()


class MLP(nn.Module):
    """The network between stacking and scoring.

    ``residual``: (optional) projection ``ReLU(W x + b)`` to ``config.width``, then one ResidualUnit per
    entry of ``config.hidden`` (its inner width). ``plain``: ``Linear + ReLU`` layers of ``config.hidden``
    widths (SparrowRecSys's 128-128). Each unit/layer is followed by the configured norm and dropout. With
    ``config.groups`` = K every layer after the first is a :class:`GroupedLinear` (K independent blocks).

    Args:
        in_dim: stacked width S.
        config: the model config.

    Attributes:
        out_dim: output width.

    Example:
        >>> mlp = MLP(10, ModelConfig(mlp="plain", hidden=(8, 4), dropout=0.0))
        >>> mlp(torch.zeros(2, 10)).shape, mlp.out_dim
        (torch.Size([2, 4]), 4)
    """

    def __init__(self, in_dim: int, config: ModelConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        groups = config.groups  # None, or K blocks in every layer after the first (which reads every column)
        if config.mlp == "plain":
            dim = in_dim
            for i, width in enumerate(config.hidden):
                blocks += [linear(dim, width, groups if i else None), nn.ReLU(), _norm(config.norm, width),
                           nn.Dropout(config.dropout)]
                dim = width
        else:
            dim = in_dim
            if config.width:
                blocks += [nn.Linear(in_dim, config.width), nn.ReLU(), _norm(config.norm, config.width)]
                dim = config.width
            for inner in config.hidden:  # groups come with a projection (ModelConfig checks width > 0)
                blocks += [ResidualUnit(dim, inner, groups), _norm(config.norm, dim), nn.Dropout(config.dropout)]
        self.blocks = nn.ModuleList([b for b in blocks if not isinstance(b, nn.Identity)
                                     and not (isinstance(b, nn.Dropout) and b.p == 0.0)])
        self.out_dim = dim
        # The blocks after the first one without the dropouts (the identity in eval mode): the serving path
        # skips their call overhead. A plain list: the modules are registered once, in ``blocks``.
        self._rest_eval = [b for b in list(self.blocks)[1:] if not isinstance(b, nn.Dropout)]

    def forward(self, x: Tensor) -> Tensor:
        """(B, S) -> (B, out_dim)."""
        for block in self.blocks:
            # ReLU in place: its input is the fresh output of the block before (a Linear, whose backward
            # does not need it), never ``x`` itself (the first block is a Linear or a ResidualUnit); one
            # (B, H) buffer less per layer (1 thread, batch 1024: ~5% of the MLP's forward + backward)
            x = torch.relu_(x) if type(block) is nn.ReLU else block(x)
        return x

    @property
    def first_linear(self) -> nn.Linear:
        """The first affine map applied to the stacked vector: the plain MLP's first layer, the projection,
        or the first residual unit's ``linear1`` (its pre-activation splits by input columns). There is always
        one: ``ModelConfig.hidden`` is never empty.
        """
        first = self.blocks[0]
        found = first.linear1 if isinstance(first, ResidualUnit) else first
        assert isinstance(found, nn.Linear)  # a Linear or a ResidualUnit, never grouped, by construction
        return found

    @property
    def first_needs_input(self) -> bool:
        """True if the first block needs its input again after :attr:`first_linear` (a residual skip)."""
        return isinstance(self.blocks[0], ResidualUnit)

    def from_first_layer(self, pre: Tensor, x: Tensor) -> Tensor:
        """The MLP given ``pre = first_linear(x)`` (B, H): the rest of the first block, then every later one.

        Args:
            pre: (B, H) the first layer's pre-activation (possibly summed from per-side partials).
            x: (B, S) the stacked input, read only when :attr:`first_needs_input` (else any (B, 0) tensor).

        Returns:
            (B, out_dim), equal to ``forward(x)`` (dropout is skipped in eval mode, where it is the identity).
        """
        first = self.blocks[0]
        h = first.from_pre(x, pre) if isinstance(first, ResidualUnit) else pre
        for block in self._rest_eval if not self.training else list(self.blocks)[1:]:
            h = block(h)
        return h


class ScoringLayer(nn.Module):
    """One logit per sample: ``w . x + b``. The sigmoid is applied only when scoring for people.

    Example:
        >>> ScoringLayer(4)(torch.zeros(3, 4)).shape
        torch.Size([3])
    """

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B,) logits."""
        logits: Tensor = self.linear(x).squeeze(-1)
        return logits
