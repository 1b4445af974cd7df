"""Fine-tuning entry point (`run_scripts/run_finetune.py --task {itm, mlm, retrieval, vqa, snli_ve, nlvr2}`): the
generic run (`training.run`) with the chosen task (`bridgetower_gaudi.tasks`), its paper recipe as defaults."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..tasks import FINETUNING_TASKS, get_task
from . import run as _run


@dataclass
class TaskChoice:
    task: str = field(metadata={"help": f"One of {FINETUNING_TASKS}."})


def split_task(argv: list[str]) -> tuple[str, list[str]]:
    """(--task value, the other flags)."""
    parser = HfArgumentParser(TaskChoice, add_help=False)
    try:
        choice, rest = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except SystemExit:  # argparse's own message names only the missing flag
        raise SystemExit(
            f"bridgetower_gaudi: run_finetune.py needs --task, one of {', '.join(FINETUNING_TASKS)}."
        ) from None
    if choice.task not in FINETUNING_TASKS:
        raise SystemExit(f"bridgetower_gaudi: --task {choice.task!r}: choose one of {', '.join(FINETUNING_TASKS)}.")
    return choice.task, rest


def given_flags(argv: list[str]) -> set[str]:
    """The names of the flags in `argv` (`--name value`, `--name=value`, `--name-with-dashes`), or the keys of the
    one JSON file that holds them."""
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0]) as f:
            return set(json.load(f))
    return {item[2:].split("=", 1)[0].replace("-", "_") for item in argv if item.startswith("--")}


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):
        print(f"run_finetune.py --task {{{','.join(FINETUNING_TASKS)}}} [flags]; --task TASK --help lists them.")
        return {}
    name, rest = split_task(argv)
    task = get_task(name)
    task.user_flags = given_flags(rest)
    task.choose_recipe(rest)
    return _run.main(rest, task)


if __name__ == "__main__":
    main()
