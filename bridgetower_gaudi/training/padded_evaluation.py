"""Evaluation and prediction over every example under static shapes (`--dataloader_drop_last`): the set is padded
to whole batches and the padding rows are taken out of every figure, instead of the last partial batch being
dropped."""

from __future__ import annotations

import torch
from transformers.trainer_pt_utils import nested_truncate

from ..data.dataset import StreamingLoader
from .streaming import draw_as_new_workers_do


def padded_to_whole_batches(dataset, batch_size: int):
    """(dataset, None) when its length is a multiple of `batch_size` (the global evaluation batch), else (the dataset
    followed by its first examples again up to a whole last batch, the number of real examples): static shapes keep
    every example instead of dropping the remainder. The padding rows are real examples, so in-batch pairings (ITM
    negatives, ITC) stay well formed; `EvalRows` takes them out of every figure."""
    count = len(dataset)
    extra = -count % batch_size
    if count == 0 or extra == 0:
        return dataset, None
    return torch.utils.data.Subset(dataset, list(range(count)) + [i % count for i in range(extra)]), count


class EvalRows:
    """Which rows of each evaluation batch are real examples, for a set padded by `padded_to_whole_batches`.
    Evaluation batches go to the ranks in turn (rank r takes rows [r * per_device, (r + 1) * per_device) of each
    global batch) and are gathered back in that order."""

    def __init__(self, examples: int, per_device: int, world_size: int, rank: int):
        self.examples, self.per_device, self.rank = examples, per_device, rank
        self.global_batch = per_device * world_size
        self.batch = -1  # the batch being evaluated

    def next_batch(self, inputs: dict, label_names: list[str]) -> dict:
        """The next batch of this rank with its padding rows' integer labels set to -100 (ignored by the losses)."""
        self.batch += 1
        start = self.batch * self.global_batch + self.rank * self.per_device
        real = min(max(self.examples - start, 0), self.per_device)
        if real == self.per_device:
            return inputs
        inputs = dict(inputs)
        for name in label_names:
            labels = inputs.get(name)
            if isinstance(labels, torch.Tensor) and not labels.is_floating_point():
                labels = labels.clone()
                labels[real:] = -100
                inputs[name] = labels
        return inputs

    def keep_real(self, gathered):
        """The gathered rows (losses, predictions, labels: tensors or nested tuples) of the current batch without its
        padding rows."""
        keep = min(max(self.examples - self.batch * self.global_batch, 0), self.global_batch)
        return gathered if keep == self.global_batch else nested_truncate(gathered, keep)


class PaddedEvaluation:
    """Trainer mixin: evaluation with `eval_data_collator` (the training collator when None), over every example."""

    def get_eval_dataloader(self, eval_dataset=None):
        # With persistent workers a set's loader is kept and reused, by name (Trainer would key every set it is
        # given as a dataset, as ours are after padding, "eval": a second named set would get the first one's).
        name = eval_dataset if isinstance(eval_dataset, str) else "eval" if eval_dataset is None else None
        kept = self.__dict__.setdefault("_kept_eval_loaders", {})
        if name in kept:
            return kept[name]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, str):  # Trainer.evaluate names one of several evaluation sets
            dataset = self.eval_dataset[dataset]
        collator = self.eval_data_collator or self.data_collator
        if isinstance(dataset, torch.utils.data.IterableDataset):
            loader = self._streaming_loader(dataset, self.args.eval_batch_size, collator)
            return StreamingLoader(loader, dataset, self.args.device, training=False)
        padding = None
        if self.args.dataloader_drop_last:  # static shapes: pad the last batch instead of dropping its examples
            dataset, padding = padded_to_whole_batches(dataset, self.args.eval_batch_size * self.args.world_size)
        training_collator, self.data_collator = self.data_collator, collator  # Trainer builds loaders from it
        try:
            loader = super().get_eval_dataloader(dataset)
        finally:
            self.data_collator = training_collator
            getattr(self, "_eval_dataloaders", {}).pop("eval", None)
        loader.eval_examples = padding  # read by evaluation_loop: how many of the rows are real examples
        if self.args.dataloader_persistent_workers and name is not None:
            kept[name] = loader
        return loader

    def get_test_dataloader(self, test_dataset):
        """Trainer.predict's loader, padded to whole batches like the evaluation one (every example predicted)."""
        padding = None
        if self.args.dataloader_drop_last and not isinstance(test_dataset, torch.utils.data.IterableDataset):
            batch = self.args.eval_batch_size * self.args.world_size
            test_dataset, padding = padded_to_whole_batches(test_dataset, batch)
        loader = super().get_test_dataloader(test_dataset)
        loader.eval_examples = padding
        return loader

    def evaluation_loop(self, dataloader, *args, **kwargs):
        """Over every example of a set padded to whole batches (`get_eval_dataloader`): each batch's padding rows get
        ignored labels (-100) before the forward, so the model's losses leave them out, and are cut from what is
        gathered (losses, predictions, labels), so every metric and the mean loss are over the real examples."""
        draw_as_new_workers_do(dataloader)  # a kept loader's workers exist: draw as a new loader would
        examples = getattr(dataloader, "eval_examples", None)
        if examples is None:
            return super().evaluation_loop(dataloader, *args, **kwargs)
        self._eval_rows = EvalRows(examples, self.args.eval_batch_size, self.args.world_size, self.args.process_index)
        gather = self.gather_function
        self.gather_function = lambda tensors: self._eval_rows.keep_real(gather(tensors))
        try:
            output = super().evaluation_loop(dataloader, *args, **kwargs)
        finally:
            self._eval_rows, self.gather_function = None, gather
        return output._replace(num_samples=examples)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if getattr(self, "_eval_rows", None) is not None:
            inputs = self._eval_rows.next_batch(inputs, self.label_names)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
