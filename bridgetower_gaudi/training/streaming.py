"""Training data for an exact resume: map-style data through `EpochSampler` (each item knows its epoch), streamed
data through `StreamingLoader`, whose readers' position is saved with each checkpoint (`data_state.rank<N>.json`)
and restored on resume, instead of Trainer replaying the batches before the checkpoint."""

from __future__ import annotations

import json
import math
import os
from functools import partial

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import seed_worker

from ..data.dataset import EpochSampler, ImageTextDataset, KeepStreamState, StreamingLoader


def draw_as_new_workers_do(loader) -> None:
    """Before a pass of a loader whose persistent workers an earlier pass made: draw from the process's random state
    what torch draws when it makes workers (their base seed), as it does before every pass without persistent
    workers. The process's random state then moves alike with and without persistent workers, and a resumed run,
    which makes the workers again, draws what the uninterrupted run drew (its later dropout and ITC hard negatives
    would differ otherwise). No data draw uses a worker's random state (data.dataset.draw_seed)."""
    inner = getattr(loader, "base_dataloader", loader)  # accelerate's loader iterates the DataLoader it wraps
    if getattr(inner, "_iterator", None) is not None:  # torch keeps a persistent loader's iterator: workers exist
        torch.empty((), dtype=torch.int64).random_(generator=inner.generator)


class ResumeRandomState(TrainerCallback):
    """Restores the checkpoint's random state once more right before the first step of a resumed run. When Trainer
    skips batches (map-style data) it does this itself; when it does not (a stream resumes from its saved position,
    `ignore_data_skip`), it restores the state at the start of the epoch, and creating the data iterator then draws
    from it (the loader's base seed), which the uninterrupted run did at another time: the model's own draws (ITC
    hard negatives, dropout) would differ. The data draws do not depend on it (see data.dataset.draw_seed). Not when
    the checkpoint ends an epoch: the uninterrupted run drew the next epoch's loader seed after the checkpoint too, as
    the resumed run does after Trainer restored the state at the epoch's start. With persistent workers the loader
    draws that seed at its first pass only: each later epoch draws it here (draw_as_new_workers_do)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if train_dataloader is not None:  # before the epoch's first batch, where a new loader draws
            draw_as_new_workers_do(train_dataloader)

    def on_step_begin(self, args, state, control, train_dataloader=None, **kwargs):
        checkpoint, self.trainer._resuming_from = self.trainer._resuming_from, None
        if checkpoint is not None and not self._resumed_at_epoch_start(args, state, train_dataloader):
            self.trainer._load_rng_state(checkpoint)

    def _resumed_at_epoch_start(self, args, state, loader) -> bool:
        stream = self.trainer._train_stream
        if stream is not None:
            return stream.resumed_at_epoch_end  # see StreamingLoader.__iter__
        if args.ignore_data_skip or loader is None or not hasattr(loader, "__len__"):
            return False
        steps_per_epoch = max(math.ceil(len(loader) / args.gradient_accumulation_steps), 1)  # as Trainer counts
        return state.global_step % steps_per_epoch == 0


class StreamedDataResume:
    """Trainer mixin: the training sampler and loader, and the streamed data's position in each checkpoint (saved by
    `AtomicCheckpoints._save_checkpoint`, loaded by `get_train_dataloader`)."""

    def __init__(self, *args, **kwargs):
        self._train_stream: StreamingLoader | None = None  # the streaming training loader (its position is saved)
        self._resuming_from: str | None = None  # the checkpoint this train() resumes from
        super().__init__(*args, **kwargs)

    def prepare_data_resume(self, resume_from_checkpoint) -> None:
        """At the start of train(): remember the checkpoint the stream resumes from."""
        self._resuming_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        if isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            # The stream continues from each reader's saved position (get_train_dataloader); Trainer's own resume
            # would replay the batches before the checkpoint through the readers.
            self.args.ignore_data_skip = True

    def _get_train_sampler(self, *args, **kwargs):
        dataset = args[0] if args else kwargs.get("train_dataset", self.train_dataset)
        dataset = dataset if dataset is not None else self.train_dataset
        if isinstance(dataset, ImageTextDataset):  # each item knows its epoch: its draws are the same on resume
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSampler(len(dataset), seed, shuffle=self.recipe_args.shuffle_train_data)
        if not self.recipe_args.shuffle_train_data:
            return torch.utils.data.SequentialSampler(dataset)
        return super()._get_train_sampler(*args, **kwargs)

    def get_train_dataloader(self):
        # A streaming dataset splits itself across ranks and workers; accelerate's wrapper would split it again.
        if isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            self._train_stream = StreamingLoader(
                self._streaming_loader(self.train_dataset, self._train_batch_size), self.train_dataset,
                self.args.device,
            )  # fmt: skip
            if self._resuming_from is not None:
                self._train_stream.resume(self._load_data_state(self._resuming_from))
            return self._train_stream
        return super().get_train_dataloader()

    def _streaming_loader(self, dataset, batch_size, collator=None):
        workers = self.args.dataloader_num_workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=KeepStreamState(collator or self.data_collator),
            num_workers=workers,
            drop_last=self.args.dataloader_drop_last,
            pin_memory=self.args.dataloader_pin_memory,
            # Never persistent: each pass sets the stream's epoch and resume position before its workers copy it.
            persistent_workers=False,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers else None,
            # distinct random streams per rank and worker (masking, pairing, augmentation), as Trainer's loaders
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=self.args.process_index) if workers else None,
        )

    def _data_state_path(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, f"data_state.rank{self.args.process_index}.json")

    def _save_data_state(self, checkpoint: str) -> None:
        """Where this rank's streaming readers resume (map-style data needs nothing: the sampler's order is
        replayed by index, without reading)."""
        if self._train_stream is not None:
            with open(self._data_state_path(checkpoint), "w") as f:
                json.dump(self._train_stream.state(), f)

    def _load_data_state(self, checkpoint: str) -> dict:
        path = self._data_state_path(checkpoint)
        if not os.path.isfile(path):
            raise ValueError(
                f"{checkpoint} has no {os.path.basename(path)}: it was not saved by a streaming run on this many "
                "processes, so where the stream stood is unknown. Resume it with the data flags and number of "
                "processes it was trained with."
            )
        with open(path) as f:
            return json.load(f)
