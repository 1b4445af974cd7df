"""Image-text datasets: decode + transform + tokenize one caption with its image, skip bad records.

`ImageTextDataset` is map-style (random access over concatenated sources; ranks are split by the sampler).
`StreamingImageTextDataset` is iterable (tar shards, `--streaming`): it splits records across distributed ranks and
data-loader workers itself, so that no record is read twice in an epoch.
"""

from __future__ import annotations

import bisect
import itertools
import random

import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .collator import ITM_NEGATIVES
from .images import ImageTransform, decode_image
from .records import BadRecord, RawRecord, SkipLog
from .sources import DataConfigError

MAX_CAPTION_CHARS = 2000  # longer captions are cut before tokenizing (they are truncated to max_seq_length anyway)
MAX_CONSECUTIVE_SKIPS = 100


class ExampleBuilder:
    """RawRecord -> model example (pixel_values, input_ids, attention_mask[, token_type_ids], image_id). For the
    downstream tasks also `pixel_values_2` (a record's second image, NLVR2), `example_id`, and what
    `encode_target(record)` makes of the record's target (e.g. {"labels": tensor})."""

    def __init__(self, tokenizer, transform: ImageTransform, max_seq_length: int = 50, encode_target=None):
        self.tokenizer, self.transform, self.max_seq_length = tokenizer, transform, max_seq_length
        self.encode_target = encode_target

    def caption(self, record: RawRecord) -> dict:
        caption = record.caption
        if not isinstance(caption, str) or not caption.strip():
            raise BadRecord("empty_caption", record.name)
        encoded = self.tokenizer(
            caption.strip()[:MAX_CAPTION_CHARS],
            padding="max_length",
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="pt",
        )
        return {k: v[0] for k, v in encoded.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def image(self, record: RawRecord) -> torch.Tensor:
        return self.transform(decode_image(record.image, record.name))

    def __call__(self, record: RawRecord) -> dict:
        example = self.caption(record)
        example["pixel_values"] = self.image(record)
        example["image_id"] = record.image_id
        for number, (image, _) in enumerate(record.extra_images, start=2):
            example[f"pixel_values_{number}"] = self.transform(decode_image(image, f"{record.name} (image {number})"))
        if record.example_id is not None:
            example["example_id"] = record.example_id
        if self.encode_target is not None:
            example.update(self.encode_target(record))
        return example


class ImageTextDataset(Dataset):
    """Map-style dataset over one or more random-access sources (mixed: every caption of every source is one
    example). A bad record is logged and replaced by the next readable one, so batches keep their shape.

    `itm_negatives="dataset"` adds to every example a random other image of the data set (`false_pixel_values`,
    `false_image_id`), as the official dataset's `draw_false_image`; the collator decides which examples use it."""

    def __init__(
        self, sources, builder: ExampleBuilder, skip_log: SkipLog | None = None, itm_negatives: str = "in_batch"
    ):
        if itm_negatives not in ITM_NEGATIVES:
            raise DataConfigError(f"--itm_negatives {itm_negatives!r}: choose one of {ITM_NEGATIVES}.")
        self.sources, self.builder = list(sources), builder
        self.skip_log = skip_log or SkipLog()
        self.itm_negatives = itm_negatives
        self.offsets = [0]
        for source in self.sources:
            self.offsets.append(self.offsets[-1] + len(source))
        if len(self) == 0:
            names = ", ".join(getattr(s, "name", "?") for s in self.sources)
            raise DataConfigError(f"no records in {names}: {self.skip_log.report()}.")

    def __len__(self) -> int:
        return self.offsets[-1]

    def record(self, index: int) -> RawRecord:
        number = bisect.bisect_right(self.offsets, index) - 1
        return self.sources[number][index - self.offsets[number]]

    def _example(self, index: int) -> dict:
        example = self.builder(self.record(index))
        if self.itm_negatives == "dataset":
            example["false_image_id"], example["false_pixel_values"] = self._other_image(example)
        return example

    def _other_image(self, example: dict) -> tuple[str, torch.Tensor]:
        """A random image of the data set other than the example's (its own if ten draws find none readable)."""
        for _ in range(10):
            try:
                record = self.record(random.randrange(len(self)))
                if record.image_id != example["image_id"]:
                    return record.image_id, self.builder.image(record)
            except BadRecord as bad:
                self.skip_log.record(bad)
        return example["image_id"], example["pixel_values"]

    def __getitem__(self, index: int) -> dict:
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            try:
                return self._example((index + attempt) % len(self))
            except BadRecord as bad:
                self.skip_log.record(bad)
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_SKIPS} records in a row from index {index} were unreadable: "
            f"{self.skip_log.report()}. Check the data source."
        )

    def check_readable(self, probe: int = 16) -> None:
        check_readable(self.sources, self.builder, probe)


def check_readable(sources, builder: ExampleBuilder, probe: int = 16) -> None:
    """Fail at start-up if a source yields nothing readable in its first `probe` records."""
    for number, source in enumerate(sources):
        errors = []
        for item in itertools.islice(source.iter_records(), probe):
            try:
                if isinstance(item, BadRecord):
                    raise item
                builder(item)
                break
            except BadRecord as bad:
                errors.append(str(bad))
        else:
            raise DataConfigError(
                f"source {getattr(source, 'name', number)}: none of its first {len(errors)} records is readable "
                f"(first: {errors[:3]}). Check --image_root and the file paths / columns."
            )


def distributed_position(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StreamingImageTextDataset(IterableDataset):
    """Iterable dataset over streaming sources (each with `iter_records(shard, num_shards)`).

    Reader k of K = world_size * num_workers (k = rank * num_workers + worker id) reads shard k of every source, so
    each record is read exactly once per epoch across workers and ranks. With `itm_negatives="dataset"` the negative
    image comes from a small reservoir of recently read images."""

    def __init__(
        self,
        sources,
        builder: ExampleBuilder,
        skip_log: SkipLog | None = None,
        itm_negatives="in_batch",
        rank: int | None = None,
        world_size: int | None = None,
        reservoir_size: int = 64,
    ):
        self.sources, self.builder = list(sources), builder
        self.skip_log = skip_log or SkipLog()
        self.itm_negatives, self.rank, self.world_size = itm_negatives, rank, world_size
        self.reservoir_size = reservoir_size

    def __iter__(self):
        rank, world_size = distributed_position(self.rank, self.world_size)
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        shard, num_shards = rank * num_workers + worker_id, world_size * num_workers
        reservoir: list[tuple[str, torch.Tensor]] = []
        for source in self.sources:
            for item in source.iter_records(shard, num_shards):
                if isinstance(item, BadRecord):
                    self.skip_log.record(item)
                    continue
                try:
                    example = self.builder(item)
                except BadRecord as bad:
                    self.skip_log.record(bad)
                    continue
                if self.itm_negatives == "dataset":
                    others = [(i, img) for i, img in reservoir if i != example["image_id"]]
                    # none yet (a reader's first records): the collator then takes another image of the batch
                    false = random.choice(others) if others else (example["image_id"], example["pixel_values"])
                    example["false_image_id"], example["false_pixel_values"] = false
                    reservoir.append((example["image_id"], example["pixel_values"]))
                    del reservoir[: -self.reservoir_size]
                yield example
