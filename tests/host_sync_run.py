"""A short tiny-preset training run with the host-sync counter around every optimizer step (forward, backward,
optimizer step, the trainer's own per-step work) and, separately, around the logging steps' and evaluation's host
reads. In-process for one rank (`count_step_syncs`); `python tests/host_sync_run.py OUT.json TASK[,TASK...] FLAGS...`
under torchrun for two (each rank writes OUT.json.rankN: per task, the syncs of each step)."""

from __future__ import annotations

import json
import os
import sys

from transformers import TrainerCallback

from bridgetower_gaudi.device import leave_process_group
from bridgetower_gaudi.device.host_syncs import HostSyncCounter
from bridgetower_gaudi.tasks import get_task
from bridgetower_gaudi.training import run as run_module

# Tiny, short, no checkpoint; logging only where a test asks for it.
BASE_FLAGS = [
    "--config_name", "tiny", "--dataset_format", "synthetic", "--do_train", "--max_seq_length", "16",
    "--per_device_train_batch_size", "4", "--synthetic_train_size", "64", "--synthetic_eval_size", "8",
    "--per_device_eval_batch_size", "4", "--report_to", "none", "--save_strategy", "no", "--seed", "0",
    "--dataloader_num_workers", "0", "--logging_steps", "1000", "--disable_tqdm", "true",
]  # fmt: skip


class StepSyncWindow(TrainerCallback):
    """A counter from the start of each optimizer step (its first micro-step) to its end (after the optimizer and
    scheduler steps and zero_grad); Trainer's logging and evaluation come after on_step_end, outside the window."""

    def __init__(self, record_stacks: bool = True):
        self.record_stacks, self.steps, self._active = record_stacks, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._active = HostSyncCounter(record_stacks=self.record_stacks)
        self._active.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        self._active.__exit__(None, None, None)
        self.steps.append(self._active)
        self._active = None


def count_step_syncs(task_name: str, flags: list[str], output_dir: str) -> tuple[list, HostSyncCounter]:
    """(one counter per optimizer step, one counter over the whole train() call) of a short run of `task_name`
    ('pretrain' or a fine-tuning task) with BASE_FLAGS + `flags`."""
    task = get_task(task_name)
    argv = [*BASE_FLAGS, *flags, "--output_dir", output_dir]
    model_args, data_args, task_args, training_args = run_module.parse_args(argv, task)
    trainer = run_module.build_trainer(task, model_args, data_args, task_args, training_args)
    window = StepSyncWindow()
    trainer.add_callback(window)
    with HostSyncCounter() as whole:
        trainer.train()
    return window.steps, whole


def main(out: str, task_names: str, *flags: str) -> None:
    """`task_names`: one task or several, comma-separated, run one after the other in this process group."""
    rank = int(os.environ.get("RANK", "0"))
    results = {}
    for task_name in task_names.split(","):
        steps, whole = count_step_syncs(task_name, list(flags), os.path.join(os.path.dirname(out) or ".", task_name))
        results[task_name] = {"step_syncs": [s.syncs for s in steps], "reports": [s.report() for s in steps if s.syncs],
                              "total_syncs": whole.syncs}  # fmt: skip
    with open(f"{out}.rank{rank}", "w") as f:
        json.dump(results, f)
    leave_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
