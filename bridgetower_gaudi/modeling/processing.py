"""BridgeTowerProcessor: images through the same `ImageTransform` that training and evaluation use, text padded to a
fixed length by default, so every batch has one shape (HPU graphs and compiled graphs recompile on each new shape).

transformers' `BridgeTowerImageProcessor` is kept as the saved settings (its `size["shortest_edge"]`, and the
processor's `image_transform`), not for the pixels: its resize caps the long edge at 1333/800 of the short one and
rounds to multiples of 32, so on elongated images it differs from the official training transform. Where its resize
and ours agree (aspect ratio under 1333/800, sizes multiples of 32) the pixels are the same.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import BatchEncoding
from transformers import BridgeTowerProcessor as HFBridgeTowerProcessor

from ..data.images import ImageTransform, to_rgb

DEFAULT_TEXT_MAX_LENGTH = 50  # the paper's pre-training caption length


class BridgeTowerProcessor(HFBridgeTowerProcessor):
    """Any tokenizer (RoBERTa or BERT) + BridgeTowerImageProcessor settings; `text_max_length` and `image_transform`
    ("clip": resize + centre crop, as pre-training; "blip": squash, as fine-tuned tasks evaluate) are saved with it."""

    tokenizer_class = "AutoTokenizer"
    optional_attributes = [*HFBridgeTowerProcessor.optional_attributes, "text_max_length", "image_transform"]

    def __init__(
        self,
        image_processor,
        tokenizer,
        text_max_length: int = DEFAULT_TEXT_MAX_LENGTH,
        image_transform: str = "clip",
        **kwargs,
    ):
        super().__init__(image_processor, tokenizer)
        if image_transform not in ("clip", "blip"):
            raise ValueError(f"image_transform={image_transform!r}: inference uses 'clip' or 'blip'.")
        self.text_max_length = text_max_length
        self.image_transform = image_transform

    @property
    def image_size(self) -> int:
        size = self.image_processor.size
        return size.get("shortest_edge") or size.get("height")

    def preprocess_images(self, images) -> dict:
        """pixel_values (and an all-ones pixel_mask: every image fills the square) for one image or a list."""
        images = images if isinstance(images, (list, tuple)) else [images]
        transform = ImageTransform(self.image_size, self.image_transform)
        rgb = [
            to_rgb(image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))) for image in images
        ]
        pixel_values = torch.stack([transform(image) for image in rgb])
        pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long)
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask}

    def __call__(self, images=None, text=None, padding="max_length", truncation=True, max_length=None, **kwargs):
        """As transformers' processor, but text defaults to `padding="max_length"` at `text_max_length` tokens
        (pass `padding="longest"` for dynamic shapes) and images go through `ImageTransform`. Returns torch
        tensors."""
        kwargs.pop("return_tensors", None)
        encoding = {}
        if text is not None:
            encoding.update(
                self.tokenizer(
                    text,
                    padding=padding,
                    truncation=truncation,
                    max_length=max_length or self.text_max_length,
                    return_tensors="pt",
                    **kwargs,
                )
            )
        if images is not None:
            encoding.update(self.preprocess_images(images))
        return BatchEncoding(encoding, tensor_type="pt")
