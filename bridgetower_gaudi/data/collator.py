"""Batch assembly for pre-training: stack fixed-shape examples, mask tokens for MLM, pair images for ITM.

Random choices come from a generator seeded by the examples' `draw_seed`s (set by the datasets from the run's seed
and each example's place in the data order: a resumed run masks and pairs exactly as the uninterrupted one); with
`seed` set, from the batch's content instead, so the same batch is masked and paired the same way whatever the
number of processes or workers (used to compare single-process and distributed runs); without either, from torch's
global generator.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import torch

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


ITM_NEGATIVES = ("dataset", "in_batch", "itc_hard", "none")


def data_set_negative(example: dict) -> tuple[str, torch.Tensor]:
    """(image_id, pixel_values) of an example's data-set negative: drawn now from a lazy `false_image` (the
    datasets'), or given as `false_image_id` / `false_pixel_values`."""
    if "false_image" in example:
        return example["false_image"]()
    return example["false_image_id"], example["false_pixel_values"]


@dataclass
class PretrainingCollator:
    """MLM: `mlm_probability` of the non-special, non-pad tokens are chosen; of those 80% become the mask token,
    10% a random token of the whole vocabulary, 10% stay (transformers' DataCollatorForLanguageModeling, as the
    official code); `labels` hold the original ids there and -100 elsewhere. With `whole_word_masking`, all pieces of
    a chosen word are chosen (WordPiece "##" continuations; byte-level BPE pieces without a leading "Ġ").

    ITM (`itm_negatives`), exactly half of each batch positive, in random positions (the official split):
    - "dataset": a negative's image is the example's data-set negative (`false_image`, decoded only for the
      negative rows, or `false_pixel_values`), a random image of the data set (the official recipe); if it happens
      to be the example's own image, another image of the batch is used.
    - "in_batch": a negative's image is another image of the batch (a different image_id).
    - "itc_hard": no pairing here; `itm_negative_mask` (True where image j may be caption i's negative) lets the
      model draw ITC-sampled hard negatives.
    - "none": no ITM.
    ITM images that are the batch's own are sent as indices (`itm_image_index`, rows of the MLM pass's image
    features: one vision pass per image) and only data-set negatives as `itm_pixel_values`.
    """

    tokenizer: object
    mlm_probability: float = 0.15
    whole_word_masking: bool = False
    itm_negatives: str = "dataset"
    mlm: bool = True
    seed: int | None = None
    itc_image_ids: bool = False  # retrieval: send each caption's image as an integer (soft ITC targets)

    def __post_init__(self):
        if self.itm_negatives not in ITM_NEGATIVES:
            raise ValueError(f"itm_negatives={self.itm_negatives!r}: choose one of {ITM_NEGATIVES}.")
        self.special_ids = torch.tensor(sorted(set(self.tokenizer.all_special_ids)))
        self.vocab_size = len(self.tokenizer)
        if self.whole_word_masking:
            tokens = [t or "" for t in self.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))]
            byte_level = any(t.startswith("Ġ") for t in tokens)
            self.continues_word = torch.tensor(
                [t.startswith("##") or (byte_level and not t.startswith("Ġ")) for t in tokens]
            )

    def __call__(self, examples: list[dict]) -> dict:
        batch = {key: torch.stack([e[key] for e in examples]) for key in TEXT_KEYS if key in examples[0]}
        generator = None
        if self.seed is not None:
            content = zlib.crc32(batch["input_ids"].numpy().tobytes())
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + content)
        elif "draw_seed" in examples[0]:
            seeds = ",".join(str(e["draw_seed"]) for e in examples).encode()
            digest = hashlib.blake2b(seeds, digest_size=8).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
        batch["pixel_values"] = torch.stack([e["pixel_values"] for e in examples])
        if self.mlm:
            batch["input_ids"], batch["labels"] = self.mask_tokens(
                batch["input_ids"], batch["attention_mask"], generator
            )
        image_ids = [e["image_id"] for e in examples]
        if self.itm_negatives in ("dataset", "in_batch"):
            batch.update(self.pair_images(examples, batch["pixel_values"], image_ids, generator))
        elif self.itm_negatives == "itc_hard":
            batch["itm_negative_mask"] = torch.tensor([[a != b for b in image_ids] for a in image_ids])
        if self.itc_image_ids:  # 24 bits: exact when the model gathers them as floats; a collision merely softens
            batch["itc_image_ids"] = torch.tensor([zlib.crc32(i.encode()) & 0xFFFFFF for i in image_ids])
        return batch

    def pair_images(self, examples, pixel_values, image_ids, generator=None) -> dict:
        """itm_labels and the ITM images (see the class doc)."""
        size = len(image_ids)
        labels = torch.ones(size, dtype=torch.long)
        labels[size // 2 :] = 0
        labels = labels[torch.randperm(size, generator=generator)]
        from_dataset = self.itm_negatives == "dataset"
        if from_dataset and not ({"false_image", "false_pixel_values"} & set(examples[0])):
            raise ValueError(
                "itm_negatives='dataset' needs examples with a data-set negative (false_pixel_values): build the "
                "dataset with DataArguments(itm_negatives='dataset'), or pair within the batch "
                "(itm_negatives='in_batch')."
            )
        index = torch.arange(size)  # into [batch images; data-set negatives]
        negatives = (labels == 0).nonzero().flatten()
        # Only the negative rows' data-set images are drawn and decoded (see dataset.DataSetNegative).
        false = {i: data_set_negative(examples[i]) for i in negatives.tolist()} if from_dataset else {}
        for k, i in enumerate(negatives.tolist()):
            if from_dataset and false[i][0] != image_ids[i]:
                index[i] = size + k
                continue
            others = [j for j in range(size) if image_ids[j] != image_ids[i]]
            if others:
                index[i] = others[int(torch.randint(len(others), (1,), generator=generator))]
            else:  # every image of the batch is this caption's: it stays a positive
                labels[i] = 1
        out = {"itm_labels": labels, "itm_image_index": index}
        if from_dataset:
            out["itm_pixel_values"] = torch.stack([false[i][1] for i in negatives.tolist()])
        return out

    def candidates(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)

    def mask_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, generator=None):
        candidates = self.candidates(input_ids, attention_mask)
        chosen = candidates & (torch.rand(input_ids.shape, generator=generator) < self.mlm_probability)
        if self.whole_word_masking:
            chosen = self._extend_to_whole_words(input_ids, candidates, chosen)
        if not chosen.any() and candidates.any():  # an all -100 batch would make the MLM loss NaN
            flat = candidates.flatten().nonzero().flatten()
            chosen.view(-1)[flat[torch.randint(len(flat), (1,), generator=generator)]] = True
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
        draw = torch.rand(input_ids.shape, generator=generator)
        masked = input_ids.clone()
        masked[chosen & (draw < 0.8)] = self.tokenizer.mask_token_id
        random_positions = chosen & (draw >= 0.8) & (draw < 0.9)
        masked[random_positions] = torch.randint(self.vocab_size, (int(random_positions.sum()),), generator=generator)
        return masked, labels

    def _extend_to_whole_words(self, input_ids, candidates, chosen):
        continues = self.continues_word[input_ids] & candidates
        # A piece right after a special token starts a word (RoBERTa's first word has no leading "Ġ").
        continues[:, 0] = False
        continues[:, 1:] &= candidates[:, :-1]
        chosen = chosen.clone()
        # A word is chosen when its first piece is; propagate left to right through continuation pieces.
        for column in range(1, input_ids.shape[1]):
            chosen[:, column] = torch.where(continues[:, column], chosen[:, column - 1], chosen[:, column])
        return chosen & candidates


@dataclass
class TaskCollator:
    """Batch assembly for the downstream tasks: every tensor of the examples stacked (the captions are already
    padded to one length, the images one size: static shapes); ids and other non-tensor fields dropped."""

    def __call__(self, examples: list[dict]) -> dict:
        return {
            key: torch.stack([example[key] for example in examples])
            for key, value in examples[0].items()
            if isinstance(value, torch.Tensor)
        }


@dataclass
class PadToLengthBucket:
    """Wraps a collator: its batch (captions padded to --max_seq_length) is cut to the smallest of `buckets` that
    holds the batch's longest caption, so the step compiles at most len(buckets) + 1 text shapes (HPU graphs,
    torch.compile) and attends over fewer pad tokens. Cut after the wrapped collator's random draws (MLM masking
    chooses attended tokens only), so the batch is the same one, shorter. The model's outputs on real tokens do not
    depend on the padding (tests/test_data_path.py)."""

    collator: object
    buckets: list[int]

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        mask = batch.get("attention_mask")
        if mask is None or not self.buckets:
            return batch
        full = mask.shape[1]
        longest = int(mask.sum(dim=1).max())  # in the loader (CPU): not a device sync
        length = next((bucket for bucket in self.buckets if bucket >= longest), full)
        if length >= full:
            return batch
        shape = mask.shape
        for key in (*TEXT_KEYS, "labels"):  # labels: the MLM targets only (shaped like the captions)
            if key in batch and batch[key].shape == shape:
                batch[key] = batch[key][:, :length].contiguous()
        return batch

    def __getattr__(self, name):  # the wrapped collator's settings (tokenizer, itm_negatives, ...)
        return getattr(self.__dict__["collator"], name)


def pad_to_length_buckets(buckets: list[int], *collators):
    """The collators, each wrapped in PadToLengthBucket when `buckets` (DataArguments.bucket_lengths) are given."""
    return tuple(PadToLengthBucket(c, buckets) if buckets and c is not None else c for c in collators)
