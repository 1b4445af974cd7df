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


@pytest.mark.parametrize("mode", ["clip", "blip", "blip_randaug_wc", "blip_randaug_wohf"])
def test_images_cross_the_loader_as_uint8_and_normalise_on_the_device_to_the_float_path(mode):
    import numpy as np
    from PIL import Image

    from bridgetower_gaudi.data.images import ImageTransform, normalize_pixels

    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (50, 40, 3), dtype=np.uint8))
    as_float = ImageTransform(32, mode, seed=5)(image)
    as_uint8 = ImageTransform(32, mode, seed=5, uint8=True)(image)  # the same augmentation draws
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == as_float.shape == (3, 32, 32)
    assert as_uint8.nbytes * 4 == as_float.nbytes
    torch.testing.assert_close(normalize_pixels(as_uint8[None])[0], as_float, rtol=0, atol=1e-6)
    assert normalize_pixels(as_float) is as_float  # float input is already normalised


def test_the_training_data_is_uint8_and_the_model_sees_the_float_path():
    from bridgetower_gaudi import BridgeTowerModel
    from bridgetower_gaudi.data.images import normalize_pixels
    from tests.conftest import tiny_config

    example = _negatives_dataset()[0]
    assert example["pixel_values"].dtype == torch.uint8
    model = BridgeTowerModel(tiny_config()).eval()
    pixels = example["pixel_values"][None]
    if pixels.shape[-1] != model.config.vision_config.image_size:
        pixels = torch.nn.functional.interpolate(pixels.float(), size=model.config.vision_config.image_size).byte()
    ours = model.encode_image(pixels).hidden_states[-1]
    reference = model.encode_image(normalize_pixels(pixels)).hidden_states[-1]
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
