"""Retrieval metrics as pure functions: IR@K / TR@K / RSUM from a score matrix, and the official rule that combines
the two directions' top-k re-ranking into one."""

from __future__ import annotations

import torch

OUTSIDE_TOP_K = -100.0  # the official score of a pair outside a direction's top k
RECALL_AT = (1, 5, 10)


class RetrievalError(ValueError):
    """A model, option or input that cannot evaluate retrieval; the message says what to do."""


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
