"""NLVR2: is a sentence true of a pair of images? (the official `compute_nlvr2`, `task_finetune_nlvr2_clip_bert`
and scripts/ftfpt_base_nlvr2.sh)."""

from __future__ import annotations

from ..modeling import BridgeTowerForNLVR2
from ..training.model_builder import build_model
from .base import Task
from .finetune import ClassificationTask, apply_paper_resolution


class Nlvr2Task(ClassificationTask, Task):
    name = "nlvr2"
    official_total_batch = 64
    recipe_flags = [
        "--per_device_train_batch_size", "8",  # x 8 GPUs = 64 officially
        "--learning_rate", "5e-6",
        "--warmup_ratio", "0.1",
        "--weight_decay", "0.008",
        "--head_lr_multiplier", "10",
        "--cross_modal_lr_multiplier", "5",
        "--num_train_epochs", "10",
        "--max_seq_length", "50",
        "--image_transform", "blip_randaug_wc",  # each image of a pair flipped on its own
    ]  # fmt: skip
    summary_metrics = (("NLVR2 accuracy", "eval_accuracy"),)
    synthetic_task_words = True
    paper_resolution = {(768, 16): 384}  # the official repo has base scripts only for this task

    def build_model(self, model_args, task_args, data_args, tokenizer):
        # The official NLVR2 head: hidden 4h -> 3h (head_hidden_scale 1.5), dropout 0.1 before it.
        model = build_model(BridgeTowerForNLVR2, model_args, data_args, tokenizer, num_labels=2,
                            classifier_hidden_scale=1.5, classifier_dropout_prob=0.1,
                            id2label={0: "False", 1: "True"}, label2id={"False": 0, "True": 1})  # fmt: skip
        model.add_second_image_token_type()
        apply_paper_resolution(model, data_args, self.paper_resolution)
        return model
