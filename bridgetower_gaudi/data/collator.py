"""Batch assembly for pre-training: stack fixed-shape examples, mask tokens for MLM, pair images for ITM.

Random choices use torch's global generator, which the DataLoader seeds per worker; with `seed` set they come from
a generator seeded by the batch's content instead, so the same batch is masked and paired the same way whatever the
number of processes or workers (used to compare single-process and distributed runs).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

TEXT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class PretrainingCollator:
    """MLM: `mlm_probability` of the non-special, non-pad tokens are chosen; of those 80% become the mask token,
    10% a random token, 10% stay; `labels` hold the original ids there and -100 elsewhere. With
    `whole_word_masking`, all pieces of a chosen word are chosen (WordPiece "##" continuations; byte-level BPE
    pieces without a leading "Ġ").

    ITM: `itm_negatives="in_batch"`: each example keeps its image or, with probability 0.5, takes another image of
    the batch with a different image_id (`itm_image_index`, `itm_labels`); `"dataset"`: the dataset already drew
    the negatives (`itm_pixel_values`); `"none"`: no ITM. `two_pass=True` sends in-batch negatives as
    `itm_pixel_values` (the vision tower runs again, as the official step) instead of indices into the batch.
    `negative_mask=True` adds `itm_negative_mask` (True where image j may be caption i's negative) for ITC-sampled
    hard negatives.
    """

    tokenizer: object
    mlm_probability: float = 0.15
    whole_word_masking: bool = False
    itm_negatives: str = "in_batch"
    itm_negative_probability: float = 0.5
    mlm: bool = True
    two_pass: bool = False
    negative_mask: bool = False
    seed: int | None = None

    def __post_init__(self):
        self.special_ids = torch.tensor(sorted(set(self.tokenizer.all_special_ids)))
        vocab = len(self.tokenizer)
        regular = torch.ones(vocab, dtype=torch.bool)
        regular[self.special_ids[self.special_ids < vocab]] = False
        self.regular_ids = regular.nonzero().flatten()
        if self.whole_word_masking:
            tokens = [t or "" for t in self.tokenizer.convert_ids_to_tokens(list(range(vocab)))]
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
        batch["pixel_values"] = torch.stack([e["pixel_values"] for e in examples])
        if self.mlm:
            batch["input_ids"], batch["labels"] = self.mask_tokens(
                batch["input_ids"], batch["attention_mask"], generator
            )
        if self.itm_negatives == "in_batch":
            image_ids = [e["image_id"] for e in examples]
            batch["itm_labels"], index = self.pair_in_batch(image_ids, generator)
            if self.two_pass:
                batch["itm_pixel_values"] = batch["pixel_values"][index]
            else:
                batch["itm_image_index"] = index
            if self.negative_mask:
                batch["itm_negative_mask"] = torch.tensor([[a != b for b in image_ids] for a in image_ids])
        elif self.itm_negatives == "dataset":
            batch["itm_labels"] = torch.tensor([e["itm_label"] for e in examples])
            batch["itm_pixel_values"] = torch.stack([e["itm_pixel_values"] for e in examples])
        return batch

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
        masked[random_positions] = self.regular_ids[
            torch.randint(len(self.regular_ids), (int(random_positions.sum()),), generator=generator)
        ]
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

    def pair_in_batch(self, image_ids: list[str], generator=None):
        size = len(image_ids)
        index = torch.arange(size)
        labels = torch.ones(size, dtype=torch.long)
        negative = torch.rand(size, generator=generator) < self.itm_negative_probability
        for i in negative.nonzero().flatten().tolist():
            others = [j for j in range(size) if image_ids[j] != image_ids[i]]
            if others:
                index[i] = others[int(torch.randint(len(others), (1,), generator=generator))]
                labels[i] = 0
        return labels, index
