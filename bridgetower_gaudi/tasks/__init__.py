"""Tasks: what pre-training and each downstream task add to the one generic run (`training.run`): flags, the
paper's recipe, model class, data, collators and metrics. `TASKS[name]()` gives one."""

from .base import Metrics, Task
from .nlvr2 import Nlvr2Task
from .pretrain import ItmTask, MlmTask, PretrainTask
from .retrieval import RetrievalTask
from .snli_ve import SnliVeTask
from .vqa import VqaTask

TASKS: dict[str, type[Task]] = {
    task.name: task for task in (PretrainTask, ItmTask, MlmTask, RetrievalTask, VqaTask, SnliVeTask, Nlvr2Task)
}
FINETUNING_TASKS = ("itm", "mlm", "retrieval", "vqa", "snli_ve", "nlvr2")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"--task {name!r}: choose one of {sorted(TASKS)}.")
    return TASKS[name]()


__all__ = [
    "FINETUNING_TASKS",
    "TASKS",
    "ItmTask",
    "Metrics",
    "MlmTask",
    "Nlvr2Task",
    "PretrainTask",
    "RetrievalTask",
    "SnliVeTask",
    "Task",
    "VqaTask",
    "get_task",
]
