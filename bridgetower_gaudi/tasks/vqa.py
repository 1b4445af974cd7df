"""VQAv2: answer classification over a vocabulary with soft targets (the paper's recipe, the official
`compute_vqa`, `task_finetune_vqa_clip_bert` and scripts/ftfpt_base_vqa.sh)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import TaskCollator
from ..data.synthetic import ATTRIBUTE_WORDS
from ..evaluation import vqa as vqa_metrics
from ..modeling import BridgeTowerForVisualQuestionAnswering
from ..training.arguments import RecipeArguments
from ..training.model_builder import build_model
from .base import Metrics, Task, read_flags
from .finetune import apply_paper_resolution, predict_every_example, task_dataset

logger = logging.getLogger("bridgetower_gaudi")


@dataclass
class VqaArguments(RecipeArguments):
    answer_vocabulary_file: str | None = field(
        default=None,
        metadata={
            "help": "A json list of answers (the classifier's labels). Default: the checkpoint's (a VQA model), else "
            "built as write_vqa.py from the training then validation annotations' multiple_choice_answer "
            "(normalised, count >= --min_answer_count; train2014 + val2014 give the official 3,129)."
        },
    )
    min_answer_count: int = field(default=9, metadata={"help": "Answers kept in a built vocabulary (official: 9)."})


# The large model's recipe on top of the base one (scripts/ftfpt_large_vqa.sh: total 512 as base).
LARGE_RECIPE_FLAGS = ["--per_device_train_batch_size", "4", "--learning_rate", "4e-6"]
LARGE_VISION = (1024, 14)  # CLIP ViT-L/14: (hidden size, patch size)


@dataclass
class ModelChoice:
    """The flags that say which model a run fine-tunes, read before the full parse."""

    model_name_or_path: str | None = None
    config_name: str | None = None
    vision_model_name_or_path: str | None = None


def vision_shape(argv: list[str]) -> tuple[int, int] | None:
    """(hidden size, patch size) of the vision tower the flags name (checkpoint, config / preset, or vision
    backbone); None when they name none or it cannot be read (the run then reports that itself)."""
    from ..modeling import PRESETS, BridgeTowerConfig

    choice = read_flags(ModelChoice, argv)
    try:
        if choice.model_name_or_path or (choice.config_name and choice.config_name not in PRESETS):
            vision = BridgeTowerConfig.from_pretrained(choice.model_name_or_path or choice.config_name).vision_config
        elif choice.config_name:
            vision = BridgeTowerConfig(**PRESETS[choice.config_name]).vision_config
        elif choice.vision_model_name_or_path:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(choice.vision_model_name_or_path)
            vision = getattr(config, "vision_config", config)
        else:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return vision.hidden_size, vision.patch_size


class VqaTask(Task):
    name = "vqa"
    arguments_class = VqaArguments
    official_total_batch = 512
    recipe_flags = [
        "--per_device_train_batch_size", "16",  # x 8 GPUs x 4 accumulation = 512 officially
        "--learning_rate", "1e-5",
        "--warmup_ratio", "0.06",
        "--weight_decay", "0.05",
        "--head_lr_multiplier", "50",
        "--cross_modal_lr_multiplier", "5",
        "--num_train_epochs", "10",
        "--max_seq_length", "50",
        "--image_transform", "blip_randaug_wohf",  # no flip: "left" / "right" answers
    ]  # fmt: skip
    summary_metrics = (("VQA score", "eval_vqa_score"),)
    synthetic_task_words = True
    paper_resolution = {(768, 16): 576, (1024, 14): 574}

    def __init__(self):
        super().__init__()
        self.answers: list[str] | None = None

    def choose_recipe(self, argv: list[str]) -> None:
        """The large model (CLIP ViT-L/14 tower) gets the large script's learning rate and per-device batch."""
        if vision_shape(argv) == LARGE_VISION:
            self.recipe_flags = type(self).recipe_flags + LARGE_RECIPE_FLAGS
            logger.info("vqa: the official large recipe (lr 4e-6, 4 per device, total 512)")

    def answer_vocabulary(self, model_args, task_args: VqaArguments, data_args) -> list[str]:
        if task_args.answer_vocabulary_file:
            return vqa_metrics.load_answer_vocabulary(task_args.answer_vocabulary_file)
        if data_args.dataset_format == "synthetic" and not data_args.train_file:
            return sorted(ATTRIBUTE_WORDS)
        files = (data_args.train_file or []) + (data_args.validation_file or [])
        if files and all(path.endswith(".arrow") for path in files):  # the official files: rebuilt as officially
            from ..data.task_sources import answer_vocabulary_from_arrow

            return answer_vocabulary_from_arrow(files)
        if model_args.model_name_or_path:
            from ..modeling import BridgeTowerConfig

            config = BridgeTowerConfig.from_pretrained(model_args.model_name_or_path)
            if "BridgeTowerForVisualQuestionAnswering" in (config.architectures or []):
                return [config.id2label[i] for i in range(config.num_labels)]
        if not data_args.train_annotation_file:
            raise ValueError(
                "--task vqa needs an answer vocabulary: --answer_vocabulary_file, or --train_annotation_file to build "
                "one from (or a VQA checkpoint, which carries its own)."
            )
        # As write_vqa.py: the train annotations, then the validation ones (train2014 + val2014: the official
        # 3,129 answers), each file once.
        paths = dict.fromkeys((data_args.train_annotation_file or []) + (data_args.validation_annotation_file or []))
        annotations = []
        for path in paths:
            with open(path) as f:
                annotations += json.load(f)["annotations"]
        return vqa_metrics.build_answer_vocabulary(annotations, task_args.min_answer_count)

    def build_model(self, model_args, task_args: VqaArguments, data_args, tokenizer):
        self.answers = self.answer_vocabulary(model_args, task_args, data_args)
        data_args.answer_vocabulary = self.answers  # the readers keep questions with an answer in it
        model = build_model(
            BridgeTowerForVisualQuestionAnswering, model_args, data_args, tokenizer,
            num_labels=len(self.answers), id2label=dict(enumerate(self.answers)),
            label2id={answer: i for i, answer in enumerate(self.answers)},
        )  # fmt: skip
        apply_paper_resolution(model, data_args, self.paper_resolution)
        return model

    def encode_target(self, record) -> dict:
        """Soft scores over the vocabulary: given ("labels", "scores"), or from the ten raw answers."""
        target = record.target
        if target is None:  # test questions
            return {}
        scores = torch.zeros(len(self.answers))
        if "labels" in target:
            for label, score in zip(target["labels"], target["scores"], strict=True):
                scores[label] = score
            return {"labels": scores}
        index = {answer: i for i, answer in enumerate(self.answers)}
        for answer, score in vqa_metrics.answer_scores(target["answers"]).items():
            if answer in index:
                scores[index[answer]] = score
        return {"labels": scores}

    def build_dataset(self, data_args, task_args, tokenizer, image_size, split, seed, skip_log):
        return task_dataset(self.name, data_args, tokenizer, image_size, split, seed, skip_log, self.encode_target)

    def collators(self, tokenizer, data_args, task_args, args):
        return TaskCollator(), TaskCollator()

    def metrics(self, tokenizer, data_args, task_args, model) -> Metrics:
        return Metrics(_argmax, _vqa_score_metrics, ["labels"])

    def evaluate(self, trainer, dataset) -> dict:
        """Every held-out question: `vqa_score` against the soft targets (the official training-time VQAScore) and,
        when the records carry the annotators' answers, `vqa_accuracy`, the official VQA accuracy (min(#matching
        annotators / 3, 1) averaged over the 10 subsets of 9 annotators) on normalised answers."""
        output, count = predict_every_example(trainer, dataset, metric_key_prefix="eval")
        predicted = np.asarray(output.predictions).reshape(-1)[:count]
        targets = np.asarray(output.label_ids)[:count]
        metrics = {"eval_loss": output.metrics["eval_loss"], "eval_vqa_score": _soft_score(predicted, targets)}
        raw = [dataset.record(i).target.get("answers") for i in range(count)]
        if all(raw):
            metrics["eval_vqa_accuracy"] = vqa_metrics.vqa_accuracy([self.answers[p] for p in predicted.tolist()], raw)
        return metrics

    def predict(self, trainer, dataset, output_dir: str) -> dict:
        """The official submission file: [{"question_id": int, "answer": str}] for every test question."""
        output, count = predict_every_example(trainer, dataset)
        predicted = np.asarray(output.predictions).reshape(-1)[:count]
        submission = []
        for index, label in enumerate(predicted.tolist()):
            question_id = dataset.record(index).example_id
            submission.append({"question_id": int(question_id), "answer": self.answers[label]})
        path = os.path.join(output_dir, "vqa_submission.json")
        if trainer.args.should_save:
            with open(path, "w") as f:
                json.dump(submission, f)
        return {"predict_questions": len(submission)}


def _argmax(logits, labels):
    return logits.argmax(dim=-1)


def _soft_score(predicted: np.ndarray, targets: np.ndarray) -> float:
    """The argmax answer's soft target (1.0 for an answer 4+ annotators gave, 0.3 for one), averaged: the
    official `VQAScore`."""
    return float(targets[np.arange(len(predicted)), predicted].mean())


def _vqa_score_metrics(prediction) -> dict:
    predicted = np.asarray(prediction.predictions).reshape(-1)
    return {"vqa_score": _soft_score(predicted, np.asarray(prediction.label_ids))}
