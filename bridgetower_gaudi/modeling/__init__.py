"""The BridgeTower model: configuration, layers, bridges, heads, checkpoint conversion, processor."""

from .backbones import config_from_backbones
from .configuration import BRIDGE_VARIANTS, BridgeTowerConfig, BridgeTowerTextConfig, BridgeTowerVisionConfig
from .modeling_bridgetower import (
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerForNLVR2,
    BridgeTowerForPreTraining,
    BridgeTowerForVisualEntailment,
    BridgeTowerForVisualQuestionAnswering,
    BridgeTowerModel,
    BridgeTowerPreTrainedModel,
)
from .presets import PRESETS, preset_config
from .processing import BridgeTowerProcessor

__all__ = [
    "BRIDGE_VARIANTS",
    "PRESETS",
    "BridgeTowerConfig",
    "BridgeTowerForContrastiveLearning",
    "BridgeTowerForImageAndTextRetrieval",
    "BridgeTowerForMaskedLM",
    "BridgeTowerForNLVR2",
    "BridgeTowerForPreTraining",
    "BridgeTowerForVisualEntailment",
    "BridgeTowerForVisualQuestionAnswering",
    "BridgeTowerModel",
    "BridgeTowerPreTrainedModel",
    "BridgeTowerProcessor",
    "BridgeTowerTextConfig",
    "BridgeTowerVisionConfig",
    "config_from_backbones",
    "preset_config",
]
