"""Pre-training entry point (`run_scripts/run_pretrain.py`): the generic run (`training.run`) with the pre-training
task (`tasks.pretrain`). With no arguments it runs the embedded default: a tiny BridgeTower on the synthetic source,
on whatever device is there, then prints ITM accuracy, MLM accuracy and samples/s."""

from __future__ import annotations

from ..tasks.pretrain import DEFAULT_ARGS, PretrainTask
from . import run as _run
from .run import apply_example_flags, limit_samples, resolve_hub_models, run, summary_line

TASK = PretrainTask()


def parse_args(argv: list[str] | None = None, training_arguments_class=None):
    """(ModelArguments, DataArguments, PretrainingArguments, training arguments); see `training.run.parse_args`."""
    return _run.parse_args(argv, TASK, training_arguments_class, default_args=DEFAULT_ARGS)


def build_trainer(model_args, data_args, pretraining_args, args):
    return _run.build_trainer(TASK, model_args, data_args, pretraining_args, args)


def main(argv: list[str] | None = None) -> dict:
    return _run.main(argv, TASK, default_args=DEFAULT_ARGS)


__all__ = [
    "DEFAULT_ARGS",
    "TASK",
    "apply_example_flags",
    "build_trainer",
    "limit_samples",
    "main",
    "parse_args",
    "resolve_hub_models",
    "run",
    "summary_line",
]


if __name__ == "__main__":
    main()
