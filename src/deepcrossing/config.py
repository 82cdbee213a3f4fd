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
    transform = "standardize" # standardize | log1p_standardize | buckets

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

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepcrossing.errors import InputError

KINDS = ("categorical", "identity", "hashed", "multi_hot", "numeric")
SIDES = ("user", "item", "context")
POOLINGS = ("mean", "sum")
TRANSFORMS = ("standardize", "log1p_standardize", "buckets")
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


# ---------------------------------------------------------------- strict construction helpers


def _bad(key: str, why: str) -> InputError:
    return InputError(why, field=key)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple annotation (int, float, str, bool, tuples, Optional); return it coerced."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _bad(key, f"must be a list, not {value!r}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise _bad(key, f"must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(key, f"must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad(key, f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise _bad(key, f"must be finite, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _bad(key, f"must be a string, not {value!r}")
        return value
    raise TypeError(f"unsupported annotation {hint!r}")  # pragma: no cover - programming error


def _validate_fields(obj: Any, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = _check_type(f"{prefix}{f.name}", getattr(obj, f.name), hints[f.name])
        object.__setattr__(obj, f.name, value)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _bad(key, f"must be one of {', '.join(choices)}, not {value!r}")


def _from_dict(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise _bad(prefix.rstrip(".") or cls.__name__, f"must be a table of keys, not {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise _bad(f"{prefix}{key}", f"unknown key {key!r} (known: {', '.join(sorted(known))})")
    try:
        return cls(**data)
    except InputError as exc:
        if exc.field is not None and not exc.field.startswith(prefix):
            raise _bad(f"{prefix}{exc.field}", exc.message) from None
        raise


def _to_dict(obj: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue  # TOML has no null; absent means default None
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


# ---------------------------------------------------------------- feature spec


@dataclass(frozen=True)
class Feature:
    """One sample column and how it enters the model.

    Args:
        name: the sample column.
        kind: ``categorical`` (vocabulary fitted on train, rare values -> OOV), ``identity`` (non-negative
            integer ids used as they are, ids >= ``hash_buckets`` -> OOV), ``hashed`` (stable hash into
            ``hash_buckets`` rows), ``multi_hot`` (a list or map column pooled by an embedding bag),
            ``numeric`` (a number, transformed by ``transform``).
        side: ``user``, ``item`` or ``context``: whose feature it is (the service splits the first layer by it).
        table: shared embedding table name (default: the feature's own name). Features of one table share
            vocabulary and rows.
        dim: embedding width (default :func:`default_dim` of the table size).
        min_count: values seen fewer times in train go to the OOV row.
        hash_buckets: rows of a ``hashed`` table, or the id range of an ``identity`` table (``multi_hot``
            may set it to hash its values instead of fitting a vocabulary).
        pooling: ``mean`` or ``sum`` for ``multi_hot``.
        max_len: keep the first ``max_len`` values of a ``multi_hot`` list (default: all, up to 64).
        transform: ``standardize``, ``log1p_standardize`` or ``buckets`` (quantile buckets, embedded).
        n_buckets: number of quantile buckets for ``transform = "buckets"``.
        weights_from: for a map column (``userGenreCounts``): ``"values"`` uses the map values as per-value
            weights of the pooled keys; absent means keys only.
    """

    name: str
    kind: str
    side: str = "context"
    table: str | None = None
    dim: int | None = None
    min_count: int = 1
    hash_buckets: int | None = None
    pooling: str = "mean"
    max_len: int | None = None
    transform: str | None = None
    n_buckets: int = 10
    weights_from: str | None = None

    def __post_init__(self) -> None:
        _validate_fields(self, "")
        if not self.name:
            raise _bad("name", "must not be empty")
        _choice("kind", self.kind, KINDS)
        _choice("side", self.side, SIDES)
        _choice("pooling", self.pooling, POOLINGS)
        if self.dim is not None and not 1 <= self.dim <= 1024:
            raise _bad("dim", f"must be between 1 and 1024, not {self.dim}")
        if self.min_count < 1:
            raise _bad("min_count", f"must be >= 1, not {self.min_count}")
        if self.hash_buckets is not None and self.hash_buckets < 1:
            raise _bad("hash_buckets", f"must be >= 1, not {self.hash_buckets}")
        if self.kind in ("hashed", "identity") and self.hash_buckets is None:
            raise _bad("hash_buckets", f"is required for kind = {self.kind!r} (the number of rows)")
        if self.max_len is not None and not 1 <= self.max_len <= 4096:
            raise _bad("max_len", f"must be between 1 and 4096, not {self.max_len}")
        if self.kind == "numeric":
            if self.transform is None:
                raise _bad("transform", "is required for kind = 'numeric' "
                                        f"(one of {', '.join(TRANSFORMS)})")
            _choice("transform", self.transform, TRANSFORMS)
            if self.table is not None:
                raise _bad("table", "a numeric feature has no shared table")
        elif self.transform is not None:
            raise _bad("transform", f"only numeric features have a transform, not kind = {self.kind!r}")
        if not 2 <= self.n_buckets <= 1000:
            raise _bad("n_buckets", f"must be between 2 and 1000, not {self.n_buckets}")
        if self.weights_from is not None:
            if self.kind != "multi_hot":
                raise _bad("weights_from", "only multi_hot features take weights")
            _choice("weights_from", self.weights_from, ("values",))

    @property
    def embedded(self) -> bool:
        """True when the feature goes through an embedding table (all but standardized numerics)."""
        return self.kind != "numeric" or self.transform == "buckets"

    @property
    def is_bag(self) -> bool:
        """True for multi-valued features (padded id matrices pooled by the embedding layer)."""
        return self.kind == "multi_hot"

    @property
    def table_name(self) -> str:
        return self.table or self.name

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready dict without the ``None`` fields."""
        return _to_dict(self)


@dataclass(frozen=True)
class TableInfo:
    """An embedding table shared by ``features`` (spec order), with the settings they agree on."""

    name: str
    features: tuple[str, ...]
    kind: str  # "vocab" | "hashed" | "identity" | "buckets"
    dim: int | None
    min_count: int
    hash_buckets: int | None


@dataclass(frozen=True)
class FeatureSpec:
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

    features: tuple[Feature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.features, (list, tuple)) or not self.features:
            raise _bad("features", "must be a non-empty list of features")
        feats = []
        for i, f in enumerate(self.features):
            if isinstance(f, dict):
                f = _from_dict(Feature, f, f"features[{i}].")
            elif not isinstance(f, Feature):
                raise _bad(f"features[{i}]", f"must be a feature table, not {f!r}")
            feats.append(f)
        object.__setattr__(self, "features", tuple(feats))
        seen: set[str] = set()
        for i, f in enumerate(feats):
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
                if f.kind == "identity":
                    return "identity"
                return "vocab"

            kinds = {how(f) for _, f in members}
            if len(kinds) > 1 or ("buckets" in kinds and len(members) > 1):
                i = members[1][0]
                raise _bad(f"features[{i}].table",
                           f"table {name!r} mixes {' and '.join(sorted(kinds))} features; "
                           "only features whose ids are made the same way can share a table")
            settings = {}
            for key, default in (("dim", None), ("min_count", 1), ("hash_buckets", None)):
                values = {getattr(f, key) for _, f in members} - {default}
                if len(values) > 1:  # name the first feature that disagrees with an earlier one
                    first = next(getattr(f, key) for _, f in members if getattr(f, key) != default)
                    i = next(i for i, f in members if getattr(f, key) not in (default, first))
                    raise _bad(f"features[{i}].{key}",
                               f"features of table {name!r} disagree on {key}: {sorted(values)}")
                settings[key] = values.pop() if values else default
            out[name] = TableInfo(name, tuple(f.name for _, f in members), kinds.pop(), **settings)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"features": [f.to_dict() for f in self.features]}

    @classmethod
    def from_dict(cls, data: Any) -> FeatureSpec:
        if not isinstance(data, dict):
            raise _bad("features", "the spec must be a table with a 'features' list")
        return _from_dict(cls, data, "")


# ---------------------------------------------------------------- model and training


@dataclass(frozen=True)
class ModelConfig:
    """Shape and regularization of the network after the embeddings.

    Args:
        mlp: ``residual`` (the paper: a projection to ``width`` then residual units) or ``plain``
            (Linear+ReLU layers of ``hidden`` widths, like SparrowRecSys's 128-128).
        hidden: ``residual``: inner width of each residual unit; ``plain``: width of each layer.
        width: ``residual`` only: width of the projection before the units (0 = the stacked width, no
            projection, as in the paper).
        dropout: dropout after every unit/layer.
        norm: ``none``, ``batch`` or ``layer`` normalization after every unit/layer.
        embedding_dropout: dropout on the stacked embeddings (not on numerics).
        embedding_l2: L2 penalty on the embedding rows looked up in each batch (mean over the batch), so an
            id is regularized in proportion to how often it occurs (id-frequency regularization).
    """

    mlp: str = "residual"
    hidden: tuple[int, ...] = (64, 64)
    width: int = 128
    dropout: float = 0.1
    norm: str = "none"
    embedding_dropout: float = 0.1
    embedding_l2: float = 0.0

    def __post_init__(self) -> None:
        _validate_fields(self, "")
        _choice("mlp", self.mlp, MLPS)
        _choice("norm", self.norm, NORMS)
        if not self.hidden or any(h < 1 or h > 65536 for h in self.hidden):
            raise _bad("hidden", f"must be a non-empty list of widths between 1 and 65536, not {self.hidden}")
        if not 0 <= self.width <= 65536:
            raise _bad("width", f"must be between 0 and 65536, not {self.width}")
        for key in ("dropout", "embedding_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise _bad(key, f"must be in [0, 1), not {getattr(self, key)}")
        if self.embedding_l2 < 0:
            raise _bad("embedding_l2", f"must be >= 0, not {self.embedding_l2}")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(frozen=True)
class TrainConfig:
    """How the model is trained.

    Args:
        epochs: maximum number of passes over train.
        batch_size: samples per step.
        lr: peak learning rate.
        lr_schedule: ``constant``, ``cosine`` (to 0 at the last epoch) or ``exponential`` (x ``lr_decay``
            per epoch).
        lr_decay: factor per epoch of the ``exponential`` schedule.
        weight_decay: L2 decay of the dense (MLP) weights (decoupled for ``adamw``).
        embedding_weight_decay: decay of the embedding tables (not used by ``sparse_adam``).
        optimizer: ``adam``, ``adamw`` or ``sparse_adam`` (sparse gradients and SparseAdam for the tables,
            Adam for the rest: for tables with millions of rows).
        patience: stop after this many epochs without a better validation AUC (0 = never stop early).
        ema: decay of an exponential moving average of the weights, updated every step (0 = off). When on,
            validation, early stopping and the saved model use the averaged weights (less seed noise).
        seed: seed of initialization, shuffling and dropout.
    """

    epochs: int = 8
    batch_size: int = 1024
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    lr_decay: float = 0.7
    weight_decay: float = 1e-5
    embedding_weight_decay: float = 0.0
    optimizer: str = "adam"
    patience: int = 2
    ema: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        _validate_fields(self, "")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise _bad(key, f"must be >= 1, not {getattr(self, key)}")
        if not 0 < self.lr <= 10:
            raise _bad("lr", f"must be in (0, 10], not {self.lr}")
        if not 0 < self.lr_decay <= 1:
            raise _bad("lr_decay", f"must be in (0, 1], not {self.lr_decay}")
        for key in ("weight_decay", "embedding_weight_decay"):
            if getattr(self, key) < 0:
                raise _bad(key, f"must be >= 0, not {getattr(self, key)}")
        if self.patience < 0:
            raise _bad("patience", f"must be >= 0, not {self.patience}")
        if not 0.0 <= self.ema < 1.0:
            raise _bad("ema", f"must be in [0, 1), not {self.ema}")
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)


@dataclass(frozen=True)
class ExperimentConfig:
    """A spec file as a whole: features plus optional model and train sections."""

    spec: FeatureSpec
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> ExperimentConfig:
        if not isinstance(data, dict):
            raise _bad("features", "the spec must be a table with a 'features' list")
        unknown = set(data) - {"features", "model", "train"}
        if unknown:
            key = sorted(unknown)[0]
            raise _bad(key, f"unknown key {key!r} (known: features, model, train)")
        spec = FeatureSpec.from_dict({"features": data.get("features")})
        model = _from_dict(ModelConfig, data.get("model", {}), "model.")
        train = _from_dict(TrainConfig, data.get("train", {}), "train.")
        return cls(spec, model, train)


# ---------------------------------------------------------------- files


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover


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
        lines += [f"{k} = {_toml_value(v)}" for k, v in f.items()]
        lines.append("")
    for section in ("model", "train"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in data[section].items()]
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
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the spec file: {exc.strerror}", path=path) from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}",
                         path=path) from None
    return parse_config(data, path)


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
