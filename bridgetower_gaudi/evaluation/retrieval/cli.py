"""`run_scripts/run_eval_retrieval.py`: the retrieval evaluation of a checkpoint folder on a Karpathy split or on
synthetic data, from the command line (under torchrun the ranks split the images)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ...data.dataset import ExampleBuilder
from ...data.images import ImageTransform
from ...data.records import BadRecord
from ...data.sources import DataConfigError
from ...inference.loading import PipelineError, load_model, load_tokenizer
from .data import RetrievalData, karpathy_records, synthetic_records
from .distributed import leave, rank_and_world, setup_distributed
from .metrics import RECALL_AT, RetrievalError
from .options import RetrievalOptions, check_model, parse_k
from .scoring import evaluate_retrieval

RESULTS_FILE = "retrieval_results.json"


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

    def options(self) -> RetrievalOptions:
        """The evaluation options these flags give (`data_key` comes from the data)."""
        return RetrievalOptions(
            k=parse_k(self.k),
            batch_size=self.batch_size,
            cache_dir=self.cache_dir,
            bf16=self.bf16,
            progress=self.progress,
            num_workers=self.num_workers,
        )


def load_data(args: RetrievalArguments, builder: ExampleBuilder, image_size: int) -> tuple[RetrievalData, str]:
    """(the split the flags name, its name for the report): a Karpathy file's, or synthetic images."""
    if args.data_file:
        records = karpathy_records(args.data_file, args.image_root, args.split)
        return RetrievalData.from_records(records, builder), f"{args.data_file} ({args.split})"
    size = max(64, image_size)  # drawn as the pre-training data path draws them
    records = synthetic_records(args.synthetic_images, args.synthetic_captions_per_image, args.synthetic_seed, size)
    return RetrievalData.from_records(records, builder), f"synthetic (seed {args.synthetic_seed})"


def run(args: RetrievalArguments) -> dict:
    """Evaluate the checkpoint on the data the arguments name; rank 0 prints and writes the results."""
    options = args.options()
    device = setup_distributed(args.device)
    model, config = load_model(args.model_name_or_path, device)
    check_model(model, options.k)
    if args.max_seq_length > (positions := config.text_positions):
        raise RetrievalError(f"--max_seq_length {args.max_seq_length}: the model has {positions} positions.")
    tokenizer = load_tokenizer(args.model_name_or_path)
    transform = ImageTransform(config.vision_config.image_size, args.image_transform)
    data, data_name = load_data(args, ExampleBuilder(tokenizer, transform, args.max_seq_length), transform.image_size)
    options.data_key = data.key
    metrics = evaluate_retrieval(model, data.images, data.captions, data.caption_to_image, options)
    results = {
        "model": args.model_name_or_path,
        "data": data_name,
        "k": "all" if options.k is None else options.k,
        "image_transform": args.image_transform,
        "max_seq_length": args.max_seq_length,
        "bf16": args.bf16,
        "world_size": rank_and_world()[1],
        **metrics,
    }
    if rank_and_world()[0] == 0:
        print(format_results(results))
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, RESULTS_FILE), "w") as f:
                json.dump(results, f, indent=2)
    leave()
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
