"""Data flags shared by every run script, and the one function that turns them into datasets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .collator import ITM_NEGATIVES
from .dataset import ExampleBuilder, ImageTextDataset, StreamingImageTextDataset, check_readable
from .images import TRANSFORM_ALIASES, TRANSFORMS, ImageTransform, evaluation_transform
from .records import SkipLog
from .sources import (
    ArrowSource,
    DataConfigError,
    HFDatasetSource,
    JsonLinesSource,
    KarpathySource,
    MapSource,
    WebDatasetSource,
    is_url,
)
from .synthetic import SYNTHETIC_TASKS, SyntheticSource

# The pre-training / retrieval readers, then the downstream tasks' own files (data.task_sources).
FORMATS = ("auto", "karpathy", "arrow", "webdataset", "jsonl", "csv", "synthetic", "vqa_v2", "snli_ve", "nlvr2")


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` name or local path."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The `datasets` configuration."})
    train_file: list[str] | None = field(default=None, metadata={"help": "One or more training files (mixed)."})
    validation_file: list[str] | None = field(default=None, metadata={"help": "One or more validation files."})
    test_file: list[str] | None = field(
        default=None, metadata={"help": "Test files for --do_predict (VQAv2: the test questions json)."}
    )
    train_annotation_file: list[str] | None = field(
        default=None,
        metadata={"help": "VQAv2: the annotations of each --train_file, in the same order (the official recipe "
                  "trains on train2014 + val2014: two questions files, two annotation files)."},
    )  # fmt: skip
    validation_annotation_file: list[str] | None = field(
        default=None, metadata={"help": "VQAv2: the annotations of each --validation_file, in the same order."}
    )
    dataset_format: str | None = field(
        default=None,
        metadata={
            "help": f"One of {FORMATS}; auto guesses per file. Default: synthetic without data flags, auto with them."
        },
    )
    image_root: str | None = field(default=None, metadata={"help": "Folder that relative image paths start from."})
    image_column: str = field(default="image", metadata={"help": "Column / field holding the image."})
    caption_column: str = field(default="caption", metadata={"help": "Column / field holding the caption(s)."})
    train_split: str = field(
        default="train",
        metadata={"help": "Split(s) for training, comma-separated (Karpathy: restval counts with train; Flickr30K "
                  "retrieval trains on train,val)."},
    )  # fmt: skip
    validation_split: str | None = field(
        default=None, metadata={"help": "Split for evaluation (default: 'val' in Karpathy files, else 'validation')."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream records instead of random access."})
    stream_shuffle_block: int = field(
        default=1000,
        metadata={
            "help": "Streamed training data: shards in a new order each epoch and records shuffled in blocks of this "
            "many, held as raw bytes by each reader (0: file order). Evaluation streams in file order."
        },
    )
    max_seq_length: int = field(default=50, metadata={"help": "Every caption is padded / truncated to this."})
    length_buckets: str | None = field(
        default=None,
        metadata={"help": "Comma-separated caption lengths, e.g. 16,24,32,50: each batch is cut to the smallest that "
                  "holds its longest caption (at most that many shapes: HPU graphs / compiles); a batch longer than "
                  "every bucket keeps --max_seq_length. Default: every batch at --max_seq_length."},
    )  # fmt: skip
    image_size: int | None = field(default=None, metadata={"help": "Image side; default: the model's."})
    image_transform: str = field(
        default="clip",
        metadata={
            "help": "Training images, by the official transform key: clip (pre-training), blip_randaug_wc (fine-"
            "tuning), blip_randaug_wohf (VQA: no flip) or blip. Evaluation uses clip after clip, blip (squash) else."
        },
    )
    itm_negatives: str | None = field(
        default=None,
        metadata={
            "help": "Where ITM negatives come from: dataset (a random image of the data set, the official recipe; "
            "the default), in_batch (another image of the batch: no extra image decoding) or itc_hard (sampled from "
            "ITC similarities, both directions, positives : negatives = 1 : 2; the default with the itc objective)."
        },
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked for MLM."})
    whole_word_masking: bool = field(default=False, metadata={"help": "Mask every piece of a chosen word."})
    synthetic_train_size: int = field(default=4096, metadata={"help": "Synthetic pairs for training."})
    synthetic_eval_size: int = field(default=512, metadata={"help": "Synthetic pairs for evaluation (held out)."})
    synthetic_task: str = field(
        default="shapes",
        metadata={"help": "Synthetic data: shapes (one shape; the default run's) or relations (two shapes in a spatial "
                  "relation and a distractor: the ablations' harder task)."},
    )  # fmt: skip
    deterministic_masking: bool = field(
        default=False, metadata={"help": "Mask / pair each batch from a seed and its content (same on any world size)."}
    )
    skipped_records_file: str | None = field(default=None, metadata={"help": "Where skipped records are logged."})

    def __post_init__(self):
        if self.image_transform not in {**TRANSFORMS, **TRANSFORM_ALIASES}:
            raise DataConfigError(
                f"--image_transform {self.image_transform!r}: choose one of {sorted(TRANSFORMS)} "
                f"(or {sorted(TRANSFORM_ALIASES)})."
            )
        has_data = self.dataset_name or self.train_file or self.validation_file or self.test_file
        if self.dataset_format is None:
            # Data flags without a format mean "read these files", never the synthetic stand-in: guess per file (the
            # downstream tasks' readers take auto too).
            self.dataset_format = "auto" if has_data else "synthetic"
        if self.dataset_format == "synthetic" and has_data:
            raise DataConfigError(
                "--dataset_format synthetic makes its own data and reads no files: drop it to read --train_file / "
                "--validation_file / --test_file / --dataset_name (the format is then guessed per file), or name "
                f"their format ({', '.join(FORMATS[1:6])}, or the task's own: vqa_v2, snli_ve, nlvr2)."
            )
        if self.dataset_format not in FORMATS:
            raise DataConfigError(f"--dataset_format {self.dataset_format!r}: choose one of {FORMATS}.")
        if self.itm_negatives is not None and self.itm_negatives not in ITM_NEGATIVES:
            raise DataConfigError(f"--itm_negatives {self.itm_negatives!r}: choose one of {ITM_NEGATIVES[:3]}.")
        self.bucket_lengths = parse_length_buckets(self.length_buckets, self.max_seq_length)
        if self.synthetic_task not in SYNTHETIC_TASKS:
            raise DataConfigError(f"--synthetic_task {self.synthetic_task!r}: choose one of {SYNTHETIC_TASKS}.")
        if self.dataset_format != "synthetic" and not has_data:
            raise DataConfigError(
                f"--dataset_format {self.dataset_format} needs --train_file / --validation_file or --dataset_name."
            )


def default_loader_workers(args, given: set[str], accelerator: bool) -> None:
    """Loader defaults for flags the user did not give (`given`: flag names). On an accelerator (HPU, CUDA) the
    decoding runs beside the device: `--dataloader_num_workers` defaults to the cores this process may use divided by
    the processes on this node (torchrun's LOCAL_WORLD_SIZE), one left to the training process; on CPU it stays 0
    (the workers would take the cores the step runs on). With workers, each prefetches 4 batches, so a slow image
    does not stall the step, and they persist across epochs (no start-up per epoch; a streamed data set still
    restarts its workers each pass: training.streaming). Runs and resumes draw exactly as without persistence: the
    trainer draws the workers' base seed before each later pass, as torch does when it makes them
    (training.streaming.draw_as_new_workers_do), and no data draw uses a worker's random state
    (data.dataset.draw_seed)."""
    if accelerator and "dataloader_num_workers" not in given:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        args.dataloader_num_workers = max(0, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1)
    if args.dataloader_num_workers > 0 and "dataloader_prefetch_factor" not in given:
        args.dataloader_prefetch_factor = args.dataloader_prefetch_factor or 4
    if args.dataloader_num_workers > 0 and "dataloader_persistent_workers" not in given:
        args.dataloader_persistent_workers = True


def parse_length_buckets(text: str | None, max_seq_length: int) -> list[int]:
    """'16,24,32,50' -> [16, 24, 32, 50] (sorted); DataConfigError naming the fix when a bucket is not a positive
    whole number or is longer than --max_seq_length (captions are cut there)."""
    if not text:
        return []
    try:
        buckets = sorted({int(item) for item in text.split(",") if item.strip()})
    except ValueError:
        problem = f"--length_buckets {text!r}: give comma-separated whole numbers, e.g. 16,24,32,50."
        raise DataConfigError(problem) from None
    if not buckets or buckets[0] < 2 or buckets[-1] > max_seq_length:
        raise DataConfigError(
            f"--length_buckets {text!r}: every bucket must be between 2 and --max_seq_length {max_seq_length} "
            "(captions are padded / cut to --max_seq_length first)."
        )
    return buckets


def guess_format(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".arrow"):
        return "arrow"
    if lower.endswith((".tar", ".tar.gz", ".tgz")):
        return "webdataset"
    if lower.endswith(".jsonl"):
        return "jsonl"
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".json"):
        with open(path) as f:
            head = f.read(4096)
        return "karpathy" if '"images"' in head else "jsonl"
    raise DataConfigError(f"cannot tell the format of {path}: pass --dataset_format.")


def build_sources(
    args: DataArguments,
    files: list[str] | None,
    split: str,
    skip_log: SkipLog,
    synthetic_size: int,
    synthetic_seed: int,
    image_size: int,
) -> list:
    """The sources for one split. Several files are mixed; arrow files and tar shards form one source each."""
    if args.dataset_format == "synthetic" and not files and not args.dataset_name:
        size = max(64, image_size)
        return [SyntheticSource(synthetic_size, seed=synthetic_seed, image_size=size, task=args.synthetic_task)]
    sources = []
    if split is None:  # the evaluation split's conventional name differs between Karpathy files and `datasets`
        split = "validation" if args.dataset_name else "val"
    if args.dataset_name:
        sources.append(
            HFDatasetSource(
                args.dataset_name,
                args.dataset_config_name,
                split,
                args.image_column,
                args.caption_column,
                args.image_root,
                skip_log,
            )
        )
    grouped: dict[str, list[str]] = {}
    for path in files or []:
        if not (os.path.exists(path) or is_url(path) or "{" in path):  # shard lists are checked by their reader
            raise DataConfigError(f"data file {path!r} does not exist: check --train_file / --validation_file.")
        fmt = guess_format(path) if args.dataset_format == "auto" else args.dataset_format
        grouped.setdefault(fmt, []).append(path)
    for fmt, paths in grouped.items():
        if fmt == "arrow":
            sources.append(ArrowSource(paths, args.image_column, args.caption_column, skip_log))
        elif fmt == "webdataset":
            sources.append(WebDatasetSource(paths))
        elif fmt == "karpathy":
            sources += [KarpathySource(p, args.image_root, split.split(","), skip_log) for p in paths]
        elif fmt in ("jsonl", "csv"):
            sources += [
                JsonLinesSource(p, args.image_root, args.image_column, args.caption_column, skip_log) for p in paths
            ]
        else:
            raise DataConfigError(f"--dataset_format {fmt} cannot read {paths[0]}.")
    return sources


def build_dataset(
    args: DataArguments,
    tokenizer,
    image_size: int,
    split: str = "train",
    seed: int = 0,
    skip_log: SkipLog | None = None,
    rank: int | None = None,
    world_size: int | None = None,
):
    """The training (`split="train"`) or evaluation dataset the flags describe, checked for readability."""
    skip_log = skip_log or SkipLog(args.skipped_records_file)
    train = split == "train"
    files = args.train_file if train else args.validation_file
    split_name = args.train_split if train else args.validation_split
    synthetic_size = args.synthetic_train_size if train else args.synthetic_eval_size
    # Held-out synthetic pairs come from another seed: no evaluation image was seen in training.
    sources = build_sources(
        args, files, split_name, skip_log, synthetic_size, seed + (0 if train else 10_007), image_size
    )
    if not sources:
        return None
    mode = args.image_transform if train else evaluation_transform(args.image_transform)
    # uint8 through the loader (a quarter of float32's bytes); the model normalises on the device (normalize_pixels).
    builder = ExampleBuilder(tokenizer, ImageTransform(image_size, mode, uint8=True), args.max_seq_length)
    # Data-set negatives are drawn for training only: evaluation pairs images within the batch (see build_trainer).
    negatives = (args.itm_negatives or "none") if train else "none"
    streaming = args.streaming or any(not isinstance(s, MapSource) for s in sources)
    check_readable(sources, builder)
    if streaming:
        shuffle_block = args.stream_shuffle_block if train else 0
        return StreamingImageTextDataset(
            sources, builder, skip_log, negatives, rank, world_size, seed=seed, shuffle_block=shuffle_block
        )
    return ImageTextDataset(sources, builder, skip_log, negatives, seed=seed)
