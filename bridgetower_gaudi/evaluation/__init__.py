"""Evaluation beyond the trainer's per-batch metrics: image-text retrieval (IR@K, TR@K, RSUM)."""

from .retrieval import (
    RetrievalArguments,
    RetrievalData,
    RetrievalError,
    RetrievalScores,
    combine_directions,
    evaluate_retrieval,
    karpathy_records,
    naive_scores,
    recall_metrics,
    retrieval_scores,
    synthetic_records,
    top_k_masks,
)

__all__ = [
    "RetrievalArguments",
    "RetrievalData",
    "RetrievalError",
    "RetrievalScores",
    "combine_directions",
    "evaluate_retrieval",
    "karpathy_records",
    "naive_scores",
    "recall_metrics",
    "retrieval_scores",
    "synthetic_records",
    "top_k_masks",
]
