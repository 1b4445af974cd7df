"""Training: flags, AdamW groups, metrics, the trainer (Trainer / GaudiTrainer) and the pre-training entry point."""

from .arguments import BridgeTowerTrainingArguments, ModelArguments, PretrainingArguments
from .metrics import itm_accuracy, majority_baseline, mlm_accuracy
from .optimization import parameter_groups
from .trainer import BridgeTowerTrainer, PretrainingMetrics

__all__ = [
    "BridgeTowerTrainer",
    "BridgeTowerTrainingArguments",
    "ModelArguments",
    "PretrainingArguments",
    "PretrainingMetrics",
    "itm_accuracy",
    "majority_baseline",
    "mlm_accuracy",
    "parameter_groups",
]
