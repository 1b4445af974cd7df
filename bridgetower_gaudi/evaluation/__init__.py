"""Evaluation beyond the trainer's per-batch metrics: image-text retrieval (IR@K, TR@K, RSUM; `retrieval`) and the
VQA answers and metrics (`vqa`). The retrieval API is re-exported here."""

from . import retrieval
from .retrieval import *  # noqa: F403 (the retrieval package's public names, as its __all__ lists them)

__all__ = retrieval.__all__
