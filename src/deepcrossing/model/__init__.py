"""The Deep Crossing model: one module per paper layer, composed by :class:`DeepCrossing` (returns logits).

Public API:
    EmbeddingLayer, StackingLayer, ResidualUnit, MLP, ScoringLayer                  (model.layers)
    DeepCrossing, FirstLayerSplit, FlatDeepCrossing, dense_feature_names            (model.deep_crossing)
    DeepCrossingTrain, ParameterGroups: model + loss + penalty + parameter groups  (model.train_module)
    NumericEmbeddingLayer, Periodic, LinearReLU: numeric features as vectors        (model.numeric)
"""

from deepcrossing.model.deep_crossing import DeepCrossing, FirstLayerSplit, FlatDeepCrossing, dense_feature_names
from deepcrossing.model.layers import MLP, EmbeddingLayer, ResidualUnit, ScoringLayer, StackingLayer
from deepcrossing.model.numeric import LinearReLU, NumericEmbeddingLayer, Periodic
from deepcrossing.model.train_module import DeepCrossingTrain, ParameterGroups

__all__ = ["MLP", "DeepCrossing", "DeepCrossingTrain", "EmbeddingLayer", "FirstLayerSplit", "FlatDeepCrossing",
           "LinearReLU", "NumericEmbeddingLayer", "ParameterGroups", "Periodic", "ResidualUnit", "ScoringLayer",
           "StackingLayer", "dense_feature_names"]
