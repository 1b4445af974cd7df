"""The retrieval scores: towers once, ITC over every pair, ITM over each direction's top k (see the package
docstring for the method), and the metrics of those scores."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from ...inference.towers import PairScorer, TowerRunner
from .cache import load_or_compute, tower_cache_files
from .distributed import gather, image_slice, rank_and_world
from .metrics import OUTSIDE_TOP_K, RetrievalError, combine_directions, recall_metrics, top_k_masks
from .options import RetrievalOptions, check_model, parse_k


@dataclass
class RetrievalScores:
    """What `retrieval_scores` computed (every rank holds all of it)."""

    scores: torch.Tensor  # (images, captions): the official combination for top k; every pair's ITM for k="all"
    itc: torch.Tensor | None  # (images, captions) ITC cosine similarities; None without ITC heads
    image_to_text: torch.Tensor  # (images, captions) bool: each image's k best captions by ITC (all for k="all")
    text_to_image: torch.Tensor  # (images, captions) bool: each caption's k best images by ITC (all for k="all")
    pairs_scored: int  # distinct pairs through the cross-modal encoder, all ranks together
    images_encoded: int  # images this rank ran through the vision tower (0 when they came from the cache)
    captions_encoded: int  # captions this rank ran through the text tower (0 when they came from the cache)
    seconds: dict[str, float] = field(default_factory=dict)


def _keeper(runner: TowerRunner, itc_of, store_dtype):
    """What is kept of each batch's tower states: the states in `store_dtype` on the device, and their ITC embeddings
    whenever the model has ITC heads (cheap, and reported as ITC-alone metrics; top k needs them, "all" not)."""

    def keep(states) -> dict[str, torch.Tensor]:
        kept = {f"state{layer}": s.to(store_dtype) for layer, s in enumerate(states)}
        if runner.has_itc:
            kept["itc"] = itc_of(states).float()
        return kept

    return keep


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def encode_captions(runner: TowerRunner, captions: Mapping[str, torch.Tensor], store_dtype, show: bool) -> dict:
    """{"state<k>", "itc", "mask"} of every caption, on the device."""
    input_ids, attention_mask = captions["input_ids"], captions["attention_mask"]
    batches = tqdm(runner.batches(input_ids, attention_mask), total=runner.num_batches(input_ids.shape[0]),
                   desc="text tower", unit="batch", disable=not show)  # fmt: skip
    tensors = _concat(runner.run(runner.text_tower, batches, keep=_keeper(runner, runner.itc_text, store_dtype)))
    tensors["mask"] = attention_mask.to(runner.device)
    return tensors


def encode_images(runner: TowerRunner, images: Sequence, mine: range, store_dtype, options, show: bool) -> dict:
    """{"state<k>", "itc"} of this rank's images (`mine`), on the device; DataLoader workers decode them."""
    loader = DataLoader(
        Subset(images, mine), batch_size=options.batch_size, num_workers=options.num_workers, collate_fn=torch.stack
    )
    batches = ((pixels,) for pixels in tqdm(loader, desc="image tower", unit="batch", disable=not show))
    return _concat(runner.run(runner.image_tower, batches, keep=_keeper(runner, runner.itc_image, store_dtype)))


def score_pairs(runner: TowerRunner, text: dict, image: dict, text_rows, image_rows, show: bool) -> torch.Tensor:
    """ITM logits of the pairs (text_rows[i], image_rows[i]) (image rows local to this rank), on the CPU."""
    layers = range(runner.top_layers)
    states = [text[f"state{k}"] for k in layers] + [image[f"state{k}"] for k in layers]
    scorer = runner.graph(PairScorer(runner.model, runner.top_layers))
    batches = tqdm(runner.batches(text_rows, image_rows), total=runner.num_batches(len(text_rows)),
                   desc="cross-modal (ITM)", unit="batch", disable=not show)  # fmt: skip
    scores = runner.run(scorer, batches, text["mask"], *states, keep=lambda out: out[0].float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def retrieval_scores(
    model, images: Sequence, captions: Mapping[str, torch.Tensor], options: RetrievalOptions | None = None
) -> RetrievalScores:
    """The (images x captions) retrieval scores; see `evaluate_retrieval` for the arguments."""
    options = options or RetrievalOptions()
    top_k = parse_k(options.k)
    check_model(model, top_k)
    rank, world = rank_and_world()
    num_images, num_captions = len(images), captions["input_ids"].shape[0]
    if num_images == 0 or num_captions == 0:
        raise RetrievalError(f"nothing to evaluate: {num_images} images, {num_captions} captions.")
    runner = TowerRunner(model, options.batch_size, options.bf16)
    mine = image_slice(num_images, rank, world)
    store_dtype = torch.bfloat16 if options.bf16 else torch.float32
    show = options.progress and rank == 0
    text_file, image_file = tower_cache_files(model, images, captions, mine, options)

    was_training = model.training
    model.eval()
    seconds = {}
    try:
        with torch.inference_mode(), runner.autocast():
            started = time.perf_counter()
            text, texts_cached = load_or_compute(
                text_file, lambda: encode_captions(runner, captions, store_dtype, show), runner.device
            )
            image, images_cached = None, True  # more ranks than images: nothing of its own to encode or score
            if len(mine) > 0:
                image, images_cached = load_or_compute(
                    image_file, lambda: encode_images(runner, images, mine, store_dtype, options, show), runner.device
                )
            seconds["towers"] = time.perf_counter() - started

            started = time.perf_counter()
            itc = None
            if runner.has_itc:
                local_itc = image["itc"] if image is not None else torch.zeros(0, text["itc"].shape[1])
                itc = torch.cat(gather(local_itc)) @ text["itc"].float().cpu().t()  # (images, captions): all ranks
            if top_k is not None:
                image_to_text, text_to_image = top_k_masks(itc, top_k)
            else:
                image_to_text = text_to_image = torch.ones(num_images, num_captions, dtype=torch.bool)
            candidates = image_to_text | text_to_image
            # Row-major order: this rank's pairs are the contiguous block of its images, sorted by image.
            local_images, local_texts = candidates[mine.start : mine.stop].nonzero(as_tuple=True)
            local_scores = torch.zeros(0)
            if image is not None:
                local_scores = score_pairs(runner, text, image, local_texts, local_images, show)
            itm = torch.full((num_images, num_captions), OUTSIDE_TOP_K)
            itm[candidates] = torch.cat(gather(local_scores))  # ranks in order = the row-major order of `candidates`
            scores = combine_directions(itm, image_to_text, text_to_image)
            seconds["itm"] = time.perf_counter() - started
    finally:
        model.train(was_training)
    return RetrievalScores(
        scores=scores,
        itc=itc,
        image_to_text=image_to_text,
        text_to_image=text_to_image,
        pairs_scored=int(candidates.sum()),
        images_encoded=0 if images_cached else len(mine),
        captions_encoded=0 if texts_cached else num_captions,
        seconds=seconds,
    )


def evaluate_retrieval(
    model,
    images: Sequence,
    captions: Mapping[str, torch.Tensor],
    caption_to_image: Sequence[int] | torch.Tensor,
    options: RetrievalOptions | None = None,
) -> dict[str, float | int]:
    """Image-text retrieval metrics of `model` (in percent; flat, ready to log).

    - `model`: a BridgeTowerForPreTraining with the itc objective (top-k re-ranking), or any model with an ITM head
      (BridgeTowerForImageAndTextRetrieval, ForPreTraining without itc) for `k="all"`. It runs where it is; eval mode
      is set for the call and the training mode restored after.
    - `images`: a sequence of (3, H, W) pixel tensors, already transformed (a lazy sequence, e.g. `RetrievalData`'s,
      is read once, by a DataLoader with `options.num_workers`).
    - `captions`: {"input_ids", "attention_mask"}: (captions, length) tensors, padded to one length.
    - `caption_to_image`: for each caption, the index of its image in `images`.
    - `options`: k, batch size, cache, precision, progress bars, workers (`RetrievalOptions`).

    Returns ir_r1/5/10, tr_r1/5/10, ir_mean, tr_mean, r_mean, rsum; the same with an itc_ prefix for ITC alone
    (models with ITC heads); pairs_scored, images_encoded, captions_encoded, num_images, num_captions; seconds_towers,
    seconds_itm.
    """
    result = retrieval_scores(model, images, captions, options)
    metrics: dict[str, float | int] = recall_metrics(result.scores, caption_to_image)
    if result.itc is not None:
        metrics.update(recall_metrics(result.itc, caption_to_image, prefix="itc_"))
    metrics.update(
        num_images=result.scores.shape[0],
        num_captions=result.scores.shape[1],
        pairs_scored=result.pairs_scored,
        images_encoded=result.images_encoded,
        captions_encoded=result.captions_encoded,
    )
    metrics.update({f"seconds_{name}": value for name, value in result.seconds.items()})
    return metrics


@torch.inference_mode()
def naive_scores(
    model, images: Sequence, captions: Mapping[str, torch.Tensor], batch_size: int = 256, progress: bool = True
) -> torch.Tensor:
    """(images x captions) ITM logits of "match", every pair through the whole model (both towers and the
    cross-modal encoder): the slow reference `k="all"` must rank exactly as, and the benchmark's baseline."""
    device = next(model.parameters()).device
    input_ids, attention_mask = captions["input_ids"], captions["attention_mask"]
    was_training = model.training
    model.eval()
    rows = []
    try:
        for index in tqdm(range(len(images)), desc="every pair, whole model", unit="image", disable=not progress):
            pixels = torch.as_tensor(images[index])[None].to(device)
            row = []
            for start in range(0, input_ids.shape[0], batch_size):
                ids = input_ids[start : start + batch_size].to(device)
                mask = attention_mask[start : start + batch_size].to(device)
                out = model.bridgetower(
                    input_ids=ids,
                    attention_mask=mask,
                    pixel_values=pixels.expand(ids.shape[0], -1, -1, -1),
                    return_dict=True,
                    pooled_only=True,
                )
                row.append(model.itm_score(out.pooler_output)[:, 1].float().cpu())
            rows.append(torch.cat(row))
    finally:
        model.train(was_training)
    return torch.stack(rows)
