"""Data-loading throughput: images/s per worker for the pre-training path (decode JPEG, resize + center crop to
--image_size, normalise, tokenise, MLM / ITM collate), on JPEG files this script writes (COCO-like 640x480).

    python benchmarks/data_loading.py --image_size 288 --workers 1 2 --images 512
"""

from __future__ import annotations

import argparse
import json
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


def loader_rate(dataset, collator, workers: int, batch_size: int, batches: int) -> float:
    """Examples/s a DataLoader with `workers` workers delivers, worker start-up excluded."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        collate_fn=collator,
        drop_last=True,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
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
        help="dataset (the default recipe: a second, random image decoded per example) or in_batch.",
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
                print(
                    f"{name:14s} workers={workers}  {rate:7.1f} images/s  {rate / max(workers, 1):7.1f} images/s/worker"
                )


if __name__ == "__main__":
    main()
