"""BridgeTowerProcessor: transformers' preprocessing (shortest-edge resize, center crop, CLIP mean / std,
pixel_mask) with text padded to a fixed length by default, so every batch has one shape (HPU graphs and compiled
graphs recompile on each new shape)."""

from __future__ import annotations

from transformers import BridgeTowerProcessor as HFBridgeTowerProcessor

DEFAULT_TEXT_MAX_LENGTH = 50  # the paper's pre-training caption length


class BridgeTowerProcessor(HFBridgeTowerProcessor):
    """Any tokenizer (RoBERTa or BERT) + BridgeTowerImageProcessor; `text_max_length` is saved with the processor."""

    tokenizer_class = "AutoTokenizer"
    optional_attributes = [*HFBridgeTowerProcessor.optional_attributes, "text_max_length"]

    def __init__(self, image_processor, tokenizer, text_max_length: int = DEFAULT_TEXT_MAX_LENGTH, **kwargs):
        super().__init__(image_processor, tokenizer)
        self.text_max_length = text_max_length

    def __call__(self, images=None, text=None, padding="max_length", truncation=True, max_length=None, **kwargs):
        """As transformers' processor, but text defaults to `padding="max_length"` at `text_max_length` tokens.
        Pass `padding="longest"` for dynamic shapes."""
        return super().__call__(
            images=images,
            text=text,
            padding=padding,
            truncation=truncation,
            max_length=max_length or self.text_max_length,
            **kwargs,
        )
