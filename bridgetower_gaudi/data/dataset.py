"""Image-text datasets: decode + transform + tokenize one caption with its image, skip bad records.

`ImageTextDataset` is map-style (random access over concatenated sources; ranks are split by the sampler).
`StreamingImageTextDataset` is iterable (tar shards, `--streaming`): it splits records across distributed ranks and
data-loader workers itself, so that no record is read twice in an epoch.
"""

from __future__ import annotations

import bisect
import copy
import functools
import hashlib
import itertools
import logging
import random

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from .collator import ITM_NEGATIVES
from .images import ImageTransform, decode_image
from .records import BadRecord, RawRecord, SkipLog
from .sources import DataConfigError

logger = logging.getLogger("bridgetower_gaudi")

MAX_CAPTION_CHARS = 2000  # longer captions are cut before tokenizing (they are truncated to max_seq_length anyway)
MAX_CONSECUTIVE_SKIPS = 100


def draw_seed(seed: int, epoch: int, position) -> int:
    """The seed of one example's random draws (its augmentation, its data-set negative, and with its batch-mates
    the batch's masking and ITM pairing), a function of the run's seed, the epoch and the example's place in the data
    order only, never of a process's random state. So a resumed run draws exactly what the uninterrupted run drew,
    whatever the data-loader workers had prefetched or drawn before the kill."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: a valid torch seed


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

    def image(self, record: RawRecord, rng: random.Random | None = None) -> torch.Tensor:
        return self._transform(decode_image(record.image, record.name, self.draft_size), rng)

    @property
    def draft_size(self) -> int | None:
        """The size JPEGs may be decoded down to for this transform (decode_image's draft mode)."""
        return getattr(self.transform, "draft_size", None)

    def _transform(self, image, rng: random.Random | None):
        """The transform, drawing its random choices from `rng` (the example's own) when given."""
        if rng is None or not hasattr(self.transform, "rng"):
            return self.transform(image)
        shared, self.transform.rng = self.transform.rng, rng
        try:
            return self.transform(image)
        finally:
            self.transform.rng = shared

    def __call__(self, record: RawRecord, rng: random.Random | None = None) -> dict:
        example = self.caption(record)
        example["pixel_values"] = self.image(record, rng)
        example["image_id"] = record.image_id
        for number, (image, _) in enumerate(record.extra_images, start=2):
            decoded = decode_image(image, f"{record.name} (image {number})", self.draft_size)
            example[f"pixel_values_{number}"] = self._transform(decoded, rng)
        if record.example_id is not None:
            example["example_id"] = record.example_id
        if self.encode_target is not None:
            example.update(self.encode_target(record))
        return example


class DataSetNegative:
    """An example's data-set negative (ITM), drawn and decoded only when called: the collator calls it for the rows it
    makes negatives, about half of a batch, and the others never decode one. The draw uses the example's own random
    generator after everything else the example drew, so it is the same whenever it is made. Returns (image_id,
    pixel_values); called again, the same pair."""

    def __init__(self, draw):
        self._draw, self._drawn = draw, None

    def __call__(self) -> tuple[str, torch.Tensor]:
        if self._drawn is None:
            self._drawn, self._draw = self._draw(), None
        return self._drawn


class ImageTextDataset(Dataset):
    """Map-style dataset over one or more random-access sources (mixed: every caption of every source is one
    example). A bad record is logged and replaced by the next readable one, so batches keep their shape.

    `itm_negatives="dataset"` adds to every example a random other image of the data set (`false_image`, a
    DataSetNegative), as the official dataset's `draw_false_image`; the collator decides which examples use it, and
    only those decode it.

    Items are asked for by position: `epoch * len(self) + index` (EpochSampler, the training order) or a plain
    index (epoch 0: evaluation, Subset). Every random draw of an item comes from `draw_seed(seed, epoch, index)`
    (`draw_seed` in the example: its batch's masking and pairing), so the data a resumed run sees is exactly the
    uninterrupted run's, with any number of workers."""

    def __init__(
        self,
        sources,
        builder: ExampleBuilder,
        skip_log: SkipLog | None = None,
        itm_negatives: str = "in_batch",
        seed: int = 0,
    ):
        if itm_negatives not in ITM_NEGATIVES:
            raise DataConfigError(f"--itm_negatives {itm_negatives!r}: choose one of {ITM_NEGATIVES}.")
        self.sources, self.builder = list(sources), builder
        self.skip_log = skip_log or SkipLog()
        self.itm_negatives, self.seed = itm_negatives, seed
        self.limit: int | None = None  # first(n): only the first n records
        self.offsets = [0]
        for source in self.sources:
            self.offsets.append(self.offsets[-1] + len(source))
        if len(self) == 0:
            names = ", ".join(getattr(s, "name", "?") for s in self.sources)
            raise DataConfigError(f"no records in {names}: {self.skip_log.report()}.")

    def __len__(self) -> int:
        return self.offsets[-1] if self.limit is None else min(self.limit, self.offsets[-1])

    def first(self, count: int) -> ImageTextDataset:
        """The same dataset over its first `count` records only (`--max_train_samples`): unlike a Subset, still
        asked for by epoch and index (EpochSampler), and replacements and negatives come from those records too."""
        limited = copy.copy(self)
        limited.limit = count
        return limited

    def record(self, index: int) -> RawRecord:
        number = bisect.bisect_right(self.offsets, index) - 1
        return self.sources[number][index - self.offsets[number]]

    def image_id(self, index: int) -> str | None:
        """The image of record `index` without reading it (to count a bad image once for all its captions)."""
        number = bisect.bisect_right(self.offsets, index) - 1
        entries = getattr(self.sources[number], "entries", None)
        return entries[index - self.offsets[number]][2] if entries is not None else None

    def _skip(self, bad: BadRecord, index: int, at: str) -> None:
        self.skip_log.record(bad, record=index, image=self.image_id(index), at=at)

    def _example(self, index: int, rng: random.Random, at: str) -> dict:
        example = self.builder(self.record(index), rng)
        if self.itm_negatives == "dataset":  # decoded by the collator, for the rows it makes negatives only
            example["false_image"] = DataSetNegative(functools.partial(self._other_image, example, rng, at))
        return example

    def _other_image(self, example: dict, rng: random.Random, at: str) -> tuple[str, torch.Tensor]:
        """A random image of the data set other than the example's (its own if ten draws find none readable)."""
        for draw in range(10):
            index = rng.randrange(len(self))
            try:
                record = self.record(index)
                if record.image_id != example["image_id"]:
                    return record.image_id, self.builder.image(record, rng)
            except BadRecord as bad:
                self._skip(bad, index, f"{at}/negative{draw}")
        return example["image_id"], example["pixel_values"]

    def __getitem__(self, position: int) -> dict:
        epoch, index = divmod(position, len(self))
        seed = draw_seed(self.seed, epoch, index)
        rng = random.Random(seed)
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            at = f"{epoch}/{index}/{attempt}"
            current = (index + attempt) % len(self)
            try:
                example = self._example(current, rng, at)
                example["draw_seed"] = seed
                return example
            except BadRecord as bad:
                self._skip(bad, current, at)
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_SKIPS} records in a row from index {index} were unreadable: "
            f"{self.skip_log.report()}. Check the data source."
        )

    def check_readable(self, probe: int = 16) -> None:
        check_readable(self.sources, self.builder, probe)


class EpochSampler(Sampler):
    """The training order of an ImageTextDataset: a permutation per epoch (seeded by seed and epoch; file order
    without `shuffle`), given as positions `epoch * size + index`, so each item knows its epoch (see
    ImageTextDataset) even in persistent data-loader workers. `set_epoch` is called by the trainer's loader."""

    def __init__(self, size: int, seed: int, shuffle: bool = True):
        self.size, self.seed, self.shuffle, self.epoch = size, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = range(self.size)
        return iter([self.epoch * self.size + index for index in order])


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


STREAM_STATE = "stream_state"  # in a streamed example and batch: where its reader resumes after it


def shuffle_blocks(records, size: int, block_seed, start, first_block: int = 0, taken: int = 0):
    """A stream's shuffle: blocks of `size` consecutive records (item, position after it), each put in a random order
    seeded by `block_seed(block number)`; yields (item, where the stream resumes after it, the block). A resume
    re-reads the current block from its start (`start`: the block's first position) without decoding it, and drops
    the `taken` records it had already given. Unlike a rolling shuffle buffer, whose contents would have to be saved
    in each checkpoint, a block is found again from one position. `size` 0 or 1: the stream's own order."""
    number, size = first_block, max(1, size)
    while True:
        block = list(itertools.islice(records, size))
        if not block:
            return
        order = list(range(len(block)))
        if size > 1:
            random.Random(block_seed(number)).shuffle(order)
        for place, index in enumerate(order, start=1):
            if place > taken:
                yield block[index][0], {"block_start": start, "block": number, "taken": place}, block
        start, number, taken = block[-1][1], number + 1, 0


class StreamingImageTextDataset(IterableDataset):
    """Iterable dataset over streaming sources (each with `iter_positions(shard, num_shards, start, order_seed)`).

    Reader k of K = world_size * num_workers (k = rank * num_workers + worker slot) reads shard k of every source,
    so each record is read exactly once per epoch across workers and ranks. With `shuffle_block` > 1 (training) the
    shards come in a new order each epoch (`order_seed`) and records in shuffled blocks of that many (see
    shuffle_blocks); evaluation reads in file order. With `itm_negatives="dataset"` the negative image is a random
    other record of the current block (decoded for it, as the map-style dataset does): found again on resume.

    Every example carries its reader's position after it (STREAM_STATE: epoch, source, its block's start in the
    source, records of the block taken, records read) and draws its randomness from `draw_seed(seed, epoch,
    reader/count)`. StreamingLoader keeps the position of each reader's last consumed batch; a resumed run sets
    `start` and every reader continues from there (a tar shard from the byte where its block starts), worker slots
    rotated so that the batches come in the same order."""

    def __init__(
        self,
        sources,
        builder: ExampleBuilder,
        skip_log: SkipLog | None = None,
        itm_negatives="in_batch",
        rank: int | None = None,
        world_size: int | None = None,
        seed: int = 0,
        shuffle_block: int = 0,
    ):
        self.sources, self.builder = list(sources), builder
        self.skip_log = skip_log or SkipLog()
        self.itm_negatives, self.rank, self.world_size = itm_negatives, rank, world_size
        self.seed, self.shuffle_block = seed, shuffle_block
        self.epoch = 0
        self.start: dict | None = None  # where a resumed epoch starts: StreamingLoader.resume

    def __iter__(self):
        # Not a generator itself: the position is read now, when the loader starts, not at the first record.
        rank, world_size = distributed_position(self.rank, self.world_size)
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        start = self.start or {}
        num_readers = world_size * num_workers
        if start and (start["num_readers"], start["shuffle_block"]) != (num_readers, self.shuffle_block):
            raise DataConfigError(
                f"the checkpoint's streaming position was saved with {start['num_readers']} readers (processes x "
                f"data-loader workers) and --stream_shuffle_block {start['shuffle_block']}; this run has "
                f"{num_readers} and {self.shuffle_block}: resume with the same number of processes, "
                "--dataloader_num_workers and --stream_shuffle_block."
            )
        reader = rank * num_workers + (worker_id + start.get("first_slot", 0)) % num_workers
        return self._read(reader, num_readers, start.get("readers", {}).get(str(reader)), self.epoch)

    def _read(self, reader: int, num_readers: int, position: dict | None, epoch: int):
        first, count = (position["source"], position["count"]) if position else (0, 0)
        shuffled = self.shuffle_block > 1
        for number in range(first, len(self.sources)):
            resume = position if position and number == first else {"block_start": None, "block": 0, "taken": 0}
            order_seed = draw_seed(self.seed, epoch, f"order/{number}") if shuffled else None
            records = self.sources[number].iter_positions(reader, num_readers, resume["block_start"], order_seed)
            block_seed = lambda block, number=number: draw_seed(self.seed, epoch, f"block/{number}/{reader}/{block}")
            blocks = shuffle_blocks(records, self.shuffle_block, block_seed, resume["block_start"], resume["block"],
                                    resume["taken"])  # fmt: skip
            for item, place, block in blocks:
                count += 1
                at = f"{epoch}/{reader}/{count}"
                if isinstance(item, BadRecord):
                    self.skip_log.record(item, at=at)
                    continue
                seed = draw_seed(self.seed, epoch, f"{reader}/{count}")
                rng = random.Random(seed)
                try:
                    example = self.builder(item, rng)
                except BadRecord as bad:
                    self.skip_log.record(bad, image=item.image_id, at=at)
                    continue
                if self.itm_negatives == "dataset":
                    draw = functools.partial(self._other_image, example, block, rng, at)
                    example["false_image"] = DataSetNegative(draw)
                example["draw_seed"] = seed
                example[STREAM_STATE] = {"reader": reader, "epoch": epoch, "source": number, "count": count, **place}
                yield example

    def _other_image(self, example: dict, block: list, rng: random.Random, at: str) -> tuple[str, torch.Tensor]:
        """A random other image of the block (its own when ten draws find none readable, or the block has no other
        image, as in file order: the collator then pairs within the batch)."""
        others = [item for item, _ in block if isinstance(item, RawRecord) and item.image_id != example["image_id"]]
        for draw in range(min(10, len(others))):
            record = rng.choice(others)
            try:
                return record.image_id, self.builder.image(record, rng)
            except BadRecord as bad:
                self.skip_log.record(bad, image=record.image_id, at=f"{at}/negative{draw}")
        return example["image_id"], example["pixel_values"]


class KeepStreamState:
    """A collator that also passes on the stream position of the batch's last example (the reader's position after
    the batch; each data-loader worker makes whole batches from its own reader)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        batch[STREAM_STATE] = examples[-1][STREAM_STATE]
        return batch


_HOST_GROUP: dict = {}


def host_group():
    """A process group whose collectives run on host (CPU) tensors: None for the default group when it is gloo, a
    gloo group made once otherwise (every rank creates it at the same point: the first streaming loader), False
    when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return False
    if torch.distributed.get_backend() == "gloo":
        return None
    if "group" not in _HOST_GROUP:
        _HOST_GROUP["group"] = torch.distributed.new_group(backend="gloo")
    return _HOST_GROUP["group"]


class StreamingLoader:
    """What the trainer iterates for a streaming dataset: the DataLoader's batches, with

    - the same number of batches on every rank: before each batch the ranks agree (one all-reduce of one flag in
      host memory over gloo: no device sync, see `_all_have_a_batch`) that all of them still have one, and the
      first rank to run out ends the epoch for all (a common cap: batches the longer ranks had left are not used in
      that epoch). Unevenly sized shards would otherwise give the ranks
      different step counts, and the collectives of the longer ranks' extra steps would wait for ever;
    - the position of each reader's last consumed batch (`state()`, saved with each checkpoint; `resume(state)`
      continues from there: no batch is read twice or skipped, and nothing is replayed).

    A training loader moves to the next epoch (new draws) after each pass; an evaluation one (`training=False`)
    draws the same every time."""

    def __init__(self, loader, dataset: StreamingImageTextDataset, device=None, training: bool = True):
        self.loader, self.dataset, self.device, self.training = loader, dataset, device, training
        self.workers = max(1, loader.num_workers)
        self.epoch, self.readers, self.next_slot, self._start = 0, {}, 0, None
        self.resumed_at_epoch_end = False  # resumed from a checkpoint saved after an epoch's last batch

    def state(self) -> dict:
        rank, world_size = distributed_position(self.dataset.rank, self.dataset.world_size)
        return {"epoch": self.epoch, "readers": dict(self.readers), "next_slot": self.next_slot,
                "num_readers": world_size * self.workers, "shuffle_block": self.dataset.shuffle_block}  # fmt: skip

    def resume(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.readers, self.next_slot = dict(state["readers"]), state["next_slot"]
        self._start = {"readers": self.readers, "first_slot": self.next_slot, "num_readers": state["num_readers"],
                       "shuffle_block": state["shuffle_block"]}  # fmt: skip

    def _all_have_a_batch(self, have: bool) -> bool:
        """Whether every rank has this batch: a MIN over the ranks of a flag in host memory, through a gloo group (the
        default one when it is gloo): nothing on the device waits for it, so the training step never syncs with the
        host for it (an all-reduce on the device plus `.item()` would flush the step's graph on Gaudi every batch)."""
        group = host_group()
        if group is False:
            return have
        flag = torch.tensor([1 if have else 0], dtype=torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN, group=group)
        return flag.numpy()[0] == 1  # host memory: numpy reads it without a dispatched op

    def __iter__(self):
        resumed = self._start is not None
        random_state = torch.get_rng_state() if resumed else None
        batches = yield from self._pass()
        if resumed and batches == 0 and self.training:
            # Saved after the last batch of an epoch, before the pass ended: the resumed pass is empty (Trainer would
            # stop there, short of --max_steps); the next epoch follows, as in the uninterrupted run. That run made
            # the next epoch's iterator (which draws the loader's seed) after the checkpoint: the empty pass's draw
            # is undone, and the trainer keeps the random state as it is then (see trainer.ResumeRandomState).
            torch.set_rng_state(random_state)
            self.resumed_at_epoch_end = True
            yield from self._pass()

    def _pass(self):
        """One pass over the stream (from the resumed position, if any); returns the number of batches."""
        batches = 0
        self.dataset.epoch, self.dataset.start = self.epoch, self._start
        iterator = iter(self.loader)
        self.dataset.start, self._start = None, None  # the loader's readers have it (workers: their own copy)
        while True:
            batch = next(iterator, None)
            if not self._all_have_a_batch(batch is not None):
                if batch is not None:
                    logger.warning(
                        "streamed data: another rank ran out of batches, so this one ends its %s pass too with "
                        "batches left (the ranks' shards are uneven: give each rank as many samples, e.g. more, "
                        "equal shards than ranks x data-loader workers)", "training" if self.training else "evaluation"
                    )  # fmt: skip
                break
            state = batch.pop(STREAM_STATE)
            self.readers[str(state["reader"])] = state
            self.next_slot = (state["reader"] % self.workers + 1) % self.workers
            batches += 1
            yield batch
        self.epoch, self.readers, self.next_slot = self.epoch + int(self.training), {}, 0
        return batches
