"""Training: flags, AdamW groups, metrics, the trainer (Trainer / GaudiTrainer) and the one run every task uses."""

from .arguments import BridgeTowerTrainingArguments, ModelArguments, PretrainingArguments, RecipeArguments
from .metrics import itm_accuracy, majority_baseline, mlm_accuracy
from .optimization import parameter_groups
from .trainer import BridgeTowerTrainer

__all__ = [
    "BridgeTowerTrainer",
    "BridgeTowerTrainingArguments",
    "ModelArguments",
    "PretrainingArguments",
    "RecipeArguments",
    "itm_accuracy",
    "majority_baseline",
    "mlm_accuracy",
    "parameter_groups",
]
