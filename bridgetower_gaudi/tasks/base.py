"""What a task gives the generic run (`training.run`): its flags, the paper's recipe for it, its model, data,
collators and metrics. The run parses, builds the trainer (Trainer or GaudiTrainer), trains, evaluates and reports
the same way for every task; a task holds only what differs."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from transformers import HfArgumentParser

from ..data import DataArguments, SkipLog
from ..training.arguments import ModelArguments, RecipeArguments

logger = logging.getLogger("bridgetower_gaudi")


def read_flags(choice_class: type, argv: list[str]):
    """The fields of dataclass `choice_class` (all with defaults) from the user's flags (or their one JSON file),
    before the full parse: the flags a recipe depends on."""
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0]) as f:
            values = json.load(f)
        return choice_class(**{f.name: values[f.name] for f in fields(choice_class) if f.name in values})
    parser = HfArgumentParser(choice_class, add_help=False)
    return parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)[0]


def refresh_deepspeed_config(args) -> None:
    """TrainingArguments fills the DeepSpeed config's "auto" values (batch sizes, accumulation) and accelerate's
    DeepSpeed plugin when it is built: fill them again from the changed arguments, as it does."""
    from accelerate.utils import DeepSpeedPlugin

    args.hf_deepspeed_config = type(args.hf_deepspeed_config)(args.deepspeed)
    args.hf_deepspeed_config.trainer_config_process(args)
    args.deepspeed_plugin = DeepSpeedPlugin(hf_ds_config=args.hf_deepspeed_config)


@dataclass
class BatchPlan:
    """How a run reaches its total training batch: per-device batch x devices x gradient accumulation."""

    per_device: int
    devices: int
    accumulation: int
    recipe_total: int | None

    @property
    def total(self) -> int:
        return self.per_device * self.devices * self.accumulation

    def describe(self) -> str:
        text = f"{self.per_device} per device x {self.devices} devices x {self.accumulation} accumulation steps = "
        recipe = f" (the recipe's total: {self.recipe_total})" if self.recipe_total else ""
        return f"{text}{self.total}{recipe}"

    @property
    def warning(self) -> str | None:
        if self.recipe_total is None or self.total == self.recipe_total:
            return None
        return (
            f"training at a total batch of {self.total}, not the official {self.recipe_total} ({self.describe()}). "
            f"Drop --gradient_accumulation_steps to have it computed, and pick a --per_device_train_batch_size that "
            f"divides {self.recipe_total} / {self.devices} devices."
        )


def batch_plan(per_device: int, devices: int, recipe_total: int | None, accumulation: int | None) -> BatchPlan:
    """The accumulation that reaches `recipe_total` (as the official run.py: total // (per-device x devices), at
    least 1) unless `accumulation` is given."""
    if accumulation is None:
        if recipe_total is None:
            raise ValueError("batch_plan needs the accumulation or a recipe total.")
        accumulation = max(recipe_total // (per_device * devices), 1)
    return BatchPlan(per_device, devices, accumulation, recipe_total)


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
    # The official total training batch (the scripts' EXP_BS, reached with gradient accumulation in their run.py);
    # None: the task has none. The synthetic stand-ins train at the flags' batch (they are smoke tests).
    official_total_batch: ClassVar[int | None] = None

    def __init__(self):
        # The flag names the user gave (set by the entry point): a user's --gradient_accumulation_steps is kept.
        self.user_flags: set[str] = set()

    def choose_recipe(self, argv: list[str]) -> None:
        """Pick the recipe that depends on the user's flags (the data set) before parsing; default: the class's."""

    def total_batch(self, data_args: DataArguments) -> int | None:
        """The total training batch the recipe runs at for this data (None: the flags' batch)."""
        if data_args.dataset_format == "synthetic" and not (data_args.train_file or data_args.dataset_name):
            return None
        return self.official_total_batch

    def resolve_batch(self, args, data_args: DataArguments) -> None:
        """Reach the recipe's total batch: gradient accumulation = total / (per-device batch x devices) unless the
        user gave --gradient_accumulation_steps; log the total the run trains at, warn when it is not the recipe's."""
        total = self.total_batch(data_args)
        given = "gradient_accumulation_steps" in self.user_flags or total is None
        accumulation = args.gradient_accumulation_steps if given else None
        plan = batch_plan(args.per_device_train_batch_size, max(1, args.world_size), total, accumulation)
        if plan.accumulation != args.gradient_accumulation_steps:
            args.gradient_accumulation_steps = plan.accumulation
            if getattr(args, "deepspeed", None):
                refresh_deepspeed_config(args)
        logger.info("training batch: %s", plan.describe())
        if plan.warning:
            warnings.warn(f"--task {self.name}: {plan.warning}", stacklevel=2)

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
