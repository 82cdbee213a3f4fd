"""The Deep Crossing model: one module per paper layer, composed by :class:`DeepCrossing` (returns logits).

Public API:
    EmbeddingLayer, StackingLayer, ResidualUnit, MLP, ScoringLayer   (model.layers)
    DeepCrossing, FlatDeepCrossing, dense_feature_names              (model.deep_crossing)
"""

from deepcrossing.model.deep_crossing import DeepCrossing, FlatDeepCrossing, dense_feature_names
from deepcrossing.model.layers import MLP, EmbeddingLayer, ResidualUnit, ScoringLayer, StackingLayer

__all__ = ["MLP", "DeepCrossing", "EmbeddingLayer", "FlatDeepCrossing", "ResidualUnit", "ScoringLayer",
           "StackingLayer", "dense_feature_names"]
