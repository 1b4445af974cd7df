"""What users pass the pipeline (captions, image files or images) as the tensors the towers read, with a clear
error for a caption too long for the model, an unreadable image or a missing masked word."""

from __future__ import annotations

import os

import torch

from ..data.images import ImageTransform, decode_image, evaluation_transform
from ..data.records import BadRecord
from .loading import PipelineError

# The spellings of a masked word people type; each becomes the checkpoint tokenizer's own mask token.
MASK_SPELLINGS = ("<mask>", "[MASK]")


class PipelineInputs:
    """Captions padded to one length (`max_length`, at most the model's `text_positions`) and images through the
    evaluation transform of what the checkpoint trained with (run.py records it: clip after pre-training, blip, the
    squash, after the fine-tuning transforms)."""

    def __init__(self, tokenizer, config, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.transform = ImageTransform(
            config.vision_config.image_size, evaluation_transform(getattr(config, "image_transform", "clip"))
        )
        self.position_limit = config.text_positions
        if max_length is not None and max_length > self.position_limit:
            raise PipelineError(
                f"--max-seq-length (max_length) {max_length}: the model has {self.position_limit} text positions; "
                "use at most that."
            )
        self.max_length = max_length or min(tokenizer.model_max_length, self.position_limit)

    def tokenize(self, texts: list[str]) -> dict:
        """{"input_ids", "attention_mask"} padded to `max_length`; a longer text is an error naming the fix."""
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
        for text, length in zip(texts, lengths, strict=True):
            if length > self.max_length:
                fix = (
                    f"pass --max-seq-length (max_length) up to {self.position_limit}"
                    if self.max_length < self.position_limit
                    else "shorten it"
                )
                raise PipelineError(
                    f"caption {text!r} has {length} tokens; this model reads at most {self.max_length}: {fix}."
                )
        return self.tokenizer(
            texts, padding="max_length", max_length=self.max_length, truncation=False, return_tensors="pt"
        )

    def decode(self, image, name: str) -> torch.Tensor:
        """One image (a path, bytes or a PIL image) as transformed pixels; BadRecord when it cannot be read."""
        return self.transform(decode_image(image, name, self.transform.draft_size))

    def pixels(self, images) -> torch.Tensor:
        """The images, stacked; an unreadable one is a PipelineError naming it."""
        decoded = []
        for image in images:
            name = image if isinstance(image, (str, os.PathLike)) else "image"
            try:
                decoded.append(self.decode(image, str(name)))
            except BadRecord as error:
                raise PipelineError(f"cannot read image {name!s}: {error}") from None
        return torch.stack(decoded)

    def with_mask_token(self, text: str) -> str:
        """`text` with each typed mask spelling replaced by the tokenizer's mask token; an error when it has none."""
        mask_token = self.tokenizer.mask_token
        for spelling in MASK_SPELLINGS:
            text = text.replace(spelling, mask_token)
        if mask_token not in text:
            raise PipelineError(f"no masked word in {text!r}: write {mask_token} (or <mask>) where the word goes.")
        return text

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id]).strip()
