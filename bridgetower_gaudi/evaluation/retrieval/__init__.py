"""Image-text retrieval evaluation (Flickr30K / COCO Karpathy test splits): IR@1/5/10, TR@1/5/10 and RSUM.

Done naively, every (image, caption) pair runs the whole model: 1,000 x 5,000 = 5M passes on Flickr30K. Here:

1. Towers once. Every image and every caption goes through its uni-modal tower once (`inference.towers`, shared
   with the inference pipeline); only the top `num_bridges + 1` hidden states (all the cross-modal encoder reads)
   and the ITC embeddings are kept. With `cache_dir` they are saved as safetensors files named by a hash of the
   weights, the precision and the data (`cache`), so a second evaluation of the same checkpoint on the same data
   skips the towers.
2. ITC ranks every pair (cosine similarity of the normalised ITC embeddings).
3. ITM re-ranks. The `k` best captions of every image and the `k` best images of every caption (official `k_test`:
   128 on Flickr30K, 256 on COCO) go through the cross-modal encoder, each distinct pair once, in batches; a pair's
   score is the ITM logit of "match" (`itm_score(...)[:, 1]`, as the official code).
4. The two directions are combined as the official `compute_irtr_itm_itc_recall` (microsoft/BridgeTower,
   src/modules/objectives.py) does (`metrics.combine_directions`): each direction has an (images x captions) matrix
   holding the ITM score on its own top-k pairs and -100 everywhere else; the final score is their element-wise
   maximum, and both IR and TR rank by it.

`k="all"` scores every pair (no ITC needed, so ITM-only checkpoints work too) and ranks exactly as running every pair
through the whole model (`naive_scores`), only without re-running the towers.

Distributed (torch.distributed initialised, e.g. under torchrun or the Trainer; `distributed`): rank r runs the vision
tower on its contiguous slice of the images and scores the candidate pairs that fall on those images (its
image->text queries, and the text->image candidates that land on its images), so no rank needs another rank's image
states. Every rank runs the text tower on all captions (short texts: small next to the cross-modal passes). ITC
embeddings and pair scores are gathered, and every rank returns the same metrics.

Tower states stay on the model's device for the whole evaluation (as the official code keeps them on the GPU): for
BridgeTower-base about 10 MB per image and 0.7 MB per caption in fp32, half with `bf16=True`; split the images over
more ranks when they do not fit.

Modules: `metrics` (pure functions), `options` (`RetrievalOptions`), `scoring` (the evaluation), `cache`,
`distributed`, `data` (Karpathy / synthetic splits), `cli` (`run_scripts/run_eval_retrieval.py`).
"""

from .cli import RESULTS_FILE, RetrievalArguments, main
from .data import RetrievalData, karpathy_records, synthetic_records
from .metrics import RetrievalError, combine_directions, recall_metrics, top_k_masks
from .options import RetrievalOptions
from .scoring import RetrievalScores, evaluate_retrieval, naive_scores, retrieval_scores

__all__ = [
    "RESULTS_FILE",
    "RetrievalArguments",
    "RetrievalData",
    "RetrievalError",
    "RetrievalOptions",
    "RetrievalScores",
    "combine_directions",
    "evaluate_retrieval",
    "karpathy_records",
    "main",
    "naive_scores",
    "recall_metrics",
    "retrieval_scores",
    "synthetic_records",
    "top_k_masks",
]
