"""The recall folder (``deepcrossing train-recall``): vector recall models, safetensors + JSON, loaded strictly.

Files: ``manifest.json`` (``format: "deepcrossing.recall/1"``, one entry per channel, the merge weights
chosen on validation, the metrics) and one ``<channel>.safetensors`` per channel, whose SHA-256 the
manifest records. :func:`load_recall` gives channel name -> an
:class:`~deepcrossing.training.vectors.ItemVectors`; the service calls ``item_vectors`` at publish and
``user_vectors`` per request.

Channels:
    ``two_tower``: tensors = the towers' state dict; entry: ``spec``, ``config``, ``encoder`` (fitted state).
    ``item2vec``: tensors ``movie_ids`` (V,) int64 and ``vectors`` (V, D) float32; entry: ``config``.
    ``two_tower_trending`` (trained with ``two_tower``: :mod:`~deepcrossing.training.retrieval_prior`): tensors
    ``movie_ids`` (V,) int64 and ``shares`` (V,) float64 (each movie's share of the train positives); entry:
    ``base`` (``"two_tower"``) and ``prior`` (``scale``, ``trending``, ``share``: the weights fitted on validation).

Example:
    >>> recall = load_recall("recall")                                   # doctest: +SKIP
    >>> recall["two_tower"].user_vectors(user_table).shape               # doctest: +SKIP
    (1, 64)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deepcrossing.atomic import share_like_new_file, write_text_atomic
from deepcrossing.config import FeatureSpec
from deepcrossing.encoding.encoder import Encoder
from deepcrossing.errors import InputError
from deepcrossing.jsonfile import read_json_object
from deepcrossing.hashing import file_sha256
from deepcrossing.model.two_tower import TwoTower, TwoTowerConfig
from deepcrossing.outputs import OutputKind
from deepcrossing.training.artifact import LoadedModel
from deepcrossing.training.item2vec import Item2Vec, Item2VecConfig, fit_item2vec, positive_sequences
from deepcrossing.training.retrieval import Channel, recall_at_ks
from deepcrossing.training.retrieval_data import RetrievalData, build_channels, load_retrieval_data, ranker, \
    split_start
from deepcrossing.training.retrieval_fusion import choose_fusion, evaluate_merge, fusion_merge
from deepcrossing.training.retrieval_merge import Ranker, choose_merge, weighted_merge
from deepcrossing.training.retrieval_prior import NAME as PRIOR_NAME
from deepcrossing.training.retrieval_prior import TrendingPrior, TrendingTwoTower, fit_on, positive_shares
from deepcrossing.training.retrieval_trending import TRENDING_BACKTESTS, TRENDING_WINDOWS, choose_trending
from deepcrossing.training.two_tower import TwoTowerTrainConfig, TwoTowerVectors, train_two_tower, \
    validation_recall
from deepcrossing.training.vectors import ItemVectors

FORMAT = "deepcrossing.recall/1"
MANIFEST = "manifest.json"
CHANNELS = ("two_tower", "item2vec")          # what --channels trains; two_tower brings two_tower_trending
KNOWN = (*CHANNELS, PRIOR_NAME)
MANIFEST_KEYS = {"format", "package_version", "channels", "merge", "metrics", "samples"}
ENTRY_KEYS = {"two_tower": {"file", "sha256", "spec", "config", "encoder"},
              "item2vec": {"file", "sha256", "config"}, PRIOR_NAME: {"file", "sha256", "base", "prior"}}
def _channel_files(manifest: dict[str, Any]) -> list[str]:
    """The vector files a recall folder's manifest lists (not every ``*.safetensors``: a person's own file kept
    beside the folder by ``--overwrite`` is not ours)."""
    channels = manifest.get("channels")
    if not isinstance(channels, dict):
        return []
    return [str(c["file"]) for c in channels.values() if isinstance(c, dict) and isinstance(c.get("file"), str)]


#: A recall folder, recognised by its manifest's ``format``; it owns its manifest, weights and metrics.
RECALL_OUTPUT = OutputKind("recall folder", MANIFEST, lambda m: m.get("format") == FORMAT,
                           lambda m: (*_channel_files(m), "metrics.json", "recall_at_k.png"))

__all__ = ["CHANNELS", "FORMAT", "KNOWN", "RECALL_OUTPUT", "load_recall", "read_manifest", "save_recall",
           "train_recall"]


def _tensors(vectors: ItemVectors) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, manifest entry without file/sha256) of a recall model."""
    if isinstance(vectors, TwoTowerVectors):
        state = {k: v.detach().cpu().contiguous() for k, v in vectors.model.state_dict().items()}
        return state, {"spec": vectors.model.spec.to_dict(), "config": vectors.model.config.to_dict(),
                       "encoder": vectors.encoder.state()}
    if isinstance(vectors, Item2Vec):
        return ({"movie_ids": torch.from_numpy(vectors.movie_ids.copy()),
                 "vectors": torch.from_numpy(vectors.vectors.copy())},
                {"config": vectors.config.to_dict()})
    if isinstance(vectors, TrendingTwoTower):
        ids = np.array(sorted(vectors.shares), dtype=np.int64)
        return ({"movie_ids": torch.from_numpy(ids),
                 "shares": torch.from_numpy(np.array([vectors.shares[int(m)] for m in ids], dtype=np.float64))},
                {"base": "two_tower", "prior": {"scale": vectors.prior.scale, "trending": vectors.prior.trending,
                                                "share": vectors.prior.share}})
    raise TypeError(f"cannot save a recall model of type {type(vectors).__name__}")


def save_recall(folder: str | Path, channels: dict[str, ItemVectors], *, merge: dict[str, Any],
                metrics: dict[str, Any], samples: dict[str, Any]) -> Path:
    """Write the channels' ``.safetensors`` and the manifest (last) into ``folder`` (a reserved temp folder).

    Args:
        folder: where to write (``outputs.reserve(...).write()``'s folder).
        channels: name (one of :data:`KNOWN`) -> model (a ``two_tower_trending`` after its ``two_tower``).
        merge: ``{"weights": {channel: weight}, "valid_recall": float, "k": int, "trending_days": int,
            "trending_half_life_days": float | None, "head_weights": {channel: weight} | None, ...}`` (the
            first ``k`` merged by ``head_weights``; the service's default plan:
            :func:`deepcrossing.serving.recall.merged_rows`).
        metrics: JSON-ready training and validation figures.
        samples: what it was trained on (paths, checksums).
    """
    from deepcrossing._version import __version__

    folder = Path(folder)
    entries = {}
    for name, vectors in channels.items():
        if name not in KNOWN:
            raise ValueError(f"unknown recall channel {name!r}")
        tensors, entry = _tensors(vectors)
        path = folder / f"{name}.safetensors"
        save_file(tensors, str(path), metadata={"format": FORMAT})
        share_like_new_file(path)
        entries[name] = {"file": path.name, "sha256": file_sha256(path), **entry}
    manifest = {"format": FORMAT, "package_version": __version__, "channels": entries, "merge": merge,
                "metrics": metrics, "samples": samples}
    write_text_atomic(folder / MANIFEST, json.dumps(manifest, indent=1, allow_nan=False))
    return folder


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The recall folder's manifest, checked for its format and exact keys.

    Raises:
        InputError: not a recall folder, unreadable JSON, missing or extra keys (naming file and key).
    """
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise InputError("not a recall folder (no manifest.json); write one with `deepcrossing train-recall`",
                         path=manifest_path)
    manifest = read_json_object(manifest_path)
    if manifest.get("format") != FORMAT:
        raise InputError(f"not a recall folder: format is not {FORMAT!r}", path=manifest_path, field="format")
    _exact(manifest, MANIFEST_KEYS, manifest_path, "")
    if not isinstance(manifest["channels"], dict):
        raise InputError("channels must be an object", path=manifest_path, field="channels")
    for name, entry in manifest["channels"].items():
        if name not in KNOWN:
            raise InputError(f"unknown channel {name!r} (known: {', '.join(KNOWN)})", path=manifest_path,
                             field=f"channels.{name}")
        _exact(entry, ENTRY_KEYS[name], manifest_path, f"channels.{name}.")
    return manifest


def _exact(obj: Any, keys: set[str], path: Path, prefix: str) -> None:
    if not isinstance(obj, dict):
        raise InputError("must be an object", path=path, field=prefix.rstrip(".") or None)
    missing, extra = keys - set(obj), set(obj) - keys
    if missing or extra:
        bad = sorted(missing or extra)[0]
        raise InputError(f"{'lacks' if missing else 'has unknown'} key(s) {sorted(missing or extra)}", path=path,
                         field=prefix + bad)


def _load_tensors(folder: Path, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
    path = folder / str(entry["file"])
    if path.name != entry["file"] or not path.is_file():
        raise InputError("the recall folder lacks this weights file", path=path)
    if file_sha256(path) != entry["sha256"]:
        raise InputError("the weights do not match the manifest's sha256 (a half-written or tampered folder); "
                         "run train-recall again", path=path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"cannot read the weights: {exc}", path=path) from None


def _two_tower(folder: Path, entry: dict[str, Any]) -> TwoTowerVectors:
    spec = FeatureSpec.from_dict(entry["spec"])
    encoder = Encoder.from_state(spec, entry["encoder"])
    model = TwoTower(spec, TwoTowerConfig.from_dict(entry["config"], "config."), encoder.cardinalities)
    state, path = _load_tensors(folder, entry), folder / entry["file"]
    expected = model.state_dict()
    if set(state) != set(expected):
        raise InputError(f"tensor names do not match the two-tower model: {sorted(set(state) ^ set(expected))[:3]}",
                         path=path)
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape or state[name].dtype != tensor.dtype:
            raise InputError(f"tensor {name} has shape {tuple(state[name].shape)}, the model needs "
                             f"{tuple(tensor.shape)}", path=path, field=name)
    model.load_state_dict(state, strict=True)
    return TwoTowerVectors(model, encoder)


def _item2vec(folder: Path, entry: dict[str, Any]) -> Item2Vec:
    config = Item2VecConfig.from_dict(entry["config"], "config.")
    state, path = _load_tensors(folder, entry), folder / entry["file"]
    if set(state) != {"movie_ids", "vectors"}:
        raise InputError(f"item2vec tensors must be movie_ids and vectors, not {sorted(state)}", path=path)
    ids, vecs = state["movie_ids"], state["vectors"]
    if (ids.dtype != torch.int64 or vecs.dtype != torch.float32 or ids.ndim != 1 or vecs.ndim != 2
            or vecs.shape != (ids.shape[0], config.dim) or bool(torch.unique(ids).numel() != ids.numel())):
        raise InputError(f"item2vec tensors have shapes {tuple(ids.shape)} and {tuple(vecs.shape)}; expected (V,) "
                         f"distinct int64 ids and (V, {config.dim}) float32", path=path)
    return Item2Vec(ids.numpy(), vecs.numpy().astype(np.float32), config)


def _trending_two_tower(folder: Path, entry: dict[str, Any], loaded: dict[str, ItemVectors]) -> TrendingTwoTower:
    path = folder / str(entry["file"])
    if entry["base"] != "two_tower" or "two_tower" not in loaded:
        raise InputError(f"{PRIOR_NAME} needs its base, the two_tower channel, in the same folder", path=path,
                         field=f"channels.{PRIOR_NAME}.base")
    prior = entry["prior"]
    if (not isinstance(prior, dict) or set(prior) != {"scale", "trending", "share"}
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
                       for v in prior.values())):
        raise InputError("prior must be {scale, trending, share} finite numbers", path=folder / MANIFEST,
                         field=f"channels.{PRIOR_NAME}.prior")
    state = _load_tensors(folder, entry)
    if set(state) != {"movie_ids", "shares"}:
        raise InputError(f"{PRIOR_NAME} tensors must be movie_ids and shares, not {sorted(state)}", path=path)
    ids, shares = state["movie_ids"], state["shares"]
    if (ids.dtype != torch.int64 or shares.dtype != torch.float64 or ids.ndim != 1 or shares.shape != ids.shape
            or bool(torch.unique(ids).numel() != ids.numel())):
        raise InputError(f"{PRIOR_NAME} tensors have shapes {tuple(ids.shape)} and {tuple(shares.shape)}; expected "
                         "(V,) distinct int64 ids and (V,) float64 shares", path=path)
    return TrendingTwoTower(loaded["two_tower"], TrendingPrior(float(prior["scale"]), float(prior["trending"]),
                                                               float(prior["share"])),
                            dict(zip(ids.tolist(), shares.tolist(), strict=True)))


def load_recall(path: str | Path) -> dict[str, ItemVectors]:
    """Rebuild every channel of a recall folder, strictly (manifest keys, checksums, tensor names and shapes).

    Returns:
        channel name -> :class:`~deepcrossing.training.vectors.ItemVectors`.

    Raises:
        InputError: naming the file and the key that is wrong.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    out: dict[str, ItemVectors] = {}
    entries = sorted(manifest["channels"].items(), key=lambda kv: kv[0] == PRIOR_NAME)   # its base first
    for name, entry in entries:
        try:
            if name == PRIOR_NAME:
                out[name] = _trending_two_tower(folder, entry, out)
            else:
                out[name] = _two_tower(folder, entry) if name == "two_tower" else _item2vec(folder, entry)
        except InputError as exc:
            raise InputError(exc.message, path=exc.path or folder / MANIFEST, field=exc.field) from None
        except (TypeError, KeyError, ValueError) as exc:
            raise InputError(f"the manifest's {name} entry is malformed: {exc!r}", path=folder / MANIFEST,
                             field=f"channels.{name}") from None
    return out


def train_recall(samples: str | Path, channels: tuple[str, ...] = CHANNELS, *,
                 two_tower: TwoTowerTrainConfig | None = None, item2vec: Item2VecConfig | None = None,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None, model: LoadedModel | None = None
                 ) -> tuple[dict[str, ItemVectors], dict[str, Any], dict[str, Any]]:
    """Train the recall models of a samples folder (time split) and choose their merge on validation.

    ``trending``: its window (:data:`~deepcrossing.training.retrieval_trending.TRENDING_WINDOWS`) and its score's
    half-life (:data:`~deepcrossing.training.retrieval_trending.TRENDING_HALF_LIVES`, or the plain count) are the
    pair with the best Recall@K of the trending channel alone over the validation period's users and those of
    the periods of its length before it (:func:`~deepcrossing.training.retrieval_trending.choose_trending`,
    ``TRENDING_BACKTESTS`` periods in all); the merge below uses that list.

    ``two_tower``: trained on train's positives, early-stopped on the validation split's Recall@K.
    ``item2vec``: fitted on train's positives to measure it on validation, then again on every positive
    before the test start (train + valid) for the model kept. The merge weights (two-tower, item2vec, the
    user's genres, trending, popularity) are chosen on validation (:func:`choose_merge`): with ``model`` (the
    Deep Crossing model the service ranks with), the best Recall@100 among the weights whose end-to-end
    NDCG@10 (the merged 800 ranked by it) is at least popularity-800's (popularity alone is one of them,
    so the served merge is never below popularity-800 end to end on validation); without, by Recall@100.
    With ``model``, the first ``k`` movies may then come by other weights (``head_weights``, ``None``: the
    same), the best Recall@``k`` whose whole merged list keeps that NDCG floor (:func:`choose_merge`'s ``tail``).
    Then the score fusion of the same channels (warm and cold weights, rank offset) is chosen on validation
    under the same rules (:func:`~deepcrossing.training.retrieval_fusion.choose_fusion`), and ``merge.rule``
    records which of the two has the better validation Recall@``k`` (the one ``publish``/``serve`` use).

    Returns:
        (channel -> model, merge ``{"weights", "k", "valid_recall", "trending_days", "trending_half_life_days"}``
        (+ ``"head_weights"``, ``"valid_ndcg@10"`` and ``"valid_ndcg@10_popularity"`` with ``model``), metrics
        ``{"trending_valid_recall": {"<days>d/<half-life>": pooled R@K}, "trending_periods": [[start, end, users],
        ...], "valid_recall": {...}, "two_tower": {best_epoch, history}}``).
    """
    folder = Path(samples)
    valid = load_retrieval_data(folder, split="valid")
    test_start = split_start(folder, "test")
    k = (two_tower or TwoTowerTrainConfig()).k
    trending = choose_trending(valid, k, windows=TRENDING_WINDOWS, periods=TRENDING_BACKTESTS,
                               length=test_start - valid.test_start)   # before the test start only
    valid = trending.data
    models: dict[str, ItemVectors] = {}
    on_valid: dict[str, ItemVectors] = {}
    metrics: dict[str, Any] = {"trending_valid_recall": trending.scores, "trending_periods": trending.periods}
    for name in channels:
        if name == "two_tower":
            result = train_two_tower(pq.read_table(folder / "train.parquet"), valid, train_config=two_tower,
                                     on_epoch=on_epoch)
            models[name] = on_valid[name] = result.vectors
            metrics["two_tower"] = {"best_epoch": result.best_epoch, "history": result.history}
        elif name == "item2vec":
            config = item2vec or Item2VecConfig()
            on_valid[name] = fit_item2vec(positive_sequences([folder / "train.parquet"], valid.test_start), config)
            models[name] = fit_item2vec(positive_sequences([folder / "train.parquet", folder / "valid.parquet"],
                                                           test_start), config)
        else:
            raise InputError(f"unknown recall channel {name!r} (known: {', '.join(CHANNELS)})", field="channels")
    if "two_tower" in models:   # the two-tower score with the trending prior, fitted on validation
        prior = fit_on(valid, models["two_tower"], positive_shares(folder / "train.parquet"))
        models[PRIOR_NAME] = on_valid[PRIOR_NAME] = prior
        metrics[PRIOR_NAME] = {"scale": prior.prior.scale, "trending": prior.prior.trending,
                               "share": prior.prior.share, "valid_nll": prior.prior.nll}
    base = build_channels(valid, None, on_valid)
    metrics["valid_recall"] = {name: validation_recall(v, valid, k) for name, v in on_valid.items()}
    # The prior's score holds two_tower's cosine (weights 0 give it back): one candidate for both keeps the
    # weight grids at 5 channels (6 took train-recall from 75 s to 312 s on ml-latest-small).
    pooled = [n for n in on_valid if not (n == "two_tower" and PRIOR_NAME in on_valid)]
    candidates = {name: base[name] for name in (*pooled, "genres", "trending", "popularity")}
    weights, score = choose_merge(valid.users, valid.relevant, candidates, k=k)
    merge: dict[str, Any] = {"weights": weights, "k": k, "valid_recall": score, "trending_days": trending.days,
                             "trending_half_life_days": trending.half_life_days}
    rank: Ranker | None = None
    if model is not None:
        rank = ranker(valid, model)
        pop, pop_ndcg = choose_merge(valid.users, valid.relevant, {"popularity": base["popularity"]}, k=k,
                                     rank=rank)
        weights, ndcg = choose_merge(valid.users, valid.relevant, candidates, k=k, rank=rank, floor=pop_ndcg)
        head, ndcg = choose_merge(valid.users, valid.relevant, candidates, k=k, rank=rank, floor=pop_ndcg,
                                  tail=weights)                   # the first k by other weights, same floor
        head_weights = None if head == weights else head
        merged = weighted_merge([base[c] for c in weights], list(weights.values()), head=k,
                                head_weights=None if head_weights is None else [head[c] for c in weights])
        recall = recall_at_ks([merged(u, k) for u in valid.users], valid.relevant, (k,)).recall[k]
        merge.update(weights=weights, head_weights=head_weights, valid_recall=recall,
                     **{"valid_ndcg@10": ndcg, "valid_ndcg@10_popularity": pop_ndcg})
    merge.update(_fusion(valid, candidates, merge, k, rank))
    return models, merge, metrics


def _fusion(valid: RetrievalData, candidates: dict[str, Channel], merge: dict[str, Any], k: int,
            rank: Ranker | None) -> dict[str, Any]:
    """The score fusion chosen on validation (:func:`choose_fusion`; with ``rank``, its first ``k`` fused and
    the rest by the quota merge's weights, under the same NDCG floor) and the rule that wins there: ``fusion``
    when its exact Recall@``k`` beats the quota merge's (keeping the floor), else ``quota``; the merge entries
    ``rule``, ``fusion``, ``quota_valid_recall``, ``fusion_valid_recall`` (+ ``fusion_valid_ndcg@10``), and
    the winner's ``valid_recall`` (+ NDCG)."""
    floor = merge.get("valid_ndcg@10_popularity")
    fusion = choose_fusion(valid.users, valid.relevant, candidates, k=k, rank=rank, floor=floor,
                           tail=None if rank is None else merge["weights"])   # with the model: a fused head
    recall, ndcg = evaluate_merge(valid.users, valid.relevant, fusion_merge(candidates, fusion), k, rank=rank)
    wins = recall > merge["valid_recall"] and (ndcg is None or floor is None or ndcg >= floor)
    out: dict[str, Any] = {"rule": "fusion" if wins else "quota", "fusion": fusion.to_dict(),
                           "quota_valid_recall": merge["valid_recall"], "fusion_valid_recall": recall}
    if ndcg is not None:
        out["fusion_valid_ndcg@10"] = ndcg
    if wins:
        out["valid_recall"] = recall
        if ndcg is not None:
            out["valid_ndcg@10"] = ndcg
    return out
