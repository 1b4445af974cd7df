"""A synthetic image-text source: coloured shapes whose colour, shape and position words can only be predicted from
the image. Deterministic by (seed, index), generated on the fly, no files. It is the default run's data and the
learning tests' data, and it comes with its own word-level tokenizer so nothing needs downloading."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .records import RawRecord
from .sources import MapSource

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom")
TEMPLATES = (
    "a {color} {shape} on the {position}",
    "there is a {color} {shape} at the {position}",
    "the picture shows a {color} {shape} near the {position}",
)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ATTRIBUTE_WORDS = frozenset(COLORS) | frozenset(SHAPES) | frozenset(POSITIONS)


def synthetic_vocabulary() -> list[str]:
    words = {w for template in TEMPLATES for w in template.replace("{", " ").replace("}", " ").split()}
    words -= {"color", "shape", "position"}
    return SPECIAL_TOKENS + sorted(words | ATTRIBUTE_WORDS)


def synthetic_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style word-level tokenizer over the synthetic captions' words ([CLS] caption [SEP])."""
    vocab = {word: index for index, word in enumerate(synthetic_vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
    )


def synthetic_attributes(seed: int, index: int) -> dict:
    rng = np.random.default_rng([seed, index])
    return {
        "color": list(COLORS)[rng.integers(len(COLORS))],
        "shape": SHAPES[rng.integers(len(SHAPES))],
        "position": POSITIONS[rng.integers(len(POSITIONS))],
        "template": TEMPLATES[rng.integers(len(TEMPLATES))],
        "jitter": rng.uniform(-0.06, 0.06, size=2),
        "noise_seed": int(rng.integers(2**31)),
    }


def draw_shape(attributes: dict, size: int = 64) -> Image.Image:
    """A grey noisy canvas with one coloured shape placed by `position`."""
    noise = np.random.default_rng(attributes["noise_seed"]).integers(100, 120, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, mode="RGB")
    centers = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
    cx, cy = (np.array(centers[attributes["position"]]) + attributes["jitter"]) * size
    r = size * 0.22
    color = COLORS[attributes["color"]]
    draw = ImageDraw.Draw(image)
    if attributes["shape"] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif attributes["shape"] == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return image


class SyntheticSource(MapSource):
    """Random-access source of `size` synthetic pairs; one caption per image, image_id = index."""

    def __init__(self, size: int = 10_000, seed: int = 0, image_size: int = 64, name: str = "synthetic"):
        self.size, self.seed, self.image_size, self.name = size, seed, image_size, name

    def __len__(self) -> int:
        return self.size

    def caption(self, index: int) -> str:
        attributes = synthetic_attributes(self.seed, index)
        return attributes["template"].format(**attributes)

    def __getitem__(self, index: int) -> RawRecord:
        attributes = synthetic_attributes(self.seed, index)
        return RawRecord(
            image=draw_shape(attributes, self.image_size),
            caption=attributes["template"].format(**attributes),
            image_id=f"{self.name}:{index}",
            name=f"{self.name}[{index}]",
        )
