"""What the downstream tasks share: their data path (synthetic stand-ins or the task's files, through the same
ExampleBuilder / ImageTextDataset as pre-training), the paper's fine-tuning resolution, and predicting every
example of a set with fixed-size batches."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..data import DataConfigError, ExampleBuilder, ImageTextDataset, ImageTransform, TaskCollator
from ..data.dataset import check_readable
from ..data.images import evaluation_transform
from ..data.synthetic import SyntheticTaskSource
from ..modeling.backbones import set_image_size
from .base import Metrics

logger = logging.getLogger("bridgetower_gaudi")

# Synthetic held-out splits come from other seeds than training: no evaluation image was seen in training.
SPLIT_SEED_OFFSETS = {"train": 0, "validation": 10_007, "test": 20_011}


def task_sources(task: str, data_args, split: str, seed: int, skip_log, image_size: int) -> list | None:
    """The sources of one split: the synthetic stand-in (no data flags), or the task's files; None when the flags
    give no data for the split."""
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}[split]
    if data_args.dataset_format == "synthetic" and not (data_args.train_file or data_args.dataset_name):
        size = data_args.synthetic_train_size if split == "train" else data_args.synthetic_eval_size
        return [SyntheticTaskSource(task, size, seed + SPLIT_SEED_OFFSETS[split], max(64, image_size))]
    if not files:
        return None
    from ..data import task_sources as readers  # the VQAv2 / SNLI-VE / NLVR2 readers

    annotations = annotation_files(data_args, split, files)
    return [
        readers.task_source(
            task,
            data_args.dataset_format,
            path,
            annotation_path=annotation,
            image_root=data_args.image_root,
            skip_log=skip_log,
            answer_vocabulary=getattr(data_args, "answer_vocabulary", None),
        )
        for path, annotation in zip(files, annotations, strict=True)
    ]


def annotation_files(data_args, split: str, files: list[str]) -> list[str | None]:
    """The annotation file of each data file of `split` (VQAv2 json: the i-th --train_annotation_file goes with the
    i-th --train_file); None for each when the split has none (test questions, other tasks, arrow files)."""
    flag = {"train": "--train_annotation_file", "validation": "--validation_annotation_file"}.get(split)
    given = getattr(data_args, f"{split}_annotation_file", None) if flag else None
    if not given:
        return [None] * len(files)
    if len(given) != len(files):
        file_flag = f"--{split}_file"
        raise DataConfigError(
            f"{flag} names {len(given)} files for {len(files)} {file_flag} files: give one annotation file per "
            f"questions file, in the same order (train2014 + val2014: {file_flag} <train questions> <val questions> "
            f"{flag} <train annotations> <val annotations>)."
        )
    return list(given)


def task_dataset(task: str, data_args, tokenizer, image_size: int, split: str, seed: int, skip_log,
                 encode_target=None) -> ImageTextDataset | None:  # fmt: skip
    """Map-style dataset of `split`: training images through `--image_transform`, held-out ones through its
    evaluation counterpart; targets through `encode_target(record)`."""
    sources = task_sources(task, data_args, split, seed, skip_log, image_size)
    if sources is None:
        return None
    mode = data_args.image_transform if split == "train" else evaluation_transform(data_args.image_transform)
    transform = ImageTransform(image_size, mode, uint8=True)  # normalised on the device by the model
    builder = ExampleBuilder(tokenizer, transform, data_args.max_seq_length, encode_target)
    check_readable(sources, builder)
    return ImageTextDataset(sources, builder, skip_log, itm_negatives="none", seed=seed)


def apply_paper_resolution(model, data_args, sizes: dict[tuple[int, int], int]) -> None:
    """Without `--image_size`, a paper-shaped checkpoint (vision (hidden, patch) a key of `sizes`: CLIP ViT-B/16,
    ViT-L/14) is fine-tuned at the paper's resolution for the task, its position embeddings interpolated."""
    if data_args.image_size:
        return
    vision = model.config.vision_config
    size = sizes.get((vision.hidden_size, vision.patch_size))
    if size and size != vision.image_size:
        logger.info(
            "fine-tuning at the paper's resolution %d (was %d); --image_size overrides", size, vision.image_size
        )
        set_image_size(model, size)


def predict_every_example(trainer, dataset, metric_key_prefix: str = "test") -> tuple[object, int]:
    """Trainer.predict over every example although the loaders drop the last partial batch (static shapes): the
    set is padded with its last example to whole batches, and the padding cut off again. Returns (prediction
    output, number of examples)."""
    count = len(dataset)
    if count == 0:
        raise DataConfigError("the prediction set is empty.")
    batch = trainer.args.per_device_eval_batch_size * max(1, trainer.args.world_size)
    padded = torch.utils.data.Subset(dataset, list(range(count)) + [count - 1] * (-count % batch))
    output = trainer.predict(padded, metric_key_prefix=metric_key_prefix)
    return output, count


class ClassificationTask:
    """Mixin of the single-label tasks (SNLI-VE, NLVR2): integer targets, accuracy on every held-out example."""

    name: str
    model_class: type

    def encode_target(self, record) -> dict:
        return {} if record.target is None else {"labels": torch.tensor(int(record.target))}

    def build_dataset(self, data_args, task_args, tokenizer, image_size, split, seed, skip_log):
        return task_dataset(self.name, data_args, tokenizer, image_size, split, seed, skip_log, self.encode_target)

    def collators(self, tokenizer, data_args, task_args, args):
        return TaskCollator(), TaskCollator()

    def metrics(self, tokenizer, data_args, task_args, model) -> Metrics:
        return Metrics(lambda logits, labels: logits.argmax(dim=-1), _accuracy_metrics, ["labels"])

    def evaluate(self, trainer, dataset) -> dict:
        output, count = predict_every_example(trainer, dataset, metric_key_prefix="eval")
        predicted = np.asarray(output.predictions).reshape(-1)[:count]
        labels = np.asarray(output.label_ids).reshape(-1)[:count]
        return {"eval_loss": output.metrics["eval_loss"], "eval_accuracy": accuracy(predicted, labels)}


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float((predicted == labels).mean()) if labels.size else float("nan")


def _accuracy_metrics(prediction) -> dict:
    return {"accuracy": accuracy(np.asarray(prediction.predictions), np.asarray(prediction.label_ids))}
