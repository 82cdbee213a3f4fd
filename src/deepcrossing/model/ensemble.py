"""K Deep Crossing models of one spec (K seeds) fused into ONE :class:`DeepCrossing` whose logit is their mean.

Nothing downstream changes: the fused model is an ordinary ``DeepCrossing`` (same class, model files, export
and serving split), only K times wider. With member k's units at known positions of every fused vector (a
*layout*: member k -> the fused positions of its units, in its own order), each layer is filled so that
member k's units read only member k's units:

* embedding tables: member rows concatenated along the embedding dim (``(rows, K*D)``; a shared table stays
  shared); numeric embeddings alike (``periodic``: the K*k frequencies, ``Linear + ReLU``: K blocks);
* the stacked vector concatenates per feature, so member k's stacked columns are interleaved: feature f's
  block holds ``[member 0's D_f | member 1's D_f | ...]``, while a dense column (and a raw ``ple`` encoding)
  is one column read by every member (:func:`stacked_layout`);
* the first ``Linear``: member k's row block reads member k's stacked columns (and the shared ones); later
  ``Linear`` layers and residual units block-diagonal (the identity skip stays block-wise), held as K blocks
  (``ModelConfig.groups`` = K, :class:`~deepcrossing.model.layers.GroupedLinear`: one batched matmul, K x one
  member's multiply-adds, not K^2; :func:`ungroup` gives the dense form); BatchNorm's eval statistics
  concatenated per channel;
* the scoring layer: the members' weights concatenated and divided by K, the bias their mean, so the logit
  is ``mean_k logit_k`` (up to float rounding).

LayerNorm normalizes over all units of a layer, so K members' layers cannot share one: refused, as is a
residual MLP without projection (``width = 0``) over shared stacked columns (its skip would add them once
for all members). Shapes: B batch, S stacked width, H a layer's width, K members.

Example:
    >>> from deepcrossing.config import Feature, FeatureSpec, ModelConfig
    >>> from deepcrossing.encoding.batch import Batch
    >>> spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),
    ...                     Feature("userAvgRating", "numeric", "user", transform="standardize")))
    >>> members = [DeepCrossing(spec, ModelConfig(hidden=(8,), width=6), {"movieId": 10}).eval() for _ in "ab"]
    >>> fused = fuse(members)
    >>> fused.config.width, fused.embedding.tables["movieId"].weight.shape
    (12, torch.Size([10, 8]))
    >>> batch = Batch(torch.randn(3, 1), {"movieId": torch.tensor([0, 2, 9])})
    >>> mean = (members[0](batch) + members[1](batch)) / 2
    >>> torch.allclose(fused(batch), mean, atol=1e-6)
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from deepcrossing.config import Feature, FeatureSpec, ModelConfig
from deepcrossing.encoding.numeric import input_width, is_dense, is_numeric_embedding
from deepcrossing.errors import InputError
from deepcrossing.model.deep_crossing import DeepCrossing
from deepcrossing.model.layers import GroupedLinear, ResidualUnit
from deepcrossing.model.numeric import LinearReLU, Periodic

#: member k -> (n,) int64 positions of its n units in a fused vector (its own unit order).
Layout = list[Tensor]


def _shared_column(f: Feature) -> bool:
    """The feature's stacked columns have no weights before the MLP: one copy read by every member."""
    return is_dense(f) or (is_numeric_embedding(f) and f.transform != "periodic" and f.dim is None)


def check_fusable(config: ModelConfig, spec: FeatureSpec) -> None:
    """Raise :class:`InputError` (naming the setting) if models of ``config`` and ``spec`` cannot be fused.

    Example:
        >>> from deepcrossing.config import Feature
        >>> check_fusable(ModelConfig(norm="layer"), FeatureSpec((Feature("a", "categorical"),)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        deepcrossing.errors.InputError: field model.norm: an ensemble cannot be fused with norm = 'layer' ...
    """
    if config.norm == "layer":
        raise InputError("an ensemble cannot be fused with norm = 'layer' (LayerNorm normalizes over all units "
                         "of a layer, which would mix the members); use norm = 'batch' or 'none'",
                         field="model.norm")
    shared = [f.name for f in spec.features if _shared_column(f)]
    if config.mlp == "residual" and config.width == 0 and shared:
        raise InputError(f"an ensemble cannot be fused with mlp = 'residual' and width = 0: the first residual "
                         f"unit's skip adds the stacked vector, whose column(s) {', '.join(shared[:3])} every "
                         "member shares; set model.width > 0 (a projection) or mlp = 'plain'",
                         field="model.width")


def fused_spec(spec: FeatureSpec, table_dims: dict[str, int], k: int) -> FeatureSpec:
    """The spec of the fused model: every table ``K * D`` wide (``dim`` set explicitly), every numeric
    embedding's ``dim`` and ``periodic`` ``n_frequencies`` times K; nothing else changes.

    Args:
        spec: the members' spec.
        table_dims: table -> the members' embedding width D (``nn.Embedding.embedding_dim``).
        k: the number of members.
    """
    features = []
    for i, f in enumerate(spec.features):
        changes: dict[str, Any] = {}
        if f.embedded:
            changes["dim"] = k * table_dims[f.table_name]
        elif is_numeric_embedding(f):
            if f.dim is not None:
                changes["dim"] = k * f.dim
            if f.transform == "periodic":
                changes["n_frequencies"] = k * f.n_frequencies
        try:
            features.append(dataclasses.replace(f, **changes) if changes else f)
        except InputError as exc:
            raise InputError(f"{k} members make feature {f.name!r} too wide ({changes}): {exc.message}",
                             field=f"features[{i}].{exc.field}") from None
    return FeatureSpec(tuple(features))


def fused_config(config: ModelConfig, k: int) -> ModelConfig:
    """``config`` with every width (``hidden``, ``width``) times K, and ``groups`` K (times the members'): the
    layers after the first are computed block-wise. A residual MLP without projection (``width = 0``) stays
    dense (``groups`` None): its units' skip adds the stacked vector, whose member columns are interleaved.

    Example:
        >>> fused_config(ModelConfig(hidden=(8,), width=6), 3).groups, fused_config(ModelConfig(), 1).groups
        (3, None)
    """
    groups = (config.groups or 1) * k
    dense = groups == 1 or (config.mlp == "residual" and config.width == 0)
    try:
        return dataclasses.replace(config, hidden=tuple(k * h for h in config.hidden), width=k * config.width,
                                   groups=None if dense else groups)
    except InputError as exc:
        raise InputError(f"{k} members: {exc.message}", field=f"model.{exc.field}") from None


def _blocks(k: int, width: int) -> Layout:
    """Member m's units at ``[m * width, (m + 1) * width)``: the layout of a block-diagonal layer's output."""
    return [torch.arange(m * width, (m + 1) * width) for m in range(k)]


def stacked_layout(spec: FeatureSpec, member: DeepCrossing, fused: DeepCrossing, k: int) -> Layout:
    """Where each member's stacked columns are in the fused stacked vector (the stacking concatenates per
    feature, so member m's columns are interleaved with the others'; shared columns appear in every member's
    list).

    Example:
        >>> from deepcrossing.config import Feature
        >>> spec = FeatureSpec((Feature("a", "categorical", dim=2), Feature("x", "numeric",
        ...                     transform="standardize"), Feature("b", "categorical", dim=1)))
        >>> members = [DeepCrossing(spec, ModelConfig(hidden=(4,), width=4), {"a": 5, "b": 5}) for _ in "ab"]
        >>> [t.tolist() for t in stacked_layout(spec, members[0], fuse(members), 2)]   # member: a, a, b, x
        [[0, 1, 4, 6], [2, 3, 5, 6]]
    """
    parts: list[list[Tensor]] = [[] for _ in range(k)]
    for name, sl in sorted(member.feature_slices.items(), key=lambda item: item[1].start):
        f, start, width = spec[name], fused.feature_slices[name].start, sl.stop - sl.start
        for m in range(k):
            if _shared_column(f):
                cols = start + torch.arange(width)
            elif f.kind == "numeric" and f.transform == "periodic" and f.dim is None:
                half = width // 2  # [sin of all K*half frequencies | cos of all K*half]
                cols = start + torch.cat([m * half + torch.arange(half), (k + m) * half + torch.arange(half)])
            else:
                cols = start + m * width + torch.arange(width)
            parts[m].append(cols)
    return [torch.cat(p) if p else torch.zeros(0, dtype=torch.long) for p in parts]


def _require_disjoint(layout: Layout, what: str) -> None:
    seen = torch.cat(layout).tolist()
    if len(set(seen)) != len(seen):
        raise InputError(f"cannot fuse {what}: its units are shared by the members", field="model")


def _fill_linear(fused: nn.Module, members: Sequence[nn.Module], cols: Layout, rows: Layout) -> None:
    """``fused`` = the block matrix whose member-m block maps member m's inputs ``cols[m]`` to ``rows[m]``: an
    ``nn.Linear`` holding it densely, or a :class:`GroupedLinear` holding its blocks (``cols`` and ``rows``
    then the contiguous :func:`_blocks`)."""
    if isinstance(fused, GroupedLinear):
        _fill_grouped(fused, members, cols, rows)
        return
    assert isinstance(fused, nn.Linear)
    _require_disjoint(rows, "a Linear layer's outputs")
    fused.weight.zero_()
    fused.bias.zero_()
    for linear, r, c in zip(members, rows, cols, strict=True):
        assert isinstance(linear, nn.Linear)  # a dense fused layer has ungrouped members
        fused.weight[r.unsqueeze(1), c.unsqueeze(0)] = linear.weight.detach().cpu()
        fused.bias[r] = linear.bias.detach().cpu()


def _fill_grouped(fused: GroupedLinear, members: Sequence[nn.Module], cols: Layout, rows: Layout) -> None:
    """Member m's layer (an ``nn.Linear``, or a :class:`GroupedLinear` of G blocks) as blocks ``m G .. m G + G
    - 1`` of ``fused`` (K G blocks): member m's units must lie at ``[m w, (m + 1) w)`` on both sides."""
    k = len(members)
    for layout, width in ((cols, fused.in_features), (rows, fused.out_features)):
        if not all(torch.equal(a, b) for a, b in zip(layout, _blocks(k, width // k), strict=True)):
            raise InputError("cannot fuse a grouped layer whose members' units are not contiguous blocks",
                             field="model.groups")
    weight = fused.weight.view(k, -1, *fused.weight.shape[1:])   # (K, G, o, i)
    bias = fused.bias.view(k, -1, fused.bias.shape[1])           # (K, G, o)
    for m, layer in enumerate(members):
        assert isinstance(layer, (nn.Linear, GroupedLinear))     # the same block structure as the fused MLP
        weight[m] = layer.weight.detach().cpu().view(weight.shape[1:])
        bias[m] = layer.bias.detach().cpu().view(bias.shape[1:])


def _fill_batch_norm(fused: nn.BatchNorm1d, members: Sequence[nn.Module], layout: Layout) -> None:
    _require_disjoint(layout, "a BatchNorm layer")
    for bn, idx in zip(members, layout, strict=True):
        assert isinstance(bn, nn.BatchNorm1d)  # the same block structure as the fused MLP
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(fused, name)[idx] = getattr(bn, name).detach().cpu()
    tracked = [bn.num_batches_tracked for bn in members if isinstance(bn, nn.BatchNorm1d)]
    if fused.num_batches_tracked is not None and tracked:
        fused.num_batches_tracked.fill_(max(int(t) for t in tracked if t is not None))


def _fill_numeric(fused: DeepCrossing, members: Sequence[DeepCrossing], spec: FeatureSpec, k: int) -> None:
    for name, sequence in fused.numeric.embeddings.items():
        layout = [torch.arange(input_width(spec[name]))] * k   # the encoder's input: shared
        for i, part in enumerate(sequence.children()):
            parts = [list(m.numeric.embeddings[name].children())[i] for m in members]
            if isinstance(part, Periodic):
                part.frequencies.copy_(torch.cat([p.frequencies.detach().cpu() for p in parts
                                                  if isinstance(p, Periodic)]))
                half = part.frequencies.numel() // k
                layout = [torch.cat([m * half + torch.arange(half), (k + m) * half + torch.arange(half)])
                          for m in range(k)]
            elif isinstance(part, LinearReLU):
                out = _blocks(k, part.linear.out_features // k)
                _fill_linear(part.linear, [p.linear for p in parts if isinstance(p, LinearReLU)], layout, out)
                layout = out
            else:
                raise InputError(f"cannot fuse the numeric embedding part {type(part).__name__} of {name!r}",
                                 field=f"features.{name}")


def _fill_mlp(fused: DeepCrossing, members: Sequence[DeepCrossing], layout: Layout, k: int) -> Layout:
    for block, parts in zip(fused.mlp.blocks, zip(*(m.mlp.blocks for m in members), strict=True), strict=True):
        if isinstance(block, (nn.Linear, GroupedLinear)):
            out = _blocks(k, block.out_features // k)
            _fill_linear(block, parts, layout, out)
            layout = out
        elif isinstance(block, ResidualUnit):
            _require_disjoint(layout, "a residual unit's skip connection")
            inner = _blocks(k, block.linear1.out_features // k)
            units = [p for p in parts if isinstance(p, ResidualUnit)]
            _fill_linear(block.linear1, [u.linear1 for u in units], layout, inner)
            _fill_linear(block.linear2, [u.linear2 for u in units], inner, layout)
        elif isinstance(block, nn.BatchNorm1d):
            _fill_batch_norm(block, parts, layout)
        elif not isinstance(block, (nn.ReLU, nn.Dropout)):
            raise InputError(f"cannot fuse an MLP block {type(block).__name__}", field="model")
    return layout


def _embedding(model: DeepCrossing, table: str) -> nn.Embedding:
    found = model.embedding.tables[table]
    assert isinstance(found, nn.Embedding)  # EmbeddingLayer's tables
    return found


def _table_shapes(model: DeepCrossing) -> dict[str, tuple[int, int]]:
    """Table -> (rows, D)."""
    return {name: (_embedding(model, name).num_embeddings, _embedding(model, name).embedding_dim)
            for name in model.embedding.tables}


def fuse(members: Sequence[DeepCrossing]) -> DeepCrossing:
    """One :class:`DeepCrossing` (CPU, eval mode) whose logit is the mean of the ``members``' logits.

    Args:
        members: K >= 1 models of the same spec, config and table sizes (the same fitted encoder), e.g. K
            seeds; they are only read.

    Returns:
        The fused model: spec :func:`fused_spec`, config :func:`fused_config`; ``fused(batch) ==
        mean_k members[k](batch)`` in eval mode, up to float rounding.

    Raises:
        InputError: members that differ in spec, config or table sizes, or a config that cannot be fused
            (:func:`check_fusable`).
    """
    if not members:
        raise InputError("an ensemble needs at least one member", field="ensemble")
    first, k = members[0], len(members)
    check_fusable(first.config, first.spec)
    tables = _table_shapes(first)
    for i, m in enumerate(members[1:], start=1):
        other = _table_shapes(m)
        if m.spec != first.spec or m.config != first.config or other != tables:
            raise InputError(f"ensemble member {i} differs from member 0 in its spec, model config or table "
                             "sizes; members must share the spec, the config and the fitted encoder",
                             field="ensemble")
    spec = fused_spec(first.spec, {name: dim for name, (_, dim) in tables.items()}, k)
    with torch.random.fork_rng(devices=[]):  # the random initialization is overwritten; keep the caller's RNG
        fused = DeepCrossing(spec, fused_config(first.config, k), {name: n for name, (n, _) in tables.items()})
    with torch.no_grad():
        for name in tables:
            _embedding(fused, name).weight.copy_(
                torch.cat([_embedding(m, name).weight.detach().cpu() for m in members], dim=1))
        _fill_numeric(fused, members, first.spec, k)
        layout = _fill_mlp(fused, members, stacked_layout(first.spec, first, fused, k), k)
        scoring = fused.scoring.linear
        scoring.weight.zero_()
        for m, idx in zip(members, layout, strict=True):
            scoring.weight[0, idx] += m.scoring.linear.weight[0].detach().cpu() / k
        scoring.bias.copy_(torch.stack([m.scoring.linear.bias.detach().cpu() for m in members]).mean(dim=0))
    return fused.eval()


def ungroup(model: DeepCrossing) -> DeepCrossing:
    """The same model with every :class:`GroupedLinear` stored and computed densely, as the block-diagonal
    ``nn.Linear`` (zeros off the blocks; ``groups`` None): how fused models were before ``ModelConfig.groups``
    (K^2 x one member's multiply-adds after the first layer; such folders still load). Same logits up to float
    rounding; for tests and ``benchmarks/ensemble_cost.py``'s before / after. A model without groups is
    returned as it is.

    Example:
        >>> from deepcrossing.config import Feature
        >>> spec = FeatureSpec((Feature("movieId", "categorical", "item", dim=4),))
        >>> fused = fuse([DeepCrossing(spec, ModelConfig(hidden=(8,), width=6), {"movieId": 10}) for _ in "ab"])
        >>> dense = ungroup(fused)
        >>> fused.config.groups, dense.config.groups, tuple(dense.mlp.blocks[2].linear1.weight.shape)
        (2, None, (16, 12))
    """
    if not model.config.groups:
        return model
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, GroupedLinear):
            state[f"{name}.weight"] = module.dense_weight()                       # (K o, K i)
            state[f"{name}.bias"] = module.bias.detach().flatten()               # (K o,)
    with torch.random.fork_rng(devices=[]):  # the random initialization is overwritten
        dense = DeepCrossing(model.spec, dataclasses.replace(model.config, groups=None),
                             {name: n for name, (n, _) in _table_shapes(model).items()})
    dense.load_state_dict(state, strict=True)
    return dense.train(model.training)


__all__ = ["Layout", "check_fusable", "fuse", "fused_config", "fused_spec", "stacked_layout", "ungroup"]
