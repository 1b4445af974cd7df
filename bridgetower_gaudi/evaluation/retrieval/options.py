"""How a retrieval evaluation runs (`RetrievalOptions`), and the checks of a model and options before anything
runs."""

from __future__ import annotations

from dataclasses import dataclass

from ...inference.towers import has_itc_heads
from .metrics import RetrievalError


@dataclass
class RetrievalOptions:
    """Options of `retrieval_scores` / `evaluate_retrieval`; the defaults are theirs."""

    # ITC candidates re-ranked by ITM per query, in each direction (official: 128 Flickr30K, 256 COCO), or "all" /
    # None: every pair (no ITC heads needed).
    k: int | str | None = 128
    batch_size: int = 256  # images, captions or pairs per forward pass
    # Keep the towers' states there, reused by the next call with the same weights and data.
    cache_dir: str | None = None
    # Names the images for the cache (their files and transform, e.g. `RetrievalData.key`); None: the pixels are
    # hashed (every image read once more).
    data_key: str | None = None
    bf16: bool = False  # bfloat16 autocast, and the states kept in bfloat16
    progress: bool = True  # progress bars (rank 0)
    num_workers: int = 0  # DataLoader workers decoding the images


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


def check_model(model, k: int | None) -> None:
    """A RetrievalError naming the fix when `model` cannot be evaluated with `k` (parsed) candidates."""
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
