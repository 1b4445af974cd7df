"""Fine-tuning entry point (`run_scripts/run_finetune.py --task {itm, mlm, retrieval, vqa, snli_ve, nlvr2}`): the
generic run (`training.run`) with the chosen task (`bridgetower_gaudi.tasks`), its paper recipe as defaults."""

from __future__ import annotations

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


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv in (["-h"], ["--help"]):
        print(f"run_finetune.py --task {{{','.join(FINETUNING_TASKS)}}} [flags]; --task TASK --help lists them.")
        return {}
    task, rest = split_task(argv)
    return _run.main(rest, get_task(task))


if __name__ == "__main__":
    main()
