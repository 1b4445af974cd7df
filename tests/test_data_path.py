"""The data path does only the work it must (issue 19): data-set negatives are decoded only for the rows that use
them, images cross the loader as uint8 and are normalised on the device, captions are padded to the smallest length
bucket that fits."""

from __future__ import annotations

import pytest
import torch

from bridgetower_gaudi.data import DataArguments, PretrainingCollator, synthetic_tokenizer
from bridgetower_gaudi.data import dataset as dataset_module
from bridgetower_gaudi.data.builder import build_dataset


def _negatives_dataset(size: int = 64):
    args = DataArguments(synthetic_train_size=size, itm_negatives="dataset", max_seq_length=16)
    return build_dataset(args, synthetic_tokenizer(), image_size=32, seed=3)


def test_data_set_negatives_are_decoded_only_for_the_negative_rows(monkeypatch):
    dataset = _negatives_dataset()
    collator = PretrainingCollator(synthetic_tokenizer(), itm_negatives="dataset", reuse_image_features=True)
    decoded = []
    decode = dataset_module.decode_image
    monkeypatch.setattr(dataset_module, "decode_image", lambda *a, **k: decoded.append(a[1]) or decode(*a, **k))
    positions = list(range(100, 108))  # epoch 1: its own draws
    lazy = collator([dataset[p] for p in positions])
    assert len(decoded) == 8 + 4  # every example's image, and a data-set image for the 4 negatives only
    # The same images as drawing every example's negative up front (the old path): each draws from its own generator.
    eager_examples = [dataset[p] for p in positions]
    for example in eager_examples:
        example["false_image"]()
    eager = collator(eager_examples)
    assert len(decoded) == 8 + 4 + 16
    assert lazy.keys() == eager.keys()
    for key in lazy:
        assert torch.equal(lazy[key], eager[key]), key
