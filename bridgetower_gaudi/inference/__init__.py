"""The parts of inference that the pipeline (`bridgetower_gaudi.pipeline`) and the retrieval evaluation
(`bridgetower_gaudi.evaluation.retrieval`) share: loading a checkpoint, its inputs as tensors, the towers run in
static-shape batches, ranking, and the on-disk cache of a folder's image states."""

from .image_cache import CACHE_DIR_NAME, FolderStates, ImageStateCache, checkpoint_key, list_images
from .inputs import PipelineInputs
from .loading import PipelineError, load_model, load_tokenizer, resolve_device
from .ranking import SearchResult, rank
from .towers import TowerRunner

__all__ = [
    "CACHE_DIR_NAME",
    "FolderStates",
    "ImageStateCache",
    "PipelineError",
    "PipelineInputs",
    "SearchResult",
    "TowerRunner",
    "checkpoint_key",
    "list_images",
    "load_model",
    "load_tokenizer",
    "rank",
    "resolve_device",
]
