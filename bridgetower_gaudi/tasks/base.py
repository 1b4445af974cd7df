"""What a task gives the generic run (`training.run`): its flags, the paper's recipe for it, its model, data,
collators and metrics. The run parses, builds the trainer (Trainer or GaudiTrainer), trains, evaluates and reports
the same way for every task; a task holds only what differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..data import DataArguments, SkipLog
from ..training.arguments import ModelArguments, RecipeArguments


@dataclass
class Metrics:
    """`preprocess_logits_for_metrics` + `compute_metrics` for the Trainer, and the batch keys holding labels."""

    preprocess: Any
    compute: Any
    label_names: list[str]


class Task:
    """One task. Subclasses set the class attributes and implement the build methods."""

    name: ClassVar[str]
    # The task's flags (a RecipeArguments dataclass: learning-rate multipliers, freezing, shuffling and its own).
    arguments_class: ClassVar[type] = RecipeArguments
    # The paper's recipe for this task as flags, put after the optimiser defaults and before the user's flags
    # (later flags win: a user flag is never overwritten).
    recipe_flags: ClassVar[list[str]] = []
    # Metric printed by the summary line: (label, results key).
    summary_metrics: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Synthetic data's tokenizer also knows the downstream tasks' question words (VQA, SNLI-VE, NLVR2).
    synthetic_task_words: ClassVar[bool] = False

    def resolve(self, task_args: RecipeArguments, data_args: DataArguments) -> None:
        """Settle defaults that depend on other flags and refuse combinations that cannot work (nothing is built
        yet)."""

    def build_model(self, model_args: ModelArguments, task_args, data_args: DataArguments, tokenizer):
        raise NotImplementedError

    def build_dataset(self, data_args: DataArguments, task_args, tokenizer, image_size: int, split: str, seed: int,
                      skip_log: SkipLog):  # fmt: skip
        """The dataset of `split` ("train", "validation" or "test"), or None when the flags give none."""
        raise NotImplementedError

    def collators(self, tokenizer, data_args: DataArguments, task_args, args) -> tuple[Any, Any]:
        """(training collator, evaluation collator)."""
        raise NotImplementedError

    def metrics(self, tokenizer, data_args: DataArguments, task_args, model) -> Metrics:
        raise NotImplementedError

    def evaluate(self, trainer, dataset) -> dict:
        """Held-out metrics (prefixed "eval_"); the Trainer's evaluation loop unless the task needs its own."""
        return trainer.evaluate(dataset)

    def predict(self, trainer, dataset, output_dir: str) -> dict:
        """`--do_predict`: write the task's prediction file; return its metrics."""
        raise ValueError(f"--do_predict: the {self.name} task has no test-set prediction step; use --do_eval.")
