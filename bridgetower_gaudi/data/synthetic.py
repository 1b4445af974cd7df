"""A synthetic image-text source: coloured shapes whose colour, shape and position words can only be predicted from
the image. Deterministic by (seed, index), generated on the fly, no files. It is the default run's data and the
learning tests' data, and it comes with its own word-level tokenizer so nothing needs downloading.

Two tasks (`SYNTHETIC_TASKS`): "shapes" (the default: one shape, its colour, shape and position) and "relations"
(the ablations' default: two named shapes in a spatial relation plus an unnamed distractor, so a masked colour or
shape word is only predictable by finding the right object relative to the other one; see `relations_attributes`).
"shapes" is what run_pretrain.py and the tests' seeded figures are measured on: it never changes."""

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
# The "relations" task: "A <relation> B" means A's cell lies in that direction of B's cell (same row / column).
RELATIONS = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
RELATION_TEMPLATES = (
    "a {color} {shape} {relation} a {other_color} {other_shape}",
    "there is a {color} {shape} {relation} a {other_color} {other_shape}",
)
# Words the relations captions add to the vocabulary ("left", "right", "a", "there", "is" are already there).
RELATION_WORDS = ("above", "below", "of")
SYNTHETIC_TASKS = ("shapes", "relations")
# The downstream tasks' synthetic questions and statements (VQA, SNLI-VE, NLVR2).
QUESTIONS = {"color": "what color is the shape", "shape": "what shape is it", "position": "where is the shape"}
TASK_WORDS = ("what", "color", "shape", "it", "where", "somewhere", "image", "one")


def synthetic_vocabulary(task_words: bool = False, relations: bool = False) -> list[str]:
    words = {w for template in TEMPLATES for w in template.replace("{", " ").replace("}", " ").split()}
    words -= {"color", "shape", "position"}
    vocabulary = SPECIAL_TOKENS + sorted(words | ATTRIBUTE_WORDS)
    # Appended, so that pre-training's ids (and its seeded runs) stay as they were.
    extra = (TASK_WORDS if task_words else ()) + (RELATION_WORDS if relations else ())
    return vocabulary + [w for w in dict.fromkeys(extra) if w not in vocabulary]


def synthetic_tokenizer(task_words: bool = False, relations: bool = False) -> PreTrainedTokenizerFast:
    """A BERT-style word-level tokenizer over the synthetic captions' words ([CLS] caption [SEP]); `task_words`
    adds the words of the downstream tasks' questions and statements, `relations` those of the relations task."""
    vocab = {word: index for index, word in enumerate(synthetic_vocabulary(task_words, relations))}
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


def relations_attributes(seed: int, index: int) -> dict:
    """One "relations" picture: objects A and B (distinct colours) in cells of a 3 x 3 grid, A `relation` B (same
    row for left / right, same column for above / below), and a distractor C in another cell whose colour differs
    from both and whose shape often repeats A's or B's: "a [MASK] circle left of a blue square" then needs the
    circle that stands left of the blue square, not just any circle."""
    rng = np.random.default_rng([seed, index, 1])  # its own stream: the "shapes" draws stay as they were
    colors = [list(COLORS)[i] for i in rng.permutation(len(COLORS))[:3]]
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=3)]
    relation = list(RELATIONS)[rng.integers(len(RELATIONS))]
    dx, dy = RELATIONS[relation]
    # A's cell, then B's: a step of 1 or 2 cells the other way, staying inside the grid.
    while True:
        ax, ay = (int(v) for v in rng.integers(3, size=2))
        step = int(rng.integers(1, 3))
        bx, by = ax - dx * step, ay - dy * step
        if 0 <= bx < 3 and 0 <= by < 3:
            break
    free = [(x, y) for x in range(3) for y in range(3) if (x, y) not in ((ax, ay), (bx, by))]
    cx, cy = free[rng.integers(len(free))]
    objects = [
        {"color": colors[i], "shape": shapes[i], "cell": cell, "jitter": rng.uniform(-0.03, 0.03, size=2)}
        for i, cell in enumerate(((ax, ay), (bx, by), (cx, cy)))
    ]
    return {
        "objects": objects,
        "relation": relation,
        "template": RELATION_TEMPLATES[rng.integers(len(RELATION_TEMPLATES))],
        "noise_seed": int(rng.integers(2**31)),
    }


def relations_caption(attributes: dict) -> str:
    first, second = attributes["objects"][:2]  # the third object is the distractor, never named
    return attributes["template"].format(
        color=first["color"], shape=first["shape"], relation=attributes["relation"],
        other_color=second["color"], other_shape=second["shape"],
    )  # fmt: skip


def draw_relations(attributes: dict, size: int = 64) -> Image.Image:
    """A grey noisy canvas with the three objects in their grid cells."""
    noise = np.random.default_rng(attributes["noise_seed"]).integers(100, 120, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, mode="RGB")
    draw = ImageDraw.Draw(image)
    r = size * 0.12
    for item in attributes["objects"]:
        cx, cy = ((np.array(item["cell"]) + 0.5) / 3 + item["jitter"]) * size
        color = COLORS[item["color"]]
        if item["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
        elif item["shape"] == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return image


def synthetic_example(task: str, seed: int, index: int, image_size: int = 64) -> tuple[Image.Image, str]:
    """(image, caption) of record `index` of the synthetic `task` ("shapes" or "relations")."""
    if task == "shapes":
        attributes = synthetic_attributes(seed, index)
        return draw_shape(attributes, image_size), attributes["template"].format(**attributes)
    if task == "relations":
        attributes = relations_attributes(seed, index)
        return draw_relations(attributes, image_size), relations_caption(attributes)
    raise ValueError(f"synthetic task {task!r}: choose one of {SYNTHETIC_TASKS}.")


class SyntheticSource(MapSource):
    """Random-access source of `size` synthetic pairs of `task` ("shapes" or "relations"); one caption per image,
    image_id = index."""

    def __init__(
        self, size: int = 10_000, seed: int = 0, image_size: int = 64, name: str = "synthetic", task: str = "shapes"
    ):
        if task not in SYNTHETIC_TASKS:
            raise ValueError(f"synthetic task {task!r}: choose one of {SYNTHETIC_TASKS}.")
        self.size, self.seed, self.image_size, self.name, self.task = size, seed, image_size, name, task

    def __len__(self) -> int:
        return self.size

    def caption(self, index: int) -> str:
        if self.task == "relations":
            return relations_caption(relations_attributes(self.seed, index))
        attributes = synthetic_attributes(self.seed, index)
        return attributes["template"].format(**attributes)

    def __getitem__(self, index: int) -> RawRecord:
        image, caption = synthetic_example(self.task, self.seed, index, self.image_size)
        return RawRecord(image=image, caption=caption, image_id=f"{self.name}:{index}", name=f"{self.name}[{index}]")


class SyntheticTaskSource(MapSource):
    """Learnable stand-ins for the downstream tasks, on the same shapes (records carry the task's target):

    - "vqa": "what color is the shape" / "what shape is it" / "where is the shape"; target {"answers": 10 x the
      attribute} (as VQAv2's ten annotator answers).
    - "snli_ve": the hypothesis states colour, shape and position: all true (entailment 2), another colour
      (contradiction 0), or the right colour and shape with the position left open, "somewhere" (neutral 1).
    - "nlvr2": two images; "one image shows a red circle", true when either image does (target 1 / 0).
    - "retrieval": the pre-training captions, two per image (records 2i, 2i + 1 describe image i), no target.
    """

    def __init__(self, task: str, size: int = 1000, seed: int = 0, image_size: int = 64):
        if task not in ("vqa", "snli_ve", "nlvr2", "retrieval"):
            raise ValueError(f"no synthetic data for task {task!r}.")
        self.task, self.size, self.seed, self.image_size = task, size, seed, image_size
        self.name = f"synthetic_{task}"

    def __len__(self) -> int:
        return self.size

    def _image(self, index: int) -> tuple[dict, Image.Image, str]:
        attributes = synthetic_attributes(self.seed, index)
        return attributes, draw_shape(attributes, self.image_size), f"{self.name}:{index}"

    def __getitem__(self, index: int) -> RawRecord:
        rng = np.random.default_rng([self.seed, index, 7])
        attributes, image, image_id = self._image(index)
        name = f"{self.name}[{index}]"
        if self.task == "vqa":
            asked = ("color", "shape", "position")[rng.integers(3)]
            return RawRecord(image, QUESTIONS[asked], image_id, name, target={"answers": [attributes[asked]] * 10},
                             example_id=str(index))  # fmt: skip
        if self.task == "snli_ve":
            label = int(rng.integers(3))
            words = dict(attributes)
            if label == 0:  # contradiction: another colour
                others = [c for c in COLORS if c != attributes["color"]]
                words["color"] = others[rng.integers(len(others))]
            elif label == 1:  # neutral: the position cannot be checked
                words["position"] = "somewhere"
            hypothesis = f"a {words['color']} {words['shape']} on the {words['position']}"
            return RawRecord(image, hypothesis, image_id, name, target=label, example_id=str(index))
        if self.task == "nlvr2":
            other_attributes, other_image, other_id = self._image(self.size + index)  # a second, unseen-index image
            described = (attributes, other_attributes)[int(rng.integers(2))]
            label = int(rng.integers(2))
            color = described["color"]
            if not label:  # a colour neither image shows with that shape
                shown = {a["color"] for a in (attributes, other_attributes) if a["shape"] == described["shape"]}
                others = [c for c in COLORS if c not in shown]
                color = others[rng.integers(len(others))]
            sentence = f"one image shows a {color} {described['shape']}"
            return RawRecord(image, sentence, image_id, name, target=label, extra_images=((other_image, other_id),),
                             example_id=str(index))  # fmt: skip
        # retrieval: two captions per image (record 2i and 2i + 1 describe image i, in two templates)
        attributes, image, image_id = self._image(index // 2)
        template = TEMPLATES[(TEMPLATES.index(attributes["template"]) + index % 2) % len(TEMPLATES)]
        return RawRecord(image, template.format(**attributes), image_id, name)
