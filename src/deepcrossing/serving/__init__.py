"""Online serving: feature store (SQLite, Redis), scorer (no HTTP), FastAPI app factory, web page.

Public API:
    open_store(url) -> FeatureStore           ``sqlite:///path.db`` or ``redis://host:port/db``; versioned publish
    publish_for_model(model_dir, data, url)   latest features (same SQL as the samples) -> a new store version
    Scorer(loaded, backend)                   one batched pass per request; the first MLP layer split by side
    Engine.open(model_dir, url)               model + store snapshot, swapped atomically (reload, publish)
    create_app(ServingSettings(...))          the FastAPI service (routers per resource, model in lifespan)

Example:
    >>> from deepcrossing.serving import Engine                          # doctest: +SKIP
    >>> Engine.open("model", "sqlite:////abs/model/features.db").recommend(1, k=10)  # doctest: +SKIP
"""

import importlib

_EXPORTS = {
    "Engine": "deepcrossing.serving.engine",
    "FeatureStore": "deepcrossing.serving.store",
    "Ref": "deepcrossing.serving.store",
    "Scorer": "deepcrossing.serving.scorer",
    "ServingSettings": "deepcrossing.serving.settings",
    "StoreError": "deepcrossing.serving.store",
    "StoreUnavailable": "deepcrossing.serving.store",
    "open_store": "deepcrossing.serving.store",
    "publish_for_model": "deepcrossing.serving.publish",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'deepcrossing.serving' has no attribute {name!r}")
