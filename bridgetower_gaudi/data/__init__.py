"""One data path for every device and task: sources -> decode / transform / tokenize -> MLM / ITM collator."""

from .builder import DataArguments, build_dataset, build_sources, guess_format
from .collator import PretrainingCollator, TaskCollator
from .dataset import ExampleBuilder, ImageTextDataset, StreamingImageTextDataset
from .images import ImageTransform, decode_image
from .records import SKIP_REASONS, BadRecord, RawRecord, SkipLog
from .sources import DataConfigError
from .synthetic import SyntheticSource, synthetic_tokenizer

__all__ = [
    "SKIP_REASONS",
    "BadRecord",
    "DataArguments",
    "DataConfigError",
    "ExampleBuilder",
    "ImageTextDataset",
    "ImageTransform",
    "PretrainingCollator",
    "RawRecord",
    "SkipLog",
    "StreamingImageTextDataset",
    "SyntheticSource",
    "TaskCollator",
    "build_dataset",
    "build_sources",
    "decode_image",
    "guess_format",
    "synthetic_tokenizer",
]
