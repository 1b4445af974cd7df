"""Tasks: what pre-training and each downstream task add to the one generic run (`training.run`): flags, the
paper's recipe, model class, data, collators and metrics. `TASKS[name]()` gives one."""

from .base import Metrics, Task
from .pretrain import ItmTask, MlmTask, PretrainTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (PretrainTask, ItmTask, MlmTask)}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"--task {name!r}: choose one of {sorted(TASKS)}.")
    return TASKS[name]()


__all__ = ["TASKS", "ItmTask", "Metrics", "MlmTask", "PretrainTask", "Task", "get_task"]
