"""bridgetower_gaudi: pre-train, fine-tune and serve BridgeTower on Gaudi (HPU), CUDA and CPU."""

from .modeling import (
    BRIDGE_VARIANTS,
    PRESETS,
    BridgeTowerConfig,
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerForNLVR2,
    BridgeTowerForPreTraining,
    BridgeTowerForVisualEntailment,
    BridgeTowerForVisualQuestionAnswering,
    BridgeTowerModel,
    BridgeTowerPreTrainedModel,
    BridgeTowerProcessor,
    preset_config,
)
from .pipeline import BridgeTowerPipeline, PipelineError

__version__ = "0.1.0"

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
    "BridgeTowerPipeline",
    "BridgeTowerPreTrainedModel",
    "BridgeTowerProcessor",
    "PipelineError",
    "preset_config",
]
