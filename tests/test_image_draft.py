"""JPEG draft-mode decoding (decode_image's `draft_size`): the clip / blip transforms give what a full decode gives,
exactly for COCO-sized photos and within a stated tolerance for large ones; the random-crop transforms never draft."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bridgetower_gaudi.data.images import CLIP_STD, ImageTransform, decode_image

MEAN_TOLERANCE, MAX_TOLERANCE = 1.0, 8.0  # in 0-255 pixel levels, after the resize to 288


def _photo_like_jpeg(size, seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    smooth = Image.fromarray(rng.integers(0, 255, size=(12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    pixels = np.asarray(smooth).astype(np.int16) + rng.integers(-20, 20, size=(size[1], size[0], 3))  # texture
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _pixel_levels(tensor: torch.Tensor) -> torch.Tensor:
    return tensor * torch.tensor(CLIP_STD)[:, None, None] * 255


@pytest.mark.parametrize("mode", ["clip", "blip"])
@pytest.mark.parametrize("size", [(640, 480), (1280, 960), (960, 1280)])
def test_draft_decoding_stays_within_tolerance(mode, size):
    transform = ImageTransform(288, mode)
    assert transform.draft_size == 288
    for seed in range(3):
        data = _photo_like_jpeg(size, seed)
        full = transform(decode_image(data, "full"))
        drafted = transform(decode_image(data, "drafted", transform.draft_size))
        assert drafted.shape == full.shape == (3, 288, 288)
        difference = (_pixel_levels(drafted) - _pixel_levels(full)).abs()
        if size == (640, 480):  # too small to halve at 288: decoded at full scale, the same pixels
            assert torch.equal(drafted, full)
        assert difference.mean() < MEAN_TOLERANCE and difference.max() < MAX_TOLERANCE


def test_drafting_never_goes_below_the_size_and_keeps_other_modes_working():
    assert decode_image(_photo_like_jpeg((1280, 960), 0), "x", 288).size == (640, 480)  # halved, both sides >= 288
    assert decode_image(_photo_like_jpeg((2400, 1800), 0), "x", 288).size == (600, 450)  # a quarter
    grey = decode_image(_photo_like_jpeg((1280, 960), 0, mode="L"), "grey", 288)
    assert grey.mode == "RGB" and grey.size == (640, 480)
    png = io.BytesIO()
    Image.new("RGB", (1280, 960)).save(png, "PNG")
    assert decode_image(png.getvalue(), "png", 288).size == (1280, 960)  # only JPEG decoders scale


@pytest.mark.parametrize("mode", ["blip_randaug_wc", "blip_randaug_wohf"])
def test_random_crop_transforms_get_every_pixel(mode):
    assert ImageTransform(288, mode).draft_size is None
