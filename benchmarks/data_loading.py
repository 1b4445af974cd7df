"""Data-loading throughput: examples/s per loader worker (one core each: torch gives a worker one thread) for the
pre-training path (decode JPEG, resize + center crop to --image_size as uint8, tokenise, MLM / ITM collate; the
pixels are normalised on the device, in the step), on JPEG files this script writes (COCO-like 640x480), and the
workers a device needs to keep up with a given step rate.

    python benchmarks/data_loading.py --image_size 288 --workers 1 2 --images 512 --device_examples_per_second 113.1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from bridgetower_gaudi.data import DataArguments, PretrainingCollator, build_dataset, synthetic_tokenizer


def write_jpegs(folder: str, count: int, size=(640, 480)) -> str:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        # Smooth random images compress like photos (pure noise would inflate decode cost).
        small = rng.integers(0, 255, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BICUBIC).save(os.path.join(folder, f"{i}.jpg"), quality=90)
        rows.append(json.dumps({"image": f"{i}.jpg", "caption": "a red circle on the left near a blue square"}))
    path = os.path.join(folder, "data.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(rows))
    return path


# A real card's step rate, for the workers it needs: the published per-card rate of optimum-habana's BridgeTower
# benchmark (large, ITC fine-tuning, batch 48), Gaudi2 904.9 samples/s on 8 cards
# (run_benchmarks.OPTIMUM_HABANA_8_CARDS).
GAUDI2_EXAMPLES_PER_SECOND = 904.9 / 8


def workers_needed(device_examples_per_second: float, examples_per_second_per_worker: float) -> dict:
    """Loader workers (cores) a device stepping at `device_examples_per_second` needs: the exact ratio, and whole
    workers (at least one)."""
    ratio = device_examples_per_second / examples_per_second_per_worker
    return {"device_examples_per_second": device_examples_per_second, "workers": ratio,
            "whole_workers": max(1, math.ceil(ratio))}  # fmt: skip


def loader_rate(dataset, collator, workers: int, batch_size: int, batches: int) -> float:
    """Examples/s a DataLoader with `workers` workers delivers, worker start-up excluded."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collator,
        drop_last=True,
        prefetch_factor=4 if workers else None,  # the training default (data.builder.default_loader_workers)
    )
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += next(iterator)["pixel_values"].shape[0]
    return count / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=288)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument(
        "--itm_negatives",
        default="dataset",
        choices=["dataset", "in_batch"],
        help="dataset (the default recipe: a data-set negative decoded for the half of the examples that are ITM "
        "negatives, 1.5 decodes per example) or in_batch (one decode per example).",
    )
    parser.add_argument(
        "--device_examples_per_second",
        type=float,
        default=GAUDI2_EXAMPLES_PER_SECOND,
        help="a device's training step rate, for the workers it needs (default: the published Gaudi2 per-card rate "
        "of BridgeTower-large ITC fine-tuning, 113.1)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = synthetic_tokenizer()
    collator = PretrainingCollator(tokenizer, itm_negatives=args.itm_negatives)
    machine = f"{platform.node()} ({os.cpu_count()} cores)"
    print(
        f"# data loading, {machine}, image_size={args.image_size}, itm_negatives={args.itm_negatives}, "
        f"torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as folder:
        jsonl = write_jpegs(folder, args.images)
        sources = {
            "jpeg_640x480": DataArguments(train_file=[jsonl], dataset_format="jsonl", itm_negatives=args.itm_negatives),
            "synthetic": DataArguments(synthetic_train_size=args.images, itm_negatives=args.itm_negatives),
        }
        for name, data_args in sources.items():
            dataset = build_dataset(data_args, tokenizer, args.image_size)
            for workers in args.workers:
                rate = loader_rate(dataset, collator, workers, args.batch_size, args.batches)
                per_worker = rate / max(workers, 1)
                need = workers_needed(args.device_examples_per_second, per_worker)
                print(
                    f"{name:14s} workers={workers}  {rate:7.1f} examples/s  {per_worker:7.1f} examples/s/worker: "
                    f"{need['workers']:.2f} workers ({need['whole_workers']} whole) keep up with a device at "
                    f"{args.device_examples_per_second:.1f} examples/s"
                )


if __name__ == "__main__":
    main()
