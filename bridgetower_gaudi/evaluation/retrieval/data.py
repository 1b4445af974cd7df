"""A retrieval split as the evaluation reads it: images decoded when read, tokenized captions, each caption's image;
from a Karpathy file or the synthetic source."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ...data.dataset import ExampleBuilder
from ...data.records import RawRecord, SkipLog
from ...data.sources import DataConfigError, KarpathySource
from ...data.synthetic import TEMPLATES, draw_shape, synthetic_attributes
from .cache import digest, tensor_bytes
from .metrics import RetrievalError


class RecordImages(Dataset):
    """Images of records, decoded and transformed when read (by the tower's DataLoader workers)."""

    def __init__(self, records: list[RawRecord], builder: ExampleBuilder):
        self.records, self.builder = records, builder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.builder.image(self.records[index])


def image_identity(image) -> str:
    """What an image's cached states depend on: a file's path, size and modification time, or in-memory content."""
    if isinstance(image, (str, os.PathLike)):
        try:
            stat = os.stat(image)
        except OSError:
            return f"{image}:missing"
        return f"{image}:{stat.st_size}:{stat.st_mtime_ns}"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(image)).hexdigest()
    if isinstance(image, torch.Tensor):
        return hashlib.sha256(tensor_bytes(image)).hexdigest()
    if hasattr(image, "tobytes"):  # a PIL image
        return hashlib.sha256(f"{image.mode}:{image.size}".encode() + image.tobytes()).hexdigest()
    raise RetrievalError(f"cannot identify an image of type {type(image).__name__} for the cache.")


@dataclass
class RetrievalData:
    """A retrieval split: images (transformed when read), tokenized captions, each caption's image, and `key`,
    the identity of the images and their transform (the cache's data key)."""

    images: Sequence
    captions: dict[str, torch.Tensor]
    caption_to_image: torch.Tensor
    key: str
    image_ids: list[str]

    @classmethod
    def from_records(cls, records: Sequence[RawRecord], builder: ExampleBuilder) -> RetrievalData:
        """Records hold one caption each (as every source yields them); captions are grouped by `image_id`, images
        numbered in order of first appearance."""
        index_of: dict[str, int] = {}
        image_records, caption_to_image, encoded = [], [], []
        for record in records:
            if record.image_id not in index_of:
                index_of[record.image_id] = len(image_records)
                image_records.append(record)
            caption_to_image.append(index_of[record.image_id])
            encoded.append(builder.caption(record))
        if not encoded:
            raise DataConfigError("no captions to evaluate retrieval on.")
        captions = {name: torch.stack([e[name] for e in encoded]) for name in ("input_ids", "attention_mask")}
        transform = builder.transform
        key = digest(transform.mode, transform.image_size, *(image_identity(r.image) for r in image_records))
        return cls(
            images=RecordImages(image_records, builder),
            captions=captions,
            caption_to_image=torch.tensor(caption_to_image),
            key=key,
            image_ids=[r.image_id for r in image_records],
        )


def karpathy_records(data_file: str, image_root: str | None, split: str) -> list[RawRecord]:
    """The records (one per caption, images as paths) of one split of a Karpathy file; a malformed entry is an error
    here (evaluating on part of a test split would give wrong numbers)."""
    skip_log = SkipLog()
    try:
        source = KarpathySource(data_file, image_root, [split], skip_log)
        if skip_log.entries():
            raise DataConfigError(f"{data_file}: malformed entries in the file: {skip_log.report()}.")
    finally:
        skip_log.discard()
    if len(source) == 0:
        raise DataConfigError(f"{data_file} has no images in split {split!r}: check --split (test, val, ...).")
    return [source[index] for index in range(len(source))]


def synthetic_records(num_images: int, captions_per_image: int, seed: int, image_size: int = 64) -> list[RawRecord]:
    """`num_images` images of the synthetic source, each with `captions_per_image` captions: its colour, shape and
    position in each caption template in turn (the templates repeat past three captions)."""
    records = []
    for index in range(num_images):
        attributes = synthetic_attributes(seed, index)
        image = draw_shape(attributes, image_size)
        for number in range(captions_per_image):
            caption = TEMPLATES[number % len(TEMPLATES)].format(**attributes)
            records.append(RawRecord(image, caption, f"synthetic:{index}", f"synthetic[{index}]#{number}"))
    return records
