"""Frozen, typed configs of the model pipeline: feature spec, model, training. Strict TOML/JSON load and dump.

Every dataclass validates itself on construction and rejects wrong types; the loaders reject unknown keys.
Errors are :class:`~deepcrossing.errors.InputError` naming the key (``features[3].pooling``) and the file.

A spec file (TOML) looks like this::

    [[features]]
    name = "movieId"          # the sample column
    kind = "categorical"      # categorical | identity | hashed | multi_hot | numeric
    side = "item"             # user | item | context (the service splits the first layer by side)
    table = "movie"           # optional shared embedding table name (default: the feature name)
    min_count = 2

    [[features]]
    name = "userAvgRating"
    kind = "numeric"
    side = "user"
    transform = "standardize" # standardize | log1p_standardize | buckets | ple | ple_tree | periodic

    [model]                   # optional, see ModelConfig
    mlp = "residual"

    [train]                   # optional, see TrainConfig
    epochs = 8

Example:
    >>> spec = FeatureSpec(features=(Feature("movieId", "categorical", "item"),))
    >>> spec.tables()["movieId"].features
    ('movieId',)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from deepcrossing.errors import InputError
from deepcrossing.strict import AS_TUPLE, StrictConfig, one_of, read_table, relocate, strict_config, toml_value

KINDS = ("categorical", "identity", "hashed", "multi_hot", "numeric")
SIDES = ("user", "item", "context")
POOLINGS = ("mean", "sum")
TRANSFORMS = ("standardize", "log1p_standardize", "buckets", "ple", "ple_tree", "periodic")
MLPS = ("residual", "plain")
NORMS = ("none", "batch", "layer")
OPTIMIZERS = ("adam", "adamw", "sparse_adam")
SCHEDULES = ("constant", "cosine", "exponential")


def default_dim(n_values: int) -> int:
    """Default embedding width for a table of ``n_values`` rows: ``min(32, round(6 * n ** 0.25))``, at least 2.

    Example:
        >>> default_dim(20), default_dim(10_000)
        (13, 32)
    """
    return int(max(2, min(32, round(6.0 * max(n_values, 1) ** 0.25))))


def _bad(key: str, why: str) -> InputError:
    return InputError(why, field=key)


def _features(value: Any) -> Any:
    """``FeatureSpec.features`` as given: a non-empty list of :class:`Feature` or of their tables (dicts)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise _bad("features", "must be a non-empty list of features")
    out = []
    for i, f in enumerate(value):
        if isinstance(f, dict):
            f = Feature.from_dict(f, f"features[{i}].")
        elif not isinstance(f, Feature):
            raise _bad(f"features[{i}]", f"must be a feature table, not {f!r}"[:200])
        out.append(f)
    return tuple(out)


# ---------------------------------------------------------------- feature spec


@strict_config
class Feature(StrictConfig):
    """One sample column and how it enters the model.

    Args:
        name: the sample column.
        kind: ``categorical`` (vocabulary fitted on train, rare values -> OOV), ``identity`` (non-negative
            integer ids used as they are, ids >= ``hash_buckets`` -> OOV), ``hashed`` (stable hash into
            ``hash_buckets`` rows), ``multi_hot`` (a list or map column pooled by an embedding bag),
            ``numeric`` (a number, transformed by ``transform``).
        side: ``user``, ``item`` or ``context``: whose feature it is (the service splits the first layer by it).
        table: shared embedding table name (default: the feature's own); its features share vocabulary and rows.
        dim: embedding width (default :func:`default_dim` of the table size); numeric embeddings: the width
            of their ``Linear + ReLU`` (absent: the raw encoding enters the stacking).
        min_count: values seen fewer times in train go to the OOV row.
        hash_buckets: rows of a ``hashed`` table, or the id range of an ``identity`` table (``multi_hot``
            may set it to hash its values instead of fitting a vocabulary).
        pooling: ``mean`` or ``sum`` for ``multi_hot``.
        max_len: keep the first ``max_len`` values of a ``multi_hot`` list (default: all, up to 64).
        transform: ``standardize``, ``log1p_standardize``, ``buckets`` (quantile buckets, embedded) or a
            numeric embedding, ``ple``, ``ple_tree`` or ``periodic`` (see :mod:`deepcrossing.encoding.numeric`).
        n_buckets: quantile buckets (``buckets``), or at most so many bins (``ple``, ``ple_tree``).
        n_frequencies, sigma: ``periodic``: k frequencies, drawn from N(0, sigma) at initialization.
        weights_from: ``"values"``: a map column's values (``userGenreCounts``) weigh its keys; absent: keys only.
    """

    name: Annotated[str, Field(min_length=1)]
    kind: Annotated[str, one_of(*KINDS)]
    side: Annotated[str, one_of(*SIDES)] = "context"
    table: str | None = None
    dim: Annotated[int, Field(ge=1, le=1024)] | None = None
    min_count: Annotated[int, Field(ge=1)] = 1
    hash_buckets: Annotated[int, Field(ge=1)] | None = None
    pooling: Annotated[str, one_of(*POOLINGS)] = "mean"
    max_len: Annotated[int, Field(ge=1, le=4096)] | None = None
    transform: Annotated[str, one_of(*TRANSFORMS)] | None = None
    n_buckets: Annotated[int, Field(ge=2, le=1000)] = 10
    weights_from: Annotated[str, one_of("values")] | None = None
    n_frequencies: Annotated[int, Field(ge=1, le=1024)] = 16
    sigma: Annotated[float, Field(gt=0.0, le=1000.0)] = 0.1

    def __post_init__(self) -> None:
        if self.kind in ("hashed", "identity") and self.hash_buckets is None:
            raise _bad("hash_buckets", f"is required for kind = {self.kind!r} (the number of rows)")
        if self.kind == "numeric":
            if self.transform is None:
                raise _bad("transform", f"is required for kind = 'numeric' (one of {', '.join(TRANSFORMS)})")
            if self.table is not None:
                raise _bad("table", "a numeric feature has no shared table")
        elif self.transform is not None:
            raise _bad("transform", f"only numeric features have a transform, not kind = {self.kind!r}")
        if self.weights_from is not None and self.kind != "multi_hot":
            raise _bad("weights_from", "only multi_hot features take weights")

    @property
    def embedded(self) -> bool:
        """True when the feature goes through an embedding table (every kind but numeric, and ``buckets``)."""
        return self.kind != "numeric" or self.transform == "buckets"

    @property
    def is_bag(self) -> bool:
        """True for multi-valued features (padded id matrices pooled by the embedding layer)."""
        return self.kind == "multi_hot"

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclass(frozen=True)
class TableInfo:
    """An embedding table shared by ``features`` (spec order), with the settings they agree on."""

    name: str
    features: tuple[str, ...]
    kind: str  # "vocab" | "hashed" | "identity" | "buckets"
    dim: int | None
    min_count: int
    hash_buckets: int | None


@strict_config
class FeatureSpec(StrictConfig):
    """The ordered list of features of a model. Stacking follows this order.

    Features that share a ``table`` must agree on ``dim``, ``min_count`` and ``hash_buckets`` (set them on
    one feature or identically on all) and on how ids are made (vocabulary, hashing or identity).

    Example:
        >>> spec = FeatureSpec(features=(
        ...     Feature("movieId", "categorical", "item", table="movie", min_count=2),
        ...     Feature("userRecentPositives", "multi_hot", "user", table="movie", max_len=10)))
        >>> spec.tables()["movie"].min_count
        2
    """

    features: Annotated[tuple[Feature, ...], BeforeValidator(_features)]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, f in enumerate(self.features):
            if f.name in seen:
                raise _bad(f"features[{i}].name", f"feature {f.name!r} is listed twice")
            seen.add(f.name)
        self.tables()  # validates table agreement

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def columns(self) -> tuple[str, ...]:
        """Sample columns the encoder reads (feature names)."""
        return self.names

    def tables(self) -> dict[str, TableInfo]:
        """Embedding tables in order of first use, with the agreed settings of their features."""
        groups: dict[str, list[tuple[int, Feature]]] = {}
        for i, f in enumerate(self.features):
            if f.embedded:
                groups.setdefault(f.table_name, []).append((i, f))
        out = {}
        for name, members in groups.items():
            def how(f: Feature) -> str:
                if f.kind == "numeric":
                    return "buckets"
                if f.kind == "hashed" or (f.kind == "multi_hot" and f.hash_buckets is not None):
                    return "hashed"
                return "identity" if f.kind == "identity" else "vocab"

            kinds = {how(f) for _, f in members}
            if len(kinds) > 1 or ("buckets" in kinds and len(members) > 1):
                i = members[1][0]
                raise _bad(f"features[{i}].table",
                           f"table {name!r} mixes {' and '.join(sorted(kinds))} features; "
                           "only features whose ids are made the same way can share a table")
            settings: dict[str, Any] = {}
            for key, default in (("dim", None), ("min_count", 1), ("hash_buckets", None)):
                values = {getattr(f, key) for _, f in members} - {default}
                if len(values) > 1:  # name the first feature that disagrees with an earlier one
                    first = next(getattr(f, key) for _, f in members if getattr(f, key) != default)
                    i = next(i for i, f in members if getattr(f, key) not in (default, first))
                    raise _bad(f"features[{i}].{key}",
                               f"features of table {name!r} disagree on {key}: {sorted(values)}")
                settings[key] = values.pop() if values else default
            out[name] = TableInfo(name, tuple(f.name for _, f in members), kinds.pop(), settings["dim"],
                                  settings["min_count"], settings["hash_buckets"])
        return out

# ---------------------------------------------------------------- model and training


@strict_config
class ModelConfig(StrictConfig):
    """Shape and regularization of the network after the embeddings.

    Args:
        mlp: ``residual`` (the paper: a projection to ``width``, then residual units) or ``plain`` (Linear+ReLU).
        hidden: ``residual``: inner width of each residual unit; ``plain``: width of each layer.
        width: ``residual`` only: width of the projection before the units (0: none, as in the paper).
        dropout, norm: dropout, and ``none``, ``batch`` or ``layer`` normalization, after every unit/layer.
        embedding_dropout: dropout on the stacked embeddings, numeric embeddings included (not ``Batch.dense``).
        embedding_l2: L2 penalty on the embedding rows looked up in each batch (mean): id-frequency regularization.
        groups: K >= 2 independent blocks in every layer after the first (a fused K-seed ensemble); absent: 1.
    """

    mlp: Annotated[str, one_of(*MLPS)] = "residual"
    hidden: Annotated[tuple[Annotated[int, Field(ge=1, le=65536)], ...], AS_TUPLE, Field(min_length=1)] = (64, 64)
    width: Annotated[int, Field(ge=0, le=65536)] = 128
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    norm: Annotated[str, one_of(*NORMS)] = "none"
    embedding_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    embedding_l2: Annotated[float, Field(ge=0.0)] = 0.0
    groups: Annotated[int, Field(ge=2, le=64)] | None = None

    def __post_init__(self) -> None:
        widths = (self.width, *self.hidden) if self.mlp == "residual" else self.hidden  # width 0 cannot be split
        if self.groups and any(w % self.groups or not w for w in widths):
            raise _bad("groups", f"{self.groups} groups need every width {list(widths)} to be a positive multiple")


@strict_config
class TrainConfig(StrictConfig):
    """How the model is trained.

    Args:
        epochs: maximum number of passes over train.
        batch_size: samples per step.
        lr: peak learning rate.
        lr_schedule: ``constant``, ``cosine`` (to 0 at the last epoch) or ``exponential`` (x ``lr_decay``/epoch).
        lr_decay: factor per epoch of the ``exponential`` schedule.
        weight_decay: L2 decay of the dense (MLP) weights (decoupled for ``adamw``).
        embedding_weight_decay: decay of the embedding tables (not used by ``sparse_adam``).
        optimizer: ``adam``, ``adamw`` or ``sparse_adam`` (SparseAdam for the tables: millions of rows).
        patience: stop after this many epochs without a better validation AUC (0 = never stop early).
        ema: decay of an exponential moving average of the weights, updated every step (0 = off). When on,
            validation, early stopping and the saved model use the averaged weights (less seed noise).
        swa: average the weights of the last ``swa`` epochs (0 = off); kept only if its valid AUC is better.
        seed: seed of initialization, shuffling and dropout.
        pairwise: weight of a within-user BPR term on a user-grouped batch per step (absent/0: off; training.pairwise).
    """

    epochs: Annotated[int, Field(ge=1)] = 8
    batch_size: Annotated[int, Field(ge=1)] = 1024
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = 2e-3
    lr_schedule: Annotated[str, one_of(*SCHEDULES)] = "cosine"
    lr_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.7
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-5
    embedding_weight_decay: Annotated[float, Field(ge=0.0)] = 0.0
    optimizer: Annotated[str, one_of(*OPTIMIZERS)] = "adam"
    patience: Annotated[int, Field(ge=0)] = 2
    ema: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    swa: Annotated[int, Field(ge=0)] = 0
    seed: int = 0
    pairwise: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = None


@strict_config
class ExperimentConfig(StrictConfig):
    """A spec file as a whole: features plus optional model and train sections."""

    spec: FeatureSpec
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, prefix: str = "") -> ExperimentConfig:
        """A whole spec file's table: ``features`` (a list), optional ``model`` and ``train`` sections."""
        if not isinstance(data, dict):
            raise _bad("features", "the spec must be a table with a 'features' list")
        unknown = set(data) - {"features", "model", "train"}
        if unknown:
            key = sorted(unknown)[0]
            raise _bad(key, f"unknown key {key!r} (known: features, model, train)")
        try:
            spec = FeatureSpec.from_dict({"features": data.get("features")})
            model = ModelConfig.from_dict(data.get("model", {}), "model.")
            train = TrainConfig.from_dict(data.get("train", {}), "train.")
        except InputError as exc:
            raise relocate(exc, prefix) from None
        return cls(spec, model, train)


# ---------------------------------------------------------------- files


def dumps_toml(config: ExperimentConfig) -> str:
    """Write an :class:`ExperimentConfig` as TOML (the inverse of :func:`load_config`).

    Example:
        >>> text = dumps_toml(ExperimentConfig(FeatureSpec((Feature("movieId", "categorical", "item"),))))
        >>> text.splitlines()[0]
        '[[features]]'
    """
    data = config.to_dict()
    lines: list[str] = []
    for f in data["features"]:
        lines.append("[[features]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in f.items()]
        lines.append("")
    for section in ("model", "train"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in data[section].items()]
        lines.append("")
    return "\n".join(lines)


def parse_config(data: Any, path: str | Path | None = None) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a parsed dict; errors name the key and ``path``."""
    try:
        return ExperimentConfig.from_dict(data)
    except InputError as exc:
        raise InputError(exc.message, path=path, field=exc.field) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read a spec file (``.toml`` or ``.json``) strictly.

    Raises:
        InputError: unreadable file, bad syntax, unknown key or wrong type (naming the key and the file).
    """
    path = Path(path)
    return parse_config(read_table(path), path)


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write ``config`` as TOML or JSON (by the suffix of ``path``), atomically."""
    from deepcrossing.atomic import write_text_atomic

    path = Path(path)
    text = json.dumps(config.to_dict(), indent=2) if path.suffix.lower() == ".json" else dumps_toml(config)
    write_text_atomic(path, text)


def builtin_spec_path(name: str) -> Path:
    """Path of a spec shipped with the package: ``movielens`` or ``sparrow``."""
    path = Path(__file__).parent / "specs" / f"{name}.toml"
    if not path.exists():
        raise InputError(f"no built-in spec {name!r} (built in: movielens, sparrow)", field="spec")
    return path


def load_builtin(name: str) -> ExperimentConfig:
    """Load a built-in spec (``movielens`` for ``prepare``'s samples, ``sparrow`` for SparrowRecSys CSVs)."""
    return load_config(builtin_spec_path(name))
