"""SNLI-VE: visual entailment, 3 classes (the official `compute_snli`, `task_finetune_snli_clip_bert` and
scripts/ftfpt_base_snlive.sh)."""

from __future__ import annotations

from ..modeling import BridgeTowerForVisualEntailment
from ..training.model_builder import build_model
from .base import Task
from .finetune import ClassificationTask, apply_paper_resolution

LABELS = ("contradiction", "neutral", "entailment")


class SnliVeTask(ClassificationTask, Task):
    name = "snli_ve"
    official_total_batch = 64
    recipe_flags = [
        "--per_device_train_batch_size", "8",  # x 8 GPUs = 64 officially
        "--learning_rate", "3e-6",
        "--warmup_ratio", "0.06",
        "--weight_decay", "0.01",
        "--head_lr_multiplier", "10",
        "--cross_modal_lr_multiplier", "5",
        "--num_train_epochs", "5",
        "--max_seq_length", "50",
        "--image_transform", "blip_randaug_wc",
    ]  # fmt: skip
    summary_metrics = (("SNLI-VE accuracy", "eval_accuracy"),)
    synthetic_task_words = True
    paper_resolution = {(768, 16): 384}  # the official repo has base scripts only for this task

    def build_model(self, model_args, task_args, data_args, tokenizer):
        model = build_model(
            BridgeTowerForVisualEntailment,
            model_args,
            data_args,
            tokenizer,
            num_labels=3,
            id2label=dict(enumerate(LABELS)),
            label2id={name: i for i, name in enumerate(LABELS)},
        )
        apply_paper_resolution(model, data_args, self.paper_resolution)
        return model
