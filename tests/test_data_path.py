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
    collator = PretrainingCollator(synthetic_tokenizer(), itm_negatives="dataset")
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


def test_length_buckets_cut_each_batch_to_the_smallest_bucket_and_real_tokens_see_the_same_outputs():
    from bridgetower_gaudi import BridgeTowerForPreTraining
    from bridgetower_gaudi.data.collator import PadToLengthBucket
    from tests.conftest import tiny_config

    dataset = _negatives_dataset()
    collator = PretrainingCollator(synthetic_tokenizer(), itm_negatives="in_batch")
    examples = [dataset[p] for p in range(8)]
    full = collator(examples)
    cut = PadToLengthBucket(collator, [4, 12, 16])(examples)
    longest = int(full["attention_mask"].sum(1).max())
    assert full["input_ids"].shape[1] == 16 and longest <= 12
    length = 12 if longest > 4 else 4
    assert cut["input_ids"].shape[1] == cut["labels"].shape[1] == length
    for key in ("input_ids", "attention_mask", "labels"):  # the same batch (same masking), shorter
        assert torch.equal(cut[key], full[key][:, :length]), key
        assert not full[key][:, length:].ne(full[key][0, -1]).any() or key == "labels"
    assert (full["labels"][:, length:] == -100).all()
    for key in ("pixel_values", "itm_labels", "itm_image_index"):
        assert torch.equal(cut[key], full[key]), key

    torch.manual_seed(0)
    model = BridgeTowerForPreTraining(tiny_config(pretraining_objectives=["mlm", "itm"])).eval()
    size = model.config.vision_config.image_size
    for batch in (full, cut):
        batch["pixel_values"] = torch.nn.functional.interpolate(batch["pixel_values"].float(), size=size).byte()
    with torch.no_grad():
        out_full, out_cut = model(**full), model(**cut)
        pair = lambda b: model.bridgetower(b["input_ids"], b["attention_mask"], pixel_values=b["pixel_values"])
        pair_full, pair_cut = pair(full), pair(cut)
    real = cut["attention_mask"].bool()
    text_full = pair_full.text_features[:, :length][real]
    torch.testing.assert_close(pair_cut.text_features[real], text_full, rtol=0, atol=1e-5)
    torch.testing.assert_close(pair_cut.image_features, pair_full.image_features, rtol=0, atol=1e-5)
    torch.testing.assert_close(pair_cut.pooler_output, pair_full.pooler_output, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_cut.itm_logits, out_full.itm_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_cut.mlm_loss, out_full.mlm_loss, rtol=0, atol=1e-5)


def test_length_buckets_are_checked_against_max_seq_length():
    from bridgetower_gaudi.data.sources import DataConfigError

    assert DataArguments(length_buckets="50,16,24,32").bucket_lengths == [16, 24, 32, 50]
    with pytest.raises(DataConfigError, match="between 2 and --max_seq_length 50"):
        DataArguments(length_buckets="16,64")
    with pytest.raises(DataConfigError, match="comma-separated whole numbers"):
        DataArguments(length_buckets="16;24")


def test_a_bucketed_training_run_steps_without_host_syncs(tmp_path):
    from tests.host_sync_run import count_step_syncs

    steps, _ = count_step_syncs("pretrain", ["--max_steps", "2", "--length_buckets", "8,12,16"], str(tmp_path))
    assert [step.syncs for step in steps] == [0, 0], [step.report() for step in steps]


def test_loader_workers_default_from_the_cores_per_local_device_on_accelerators_only(monkeypatch):
    from types import SimpleNamespace

    from bridgetower_gaudi.data.builder import default_loader_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(40)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")

    def resolved(given=(), accelerator=True, workers=0):
        args = SimpleNamespace(dataloader_num_workers=workers, dataloader_persistent_workers=False,
                               dataloader_prefetch_factor=None)  # fmt: skip
        default_loader_workers(args, set(given), accelerator)
        return args.dataloader_num_workers, args.dataloader_persistent_workers, args.dataloader_prefetch_factor

    assert resolved() == (4, True, 4)  # 40 cores / 8 devices, one left to the training process; persistent
    assert resolved(accelerator=False) == (0, False, None)  # CPU: the workers would take the step's cores
    assert resolved(given={"dataloader_num_workers"}, workers=2) == (2, True, 4)  # the user's flag wins
    assert resolved(given={"dataloader_num_workers"}) == (0, False, None)
    assert resolved(given={"dataloader_persistent_workers"}) == (4, False, 4)
