"""Image-text retrieval evaluation (Flickr30K / COCO Karpathy test splits): IR@1/5/10, TR@1/5/10 and RSUM.

Done naively, every (image, caption) pair runs the whole model: 1,000 x 5,000 = 5M passes on Flickr30K. Here:

1. Towers once. Every image and every caption goes through its uni-modal tower once; only the top
   `num_bridges + 1` hidden states (all the cross-modal encoder reads) and the ITC embeddings are kept. With
   `cache_dir` they are saved as safetensors files named by a hash of the weights, the precision and the data, so a
   second evaluation of the same checkpoint on the same data skips the towers.
2. ITC ranks every pair (cosine similarity of the normalised ITC embeddings).
3. ITM re-ranks. The `k` best captions of every image and the `k` best images of every caption (official `k_test`:
   128 on Flickr30K, 256 on COCO) go through the cross-modal encoder, each distinct pair once, in batches; a pair's
   score is the ITM logit of "match" (`itm_score(...)[:, 1]`, as the official code).
4. The two directions are combined as the official `compute_irtr_itm_itc_recall` (microsoft/BridgeTower,
   src/modules/objectives.py) does: each direction has an (images x captions) matrix holding the ITM score on its
   own top-k pairs and -100 everywhere else; the final score is their element-wise maximum, and both IR and TR rank
   by it.

`k="all"` scores every pair (no ITC needed, so ITM-only checkpoints work too) and ranks exactly as running every pair
through the whole model (`naive_scores`), only without re-running the towers.

Distributed (torch.distributed initialised, e.g. under torchrun or the Trainer): rank r runs the vision tower on its
contiguous slice of the images and scores the candidate pairs that fall on those images (its image->text queries,
and the text->image candidates that land on its images), so no rank needs another rank's image states. Every rank
runs the text tower on all captions (short texts: small next to the cross-modal passes). ITC embeddings and pair
scores are gathered, and every rank returns the same metrics.

Tower states stay on the model's device for the whole evaluation (as the official code keeps them on the GPU): for
BridgeTower-base about 10 MB per image and 0.7 MB per caption in fp32, half with `bf16=True`; split the images over
more ranks when they do not fit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..data.dataset import ExampleBuilder
from ..data.images import ImageTransform
from ..data.records import BadRecord, RawRecord, SkipLog
from ..data.sources import DataConfigError, KarpathySource
from ..data.synthetic import TEMPLATES, draw_shape, synthetic_attributes
from ..modeling.modeling_bridgetower import TowerOutput
from ..pipeline import PipelineError, _ImageTower, _TextTower, load_model, resolve_device

OUTSIDE_TOP_K = -100.0  # the official score of a pair outside a direction's top k
RECALL_AT = (1, 5, 10)
RESULTS_FILE = "retrieval_results.json"


class RetrievalError(ValueError):
    """A model or option that cannot evaluate retrieval; the message says what to do."""


# --- metrics (pure functions) ---------------------------------------------------------------------------------
def recall_metrics(scores: torch.Tensor, caption_to_image, prefix: str = "") -> dict[str, float]:
    """IR@K and TR@K (K = 1, 5, 10), their means and RSUM, in percent, from an (images x captions) score matrix.

    - IR@K: the share of captions whose own image is among the K best-scoring images for that caption.
    - TR@K: the share of images for which ANY of their captions is among the K best-scoring captions for that image.
    - ir_mean / tr_mean / r_mean as the official code; rsum = the sum of the six recalls (at most 600).

    K is capped at the number of candidates (with fewer than 10 images every image is in the "top 10").
    """
    scores = scores.float()
    caption_to_image = torch.as_tensor(caption_to_image, dtype=torch.long)
    num_images, num_captions = scores.shape
    if caption_to_image.shape != (num_captions,):
        raise RetrievalError(f"caption_to_image has {caption_to_image.numel()} entries for {num_captions} captions.")
    own_image = torch.arange(num_images)[:, None]
    metrics = {}
    for k in RECALL_AT:
        best_images = scores.topk(min(k, num_images), dim=0).indices  # (K, captions)
        metrics[f"ir_r{k}"] = 100.0 * (best_images == caption_to_image[None]).any(dim=0).float().mean().item()
        best_captions = scores.topk(min(k, num_captions), dim=1).indices  # (images, K)
        metrics[f"tr_r{k}"] = 100.0 * (caption_to_image[best_captions] == own_image).any(dim=1).float().mean().item()
    metrics["ir_mean"] = sum(metrics[f"ir_r{k}"] for k in RECALL_AT) / len(RECALL_AT)
    metrics["tr_mean"] = sum(metrics[f"tr_r{k}"] for k in RECALL_AT) / len(RECALL_AT)
    metrics["r_mean"] = (metrics["ir_mean"] + metrics["tr_mean"]) / 2
    metrics["rsum"] = sum(metrics[f"{side}_r{k}"] for side in ("ir", "tr") for k in RECALL_AT)
    return {prefix + name: value for name, value in metrics.items()}


def top_k_masks(itc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_to_text, text_to_image) boolean (images x captions) masks: the `k` best captions of each image by ITC
    (a row's top k), and the `k` best images of each caption (a column's top k), as the official `topk(dim=1)` and
    `topk(dim=0)`; `k` is capped at the number of candidates."""
    num_images, num_captions = itc.shape
    image_to_text = torch.zeros(itc.shape, dtype=torch.bool)
    image_to_text.scatter_(1, itc.topk(min(k, num_captions), dim=1).indices.cpu(), True)
    text_to_image = torch.zeros(itc.shape, dtype=torch.bool)
    text_to_image.scatter_(0, itc.topk(min(k, num_images), dim=0).indices.cpu(), True)
    return image_to_text, text_to_image


def combine_directions(itm: torch.Tensor, image_to_text: torch.Tensor, text_to_image: torch.Tensor) -> torch.Tensor:
    """The official rule (`compute_irtr_itm_itc_recall`, microsoft/BridgeTower src/modules/objectives.py): each
    direction's matrix is the ITM score on its top-k pairs and -100 elsewhere; the result is their element-wise max.
    `itm` needs to be right only where either mask is True. A pair in both top-k sets has one ITM score here (the
    official code computes it twice, with the same weights and inputs)."""
    outside = torch.full_like(itm, OUTSIDE_TOP_K)
    return torch.maximum(torch.where(image_to_text, itm, outside), torch.where(text_to_image, itm, outside))


# --- the model's parts, as modules an HPU graph can capture -------------------------------------------------------
class _PairScorer(nn.Module):
    """Rows of the cached states, paired -> the ITM logit of "match". Indexing happens inside, so the module's inputs
    keep one shape per batch size (what an HPU graph needs)."""

    def __init__(self, model, top_layers: int):
        super().__init__()
        self.model, self.top_layers = model, top_layers

    def forward(self, text_rows, image_rows, text_mask, *states):
        text_states = tuple(s.index_select(0, text_rows) for s in states[: self.top_layers])
        image_states = tuple(s.index_select(0, image_rows) for s in states[self.top_layers :])
        text = TowerOutput(text_states, text_mask.index_select(0, text_rows))
        fused = self.model.bridgetower.fuse(text, TowerOutput(image_states, None))
        return self.model.itm_score(fused.pooler_output)[:, 1]


def _maybe_hpu_graph(module: nn.Module, device: torch.device) -> nn.Module:
    """On HPU in lazy mode, `module` replayed as an HPU graph (as the inference pipeline does); else itself."""
    if device.type == "hpu" and os.environ.get("PT_HPU_LAZY_MODE") == "1":
        from ..device.gaudi import wrap_in_hpu_graph  # HPU only: imports habana_frameworks

        return wrap_in_hpu_graph(module)
    return module


def _pad_rows(tensors: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """Each tensor padded to `size` rows by repeating its last row: on HPU a new batch shape is a new graph."""
    count = tensors[0].shape[0]
    if count == size:
        return tensors
    return [torch.cat([t, t[-1:].expand(size - count, *t.shape[1:])]) for t in tensors]


def has_itc_heads(model) -> bool:
    """Whether `model` can rank by ITC (a BridgeTowerForPreTraining built with the "itc" objective)."""
    return bool(getattr(model, "use_itc", False))


def _check_model(model, k: int | None) -> None:
    if not hasattr(model, "itm_score") or not hasattr(model, "bridgetower"):
        raise RetrievalError(
            f"{type(model).__name__} has no ITM head: retrieval needs BridgeTowerForPreTraining (objectives with itm) "
            "or BridgeTowerForImageAndTextRetrieval."
        )
    if k is not None and not has_itc_heads(model):
        raise RetrievalError(
            f"{type(model).__name__} has no ITC heads, which rank the candidates for top-k re-ranking: pass k='all' "
            "(--k all) to score every pair by ITM, or use a checkpoint trained with the itc objective."
        )


def parse_k(k: int | str | None) -> int | None:
    """`k` as given (an int, a digit string, "all" or None) -> a positive int, or None for every pair."""
    if k is None or (isinstance(k, str) and k.strip().lower() == "all"):
        return None
    try:
        value = int(k)
    except (TypeError, ValueError):
        raise RetrievalError(f"k={k!r}: pass a positive number of candidates per query, or 'all'.") from None
    if value < 1:
        raise RetrievalError(f"k={k!r}: pass a positive number of candidates per query, or 'all'.")
    return value


# --- fingerprints for the cache ---------------------------------------------------------------------------------
def _digest(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()  # any dtype, bf16 included, as raw bytes


# Config fields that change when a model is saved or loaded, not what it computes.
_VOLATILE_CONFIG_FIELDS = ("_name_or_path", "transformers_version", "checkpoint_layout", "architectures", "torch_dtype")


def model_fingerprint(model) -> str:
    """A hash of the model's configuration and every weight: the cache's notion of "the same checkpoint". Hashing
    the weights themselves (not file dates) also covers a model evaluated in memory during fine-tuning."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in _VOLATILE_CONFIG_FIELDS}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()[:24]


def _images_fingerprint(images: Sequence) -> str:
    """The pixels themselves, when the caller gives no key for its images (reads every image once more)."""
    digest = hashlib.sha256()
    for index in range(len(images)):
        digest.update(_tensor_bytes(torch.as_tensor(images[index])))
    return digest.hexdigest()[:24]


def _load_or_compute(path: str | None, compute, device: torch.device) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors, whether they came from the cache file `path`): read it when present, else compute and write it.
    Written to a temporary name and renamed, so a crash or another rank writing the same file never leaves half a
    file behind."""
    if path is not None and os.path.isfile(path):
        return {name: tensor.to(device) for name, tensor in load_file(path).items()}, True
    tensors = compute()
    if path is not None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        partial = f"{path}.{_rank_and_world()[0]}.{os.getpid()}.partial"
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, partial)
        os.replace(partial, path)
    return tensors, False


def _states(tensors: dict[str, torch.Tensor], top_layers: int) -> tuple[torch.Tensor, ...]:
    return tuple(tensors[f"state{layer}"] for layer in range(top_layers))


# --- distributed helpers ------------------------------------------------------------------------------------------
_GATHER_GROUP = None


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (on the CPU; shapes may differ), in rank order."""
    _, world = _rank_and_world()
    if world == 1:
        return [tensor.cpu()]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, tensor.cpu(), group=_gather_group())
    return gathered


def _gather_group():
    """The group gathers travel in: the default one under gloo, else a gloo group made once (objects travel on the
    CPU, which NCCL and HCCL do not do)."""
    global _GATHER_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _GATHER_GROUP is None:
        _GATHER_GROUP = dist.new_group(backend="gloo")
    return _GATHER_GROUP


def _image_slice(num_images: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of the images (sizes differ by at most one)."""
    return range(num_images * rank // world, num_images * (rank + 1) // world)


# --- the evaluation -----------------------------------------------------------------------------------------------
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


def retrieval_scores(
    model,
    images: Sequence,
    captions: Mapping[str, torch.Tensor],
    k: int | str | None = 128,
    batch_size: int = 256,
    cache_dir: str | None = None,
    data_key: str | None = None,
    bf16: bool = False,
    progress: bool = True,
    num_workers: int = 0,
) -> RetrievalScores:
    """The (images x captions) retrieval scores; see `evaluate_retrieval` for the arguments."""
    top_k = parse_k(k)
    _check_model(model, top_k)
    rank, world = _rank_and_world()
    device = next(model.parameters()).device
    input_ids, attention_mask = captions["input_ids"], captions["attention_mask"]
    num_images, num_captions = len(images), input_ids.shape[0]
    if num_images == 0 or num_captions == 0:
        raise RetrievalError(f"nothing to evaluate: {num_images} images, {num_captions} captions.")
    # ITC embeddings whenever the heads exist (cheap, and reported as ITC-alone metrics); top k needs them, "all" not.
    use_itc = has_itc_heads(model)
    top_layers = model.config.num_bridges + 1
    mine = _image_slice(num_images, rank, world)
    store_dtype = torch.bfloat16 if bf16 else torch.float32
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    show = progress and rank == 0
    pad = device.type == "hpu"  # static shapes on HPU: every batch padded to batch_size

    text_file = image_file = None
    if cache_dir is not None:
        weights = model_fingerprint(model)
        precision = "bf16" if bf16 else "fp32"
        text_key = _digest(weights, precision, _tensor_bytes(input_ids), _tensor_bytes(attention_mask))
        image_key = _digest(weights, precision, data_key or _images_fingerprint(images), num_images, mine)
        text_file = os.path.join(cache_dir, f"captions-{text_key}.safetensors")
        image_file = os.path.join(cache_dir, f"images-{image_key}.safetensors")

    def encode_captions() -> dict[str, torch.Tensor]:
        tower = _maybe_hpu_graph(_TextTower(model, top_layers), device)
        parts = []
        for start in tqdm(range(0, num_captions, batch_size), desc="text tower", unit="batch", disable=not show):
            ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
            count = ids.shape[0]
            if pad:
                ids, mask = _pad_rows([ids, mask], batch_size)
            ids, mask = ids.to(device), mask.to(device)
            states = tower(ids, mask)
            part = {f"state{layer}": s[:count].to(store_dtype) for layer, s in enumerate(states)}
            if use_itc:
                part["itc"] = model.itc_text_embeddings(TowerOutput(states, mask))[:count].float()
            parts.append(part)
        tensors = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
        tensors["mask"] = attention_mask.to(device)
        return tensors

    def encode_images() -> dict[str, torch.Tensor]:
        tower = _maybe_hpu_graph(_ImageTower(model, top_layers), device)
        loader = DataLoader(
            Subset(images, mine), batch_size=batch_size, num_workers=num_workers, collate_fn=torch.stack
        )
        parts = []
        for pixels in tqdm(loader, desc="image tower", unit="batch", disable=not show):
            count = pixels.shape[0]
            if pad:
                (pixels,) = _pad_rows([pixels], batch_size)
            states = tower(pixels.to(device))
            part = {f"state{layer}": s[:count].to(store_dtype) for layer, s in enumerate(states)}
            if use_itc:
                part["itc"] = model.itc_image_embeddings(TowerOutput(states, None))[:count].float()
            parts.append(part)
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    was_training = model.training
    model.eval()
    seconds = {}
    try:
        with torch.inference_mode(), autocast:
            started = time.perf_counter()
            text, texts_cached = _load_or_compute(text_file, encode_captions, device)
            if len(mine) > 0:
                image, images_cached = _load_or_compute(image_file, encode_images, device)
            else:  # more ranks than images: nothing of its own to encode or score
                image, images_cached = None, True
            seconds["towers"] = time.perf_counter() - started

            started = time.perf_counter()
            itc = None
            if use_itc:
                local_itc = image["itc"] if image is not None else torch.zeros(0, text["itc"].shape[1])
                image_itc = torch.cat(_gather(local_itc))
                itc = image_itc @ text["itc"].float().cpu().t()  # (images, captions): every rank the same
            if top_k is not None:
                image_to_text, text_to_image = top_k_masks(itc, top_k)
            else:
                image_to_text = text_to_image = torch.ones(num_images, num_captions, dtype=torch.bool)
            candidates = image_to_text | text_to_image
            # Row-major order: this rank's pairs are the contiguous block of its images, sorted by image.
            local_images, local_texts = candidates[mine.start : mine.stop].nonzero(as_tuple=True)
            local_scores = torch.zeros(0)
            if image is not None:
                local_scores = _score_pairs(
                    _maybe_hpu_graph(_PairScorer(model, top_layers), device),
                    text,
                    image,
                    top_layers,
                    local_texts,
                    local_images,
                    batch_size,
                    device,
                    pad,
                    show,
                )
            itm = torch.full((num_images, num_captions), OUTSIDE_TOP_K)
            itm[candidates] = torch.cat(_gather(local_scores))  # ranks in order = the row-major order of `candidates`
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


def _score_pairs(scorer, text, image, top_layers, text_rows, image_rows, batch_size, device, pad, show):
    """ITM logits of the pairs (text_rows[i], image_rows[i]) (image rows local to this rank), batch by batch."""
    states = _states(text, top_layers) + _states(image, top_layers)
    scores = []
    for start in tqdm(range(0, len(text_rows), batch_size), desc="cross-modal (ITM)", unit="batch", disable=not show):
        rows = [text_rows[start : start + batch_size], image_rows[start : start + batch_size]]
        count = rows[0].shape[0]
        if pad:
            rows = _pad_rows(rows, batch_size)
        logits = scorer(rows[0].to(device), rows[1].to(device), text["mask"], *states)
        scores.append(logits[:count].float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def evaluate_retrieval(
    model,
    images: Sequence,
    captions: Mapping[str, torch.Tensor],
    caption_to_image: Sequence[int] | torch.Tensor,
    k: int | str | None = 128,
    batch_size: int = 256,
    cache_dir: str | None = None,
    data_key: str | None = None,
    bf16: bool = False,
    progress: bool = True,
    num_workers: int = 0,
) -> dict[str, float | int]:
    """Image-text retrieval metrics of `model` (in percent; flat, ready to log).

    - `model`: a BridgeTowerForPreTraining with the itc objective (top-k re-ranking), or any model with an ITM head
      (BridgeTowerForImageAndTextRetrieval, ForPreTraining without itc) for `k="all"`. It runs where it is; eval mode
      is set for the call and the training mode restored after.
    - `images`: a sequence of (3, H, W) pixel tensors, already transformed (a lazy sequence, e.g. `RetrievalData`'s,
      is read once, by a DataLoader with `num_workers`).
    - `captions`: {"input_ids", "attention_mask"}: (captions, length) tensors, padded to one length.
    - `caption_to_image`: for each caption, the index of its image in `images`.
    - `k`: ITC candidates re-ranked by ITM per query, in each direction (official: 128 Flickr30K, 256 COCO), or
      "all" / None: every pair.
    - `cache_dir`: keep the towers' states there, reused by the next call with the same weights and data. `data_key`
      names the images (their files and transform); without it the pixels are hashed.
    - `bf16`: bfloat16 autocast, and the states kept in bfloat16.

    Returns ir_r1/5/10, tr_r1/5/10, ir_mean, tr_mean, r_mean, rsum; the same with an itc_ prefix for ITC alone
    (models with ITC heads); pairs_scored, images_encoded, captions_encoded, num_images, num_captions; seconds_towers,
    seconds_itm.
    """
    result = retrieval_scores(model, images, captions, k, batch_size, cache_dir, data_key, bf16, progress, num_workers)
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
                )
                row.append(model.itm_score(out.pooler_output)[:, 1].float().cpu())
            rows.append(torch.cat(row))
    finally:
        model.train(was_training)
    return torch.stack(rows)


# --- data ---------------------------------------------------------------------------------------------------------
class _RecordImages(Dataset):
    """Images of records, decoded and transformed when read (by the tower's DataLoader workers)."""

    def __init__(self, records: list[RawRecord], builder: ExampleBuilder):
        self.records, self.builder = records, builder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.builder.image(self.records[index])


def _image_identity(image) -> str:
    """What an image's cached states depend on: a file's path, size and modification time, or in-memory content."""
    if isinstance(image, (str, os.PathLike)):
        try:
            stat = os.stat(image)
        except OSError:
            return f"{image}:missing"
        return f"{image}:{stat.st_size}:{stat.st_mtime_ns}"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(image)).hexdigest()
    if isinstance(image, torch.Tensor):
        return hashlib.sha256(_tensor_bytes(image)).hexdigest()
    if hasattr(image, "tobytes"):  # a PIL image
        return hashlib.sha256(f"{image.mode}:{image.size}".encode() + image.tobytes()).hexdigest()
    raise RetrievalError(f"cannot identify an image of type {type(image).__name__} for the cache.")


@dataclass
class RetrievalData:
    """A retrieval split: images (transformed when read), tokenized captions, each caption's image, and `key`,
    the identity of the images and their transform (the cache's data key)."""

    images: Sequence
    captions: dict[str, torch.Tensor]
    caption_to_image: torch.Tensor
    key: str
    image_ids: list[str]

    @classmethod
    def from_records(cls, records: Sequence[RawRecord], builder: ExampleBuilder) -> RetrievalData:
        """Records hold one caption each (as every source yields them); captions are grouped by `image_id`, images
        numbered in order of first appearance."""
        index_of: dict[str, int] = {}
        image_records, caption_to_image, encoded = [], [], []
        for record in records:
            if record.image_id not in index_of:
                index_of[record.image_id] = len(image_records)
                image_records.append(record)
            caption_to_image.append(index_of[record.image_id])
            encoded.append(builder.caption(record))
        if not encoded:
            raise DataConfigError("no captions to evaluate retrieval on.")
        captions = {name: torch.stack([e[name] for e in encoded]) for name in ("input_ids", "attention_mask")}
        transform = builder.transform
        key = _digest(transform.mode, transform.image_size, *(_image_identity(r.image) for r in image_records))
        return cls(
            images=_RecordImages(image_records, builder),
            captions=captions,
            caption_to_image=torch.tensor(caption_to_image),
            key=key,
            image_ids=[r.image_id for r in image_records],
        )


def karpathy_records(data_file: str, image_root: str | None, split: str) -> list[RawRecord]:
    """The records (one per caption, images as paths) of one split of a Karpathy file; a malformed entry is an error
    here (evaluating on part of a test split would give wrong numbers)."""
    skip_log = SkipLog()
    try:
        source = KarpathySource(data_file, image_root, [split], skip_log)
        if skip_log.entries():
            raise DataConfigError(f"{data_file}: malformed entries in the file: {skip_log.report()}.")
    finally:
        os.remove(skip_log.path)
    if len(source) == 0:
        raise DataConfigError(f"{data_file} has no images in split {split!r}: check --split (test, val, ...).")
    return [source[index] for index in range(len(source))]


def synthetic_records(num_images: int, captions_per_image: int, seed: int, image_size: int = 64) -> list[RawRecord]:
    """`num_images` images of the synthetic source, each with `captions_per_image` captions: its colour, shape and
    position in each caption template in turn (the templates repeat past three captions)."""
    records = []
    for index in range(num_images):
        attributes = synthetic_attributes(seed, index)
        image = draw_shape(attributes, image_size)
        for number in range(captions_per_image):
            caption = TEMPLATES[number % len(TEMPLATES)].format(**attributes)
            records.append(RawRecord(image, caption, f"synthetic:{index}", f"synthetic[{index}]#{number}"))
    return records


# --- command line -------------------------------------------------------------------------------------------------
@dataclass
class RetrievalArguments:
    model_name_or_path: str = field(metadata={"help": "A checkpoint folder (weights, config and tokenizer)."})
    data_file: str | None = field(
        default=None,
        metadata={"help": "A Karpathy split file (dataset_flickr30k.json, dataset_coco.json); none: synthetic data."},
    )
    image_root: str | None = field(default=None, metadata={"help": "The folder the Karpathy image paths start from."})
    split: str = field(default="test", metadata={"help": "The Karpathy split to evaluate (test, val)."})
    k: str = field(
        default="128",
        metadata={
            "help": "ITC candidates re-ranked by ITM per query, in each direction (official: 128 Flickr30K, 256 "
            "COCO), or 'all': every pair (exact, slow; also for checkpoints without ITC heads)."
        },
    )
    batch_size: int = field(default=256, metadata={"help": "Images, captions or pairs per forward pass."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where the towers' states are kept and reused (same checkpoint and data)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": f"Where {RESULTS_FILE} is written."})
    device: str = field(default="auto", metadata={"choices": ["auto", "cpu", "cuda", "hpu"]})
    bf16: bool = field(default=False, metadata={"help": "bfloat16 autocast; states kept in bfloat16."})
    max_seq_length: int = field(default=40, metadata={"help": "Caption length in tokens (official retrieval: 40)."})
    image_transform: str = field(
        default="blip",
        metadata={
            "choices": ["blip", "clip"],
            "help": "blip (squash: evaluation after fine-tuning, the official irtr) or clip (resize + centre crop: "
            "zero-shot, after pre-training).",
        },
    )
    num_workers: int = field(default=2, metadata={"help": "Image-decoding worker processes."})
    synthetic_images: int = field(default=100, metadata={"help": "Synthetic data: number of images."})
    synthetic_captions_per_image: int = field(default=5, metadata={"help": "Synthetic data: captions per image."})
    synthetic_seed: int = field(
        default=10_007, metadata={"help": "Synthetic data: seed (10007: run_pretrain.py's held-out images)."}
    )
    progress: bool = field(default=True, metadata={"help": "Progress bars (--no_progress: none)."})


def _setup_distributed(device: str) -> str:
    """Under torchrun (WORLD_SIZE > 1) join the process group; the device this process uses."""
    device = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        return f"cuda:{local_rank}"
    if device == "hpu":
        from ..device.gaudi import register_hccl_backend

        register_hccl_backend()
        dist.init_process_group("hccl")
        return device
    dist.init_process_group("gloo")
    return device


def run(args: RetrievalArguments) -> dict:
    """Evaluate the checkpoint on the data the arguments name; rank 0 prints and writes the results."""
    from transformers import AutoTokenizer  # after --help is answered

    k = parse_k(args.k)
    device = _setup_distributed(args.device)
    model, config = load_model(args.model_name_or_path, device)
    _check_model(model, k)
    position_limit = config.text_config.max_position_embeddings - 2  # RoBERTa numbers positions from pad + 1
    if args.max_seq_length > position_limit:
        raise RetrievalError(f"--max_seq_length {args.max_seq_length}: the model has {position_limit} positions.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    except (OSError, ValueError) as error:
        raise RetrievalError(
            f"{args.model_name_or_path!r} has no tokenizer ({error}); save one beside the weights."
        ) from None
    builder = ExampleBuilder(
        tokenizer, ImageTransform(config.vision_config.image_size, args.image_transform), args.max_seq_length
    )
    if args.data_file:
        records = karpathy_records(args.data_file, args.image_root, args.split)
        data_name = f"{args.data_file} ({args.split})"
    else:
        size = max(64, config.vision_config.image_size)  # drawn as the pre-training data path draws them
        records = synthetic_records(args.synthetic_images, args.synthetic_captions_per_image, args.synthetic_seed, size)
        data_name = f"synthetic (seed {args.synthetic_seed})"
    data = RetrievalData.from_records(records, builder)
    metrics = evaluate_retrieval(
        model,
        data.images,
        data.captions,
        data.caption_to_image,
        k=k,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        data_key=data.key,
        bf16=args.bf16,
        progress=args.progress,
        num_workers=args.num_workers,
    )
    results = {
        "model": args.model_name_or_path,
        "data": data_name,
        "k": "all" if k is None else k,
        "image_transform": args.image_transform,
        "max_seq_length": args.max_seq_length,
        "bf16": args.bf16,
        "world_size": _rank_and_world()[1],
        **metrics,
    }
    if _rank_and_world()[0] == 0:
        print(format_results(results))
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, RESULTS_FILE), "w") as f:
                json.dump(results, f, indent=2)
    return results


def format_results(results: dict) -> str:
    """A readable summary: the six recalls and RSUM (and ITC alone when it ranked)."""
    names = [f"{side}_r{k}" for side in ("ir", "tr") for k in RECALL_AT] + ["rsum"]
    lines = [
        f"retrieval on {results['data']}: {results['num_images']} images, {results['num_captions']} captions, "
        f"k={results['k']}, {results['pairs_scored']} pairs through the cross-modal encoder",
        "        " + "  ".join(f"{name:>7}" for name in names),
        "ITM     " + "  ".join(f"{results[name]:7.2f}" for name in names),
    ]
    if "itc_rsum" in results:
        lines.append("ITC     " + "  ".join(f"{results['itc_' + name]:7.2f}" for name in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(RetrievalArguments).parse_args_into_dataclasses(args=argv)
    try:
        return run(args)
    except (RetrievalError, PipelineError, DataConfigError, BadRecord) as error:
        raise SystemExit(f"error: {error}") from None
