"""Retrieval evaluation time: every pair through the whole model (naive) vs towers once + ITC top-k + ITM re-ranking
(`bridgetower_gaudi.evaluation.retrieval`), top k and every pair (k=all), and top k with the towers from the cache.

    OMP_NUM_THREADS=1 python benchmarks/retrieval_eval.py --images 100 --captions_per_image 5 --k 16
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import replace

import torch

from bridgetower_gaudi import PRESETS, BridgeTowerConfig, BridgeTowerForPreTraining
from bridgetower_gaudi.data import ExampleBuilder, ImageTransform, synthetic_tokenizer
from bridgetower_gaudi.evaluation import (
    RetrievalData,
    RetrievalOptions,
    evaluate_retrieval,
    naive_scores,
    recall_metrics,
    retrieval_scores,
    synthetic_records,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--captions_per_image", type=int, default=5)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--max_seq_length", type=int, default=40)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = BridgeTowerConfig(**PRESETS["tiny"], pretraining_objectives=["itm", "itc"])
    model = BridgeTowerForPreTraining(config).eval()
    transform = ImageTransform(config.vision_config.image_size, "clip")
    builder = ExampleBuilder(synthetic_tokenizer(), transform, args.max_seq_length)
    records = synthetic_records(args.images, args.captions_per_image, seed=10_007)
    data = RetrievalData.from_records(records, builder)
    # Decoded once, before any timing: every method reads the same pixels, and decoding is not what differs.
    pixels = torch.stack([data.images[i] for i in range(len(data.images))])
    pairs = len(pixels) * len(data.caption_to_image)
    print(
        f"# retrieval evaluation, tiny preset, {len(pixels)} images x {len(data.caption_to_image)} captions "
        f"({pairs} pairs), {args.max_seq_length} tokens, batch {args.batch_size}, {platform.node()} "
        f"({os.cpu_count()} cores), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )

    options = RetrievalOptions(k=args.k, batch_size=args.batch_size, progress=False)
    timings = {}
    start = time.perf_counter()
    naive = naive_scores(model, pixels, data.captions, batch_size=args.batch_size, progress=False)
    timings["naive"] = time.perf_counter() - start

    start = time.perf_counter()
    every_pair = retrieval_scores(model, pixels, data.captions, replace(options, k="all"))
    timings["k=all"] = time.perf_counter() - start
    same_ranking = torch.equal(every_pair.scores.argsort(dim=0), naive.argsort(dim=0)) and torch.equal(
        every_pair.scores.argsort(dim=1), naive.argsort(dim=1)
    )

    start = time.perf_counter()
    top_k = evaluate_retrieval(model, pixels, data.captions, data.caption_to_image, options)
    timings[f"k={args.k}"] = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as cache_dir:
        cached_options = replace(options, cache_dir=cache_dir)
        evaluate_retrieval(model, pixels, data.captions, data.caption_to_image, cached_options)
        start = time.perf_counter()
        cached = evaluate_retrieval(model, pixels, data.captions, data.caption_to_image, cached_options)
        timings[f"k={args.k}, towers cached"] = time.perf_counter() - start
    assert cached["images_encoded"] == cached["captions_encoded"] == 0

    cross_modal = {"naive": pairs, "k=all": every_pair.pairs_scored}
    cross_modal[f"k={args.k}"] = cross_modal[f"k={args.k}, towers cached"] = top_k["pairs_scored"]
    towers = {"k=all": every_pair.seconds["towers"], f"k={args.k}": top_k["seconds_towers"]}
    towers[f"k={args.k}, towers cached"] = cached["seconds_towers"]  # reading the cache files
    for name, seconds in timings.items():
        tower_time = f"{towers[name]:6.2f} s" if name in towers else "   -    "
        print(
            f"{name:24s} {seconds:8.2f} s  towers {tower_time}  {cross_modal[name]:7d} cross-modal passes  "
            f"speed-up over naive {timings['naive'] / seconds:6.1f}x"
        )
    print(f"k=all ranks exactly as naive: {same_ranking}")
    naive_rsum = recall_metrics(naive, data.caption_to_image)["rsum"]
    rsums = f"naive {naive_rsum:.2f}, k={args.k} {top_k['rsum']:.2f}, ITC alone {top_k['itc_rsum']:.2f}"
    print(f"RSUM (random weights): {rsums}")


if __name__ == "__main__":
    main()
