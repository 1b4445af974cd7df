"""Counts of the training step and the data path (issue 19), no timings (any machine, any load):

- host syncs and aten ops per optimizer step of the default pre-training run and each fine-tuning task (tiny preset,
  CPU, counted by `HostSyncCounter` from the first micro-step to the end of the optimizer step; target 0 syncs);
- GFLOP per sample of the default pre-training step (MLM + ITM with data-set negatives, forward + backward) at base
  size, with captions of 50 tokens and with Karpathy-length captions cut to `--length_buckets` (counted on the meta
  device: torch.utils.flop_counter, no arithmetic is done);
- pad tokens saved by the buckets on Karpathy-length captions;
- image decodes and bytes per sample through the loader (the official recipe's data-set negatives), now and as the
  float32 / decode-every-negative path was.

    python benchmarks/step_counts.py --output benchmarks/results/step-counts-2026-12-02.json

Karpathy-length captions: no COCO text is shipped here, so lengths are drawn (seeded) from a normal distribution with
COCO Karpathy-train's RoBERTa length, mean 15 tokens with <s> and </s>, standard deviation 3.5, cut to 8..50.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import measure  # noqa: E402  (benchmarks/measure.py)

from bridgetower_gaudi import PRESETS, BridgeTowerConfig, BridgeTowerForPreTraining  # noqa: E402
from bridgetower_gaudi.data import DataArguments, PretrainingCollator, build_dataset, synthetic_tokenizer  # noqa: E402
from bridgetower_gaudi.data import dataset as dataset_module  # noqa: E402
from bridgetower_gaudi.data.collator import PadToLengthBucket  # noqa: E402

BUCKETS = [16, 24, 32, 50]
KARPATHY_MEAN, KARPATHY_STD = 15.0, 3.5


def karpathy_lengths(count: int, seed: int = 0, max_length: int = 50) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.normal(KARPATHY_MEAN, KARPATHY_STD, (count,), generator=generator).round().clamp(8, max_length)
    return [int(n) for n in lengths.tolist()]


class _Vocabulary:
    """The part of a tokenizer PretrainingCollator reads (RoBERTa's special ids; the mask token is the last id)."""

    def __init__(self, size: int):
        self.size, self.all_special_ids, self.mask_token_id = size, [0, 1, 2, 3], size - 1

    def __len__(self) -> int:
        return self.size


def pretraining_examples(config, lengths: list[int], max_length: int, generator) -> list[dict]:
    """Captions of `lengths` tokens (<s> ... </s>, padded to `max_length`), uint8 images and data-set negatives."""
    size, vocab = config.vision_config.image_size, config.text_config.vocab_size
    examples = []
    for i, length in enumerate(lengths):
        ids = torch.full((max_length,), 1)
        ids[:length] = torch.randint(5, vocab - 1, (length,), generator=generator)
        ids[0], ids[length - 1] = 0, 2
        mask = (torch.arange(max_length) < length).long()
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        negative = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        examples.append({"input_ids": ids, "attention_mask": mask, "image_id": str(i), "pixel_values": image,
                         "false_pixel_values": negative, "false_image_id": f"negative-{i}"})  # fmt: skip
    return examples


def gflop_per_sample(preset: str, lengths: list[int], buckets: list[int], batch_size: int) -> dict:
    """Forward + backward FLOPs of the default pre-training step per sample, on the meta device."""
    config = BridgeTowerConfig(**PRESETS[preset])
    collator = PretrainingCollator(_Vocabulary(config.text_config.vocab_size), itm_negatives="dataset", seed=0)
    collator = PadToLengthBucket(collator, buckets)
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        model = BridgeTowerForPreTraining(config).train()
    flops, samples, seq_lens = 0, 0, []
    for start in range(0, len(lengths) - batch_size + 1, batch_size):
        batch = collator(pretraining_examples(config, lengths[start : start + batch_size], 50, generator))
        seq_lens.append(batch["input_ids"].shape[1])
        batch = {k: v.to("meta") for k, v in batch.items()}
        flops += measure.count_flops(lambda batch=batch: model(**batch).loss.backward())
        samples += batch_size
    return {"gflop_per_sample": round(flops / samples / 1e9, 1), "batches": len(seq_lens),
            "batch_size": batch_size, "padded_lengths": sorted(set(seq_lens))}  # fmt: skip


def padding(lengths: list[int], buckets: list[int], batch_size: int, max_length: int = 50) -> dict:
    """Text positions per sample at --max_seq_length, padded to the longest caption per batch, and to the buckets."""
    batches = [lengths[i : i + batch_size] for i in range(0, len(lengths) - batch_size + 1, batch_size)]
    bucket = lambda n: next((b for b in buckets if b >= n), max_length)
    samples = len(batches) * batch_size
    full = max_length
    longest = sum(max(b) for b in batches) * batch_size / samples
    bucketed = sum(bucket(max(b)) for b in batches) * batch_size / samples
    return {"mean_caption_tokens": round(sum(lengths) / len(lengths), 2), "positions_at_max_seq_length": full,
            "positions_padded_to_longest": round(longest, 2), "positions_with_buckets": round(bucketed, 2),
            "pad_positions_saved_vs_max_seq_length": round(1 - bucketed / full, 3), "buckets": buckets,
            "batch_size": batch_size, "batches": len(batches)}  # fmt: skip


def loader_counts(image_size: int, batch_size: int, batches: int) -> dict:
    """Decodes and bytes per sample of the official recipe's batches (data-set negatives), from the real dataset and
    collator: now (uint8, negatives decoded for the negative rows) and the former path (float32, every example's
    negative decoded), the latter rebuilt by resolving every negative and normalising to float32."""
    from bridgetower_gaudi.data.images import normalize_pixels

    decodes = []
    decode = dataset_module.decode_image
    dataset_module.decode_image = lambda *a, **k: decodes.append(1) or decode(*a, **k)
    try:
        args = DataArguments(synthetic_train_size=batch_size * batches * 2, itm_negatives="dataset")
        dataset = build_dataset(args, synthetic_tokenizer(), image_size)
        collator = PretrainingCollator(synthetic_tokenizer(), itm_negatives="dataset")
        now_bytes, before_bytes, now_decodes, before_decodes = 0, 0, 0, 0
        for b in range(batches):
            positions = range(b * batch_size, (b + 1) * batch_size)
            decodes.clear()
            batch = collator([dataset[p] for p in positions])
            now_decodes += len(decodes)
            now_bytes += sum(t.nbytes for t in batch.values() if isinstance(t, torch.Tensor))
            decodes.clear()
            examples = [dataset[p] for p in positions]
            for example in examples:
                example["false_image"]()
            before = collator(examples)
            before_decodes += len(decodes)
            for key in ("pixel_values", "itm_pixel_values"):
                before[key] = normalize_pixels(before[key])
            before_bytes += sum(t.nbytes for t in before.values() if isinstance(t, torch.Tensor))
    finally:
        dataset_module.decode_image = decode
    samples = batch_size * batches
    return {
        "image_size": image_size,
        "samples": samples,
        "decodes_per_sample": now_decodes / samples,
        "decodes_per_sample_before": before_decodes / samples,
        "bytes_per_sample": round(now_bytes / samples),
        "bytes_per_sample_before": round(before_bytes / samples),
    }


def host_syncs_per_step(runs: dict[str, tuple[str, list[str]]]) -> dict:
    from tests.host_sync_run import count_step_syncs  # the tests' short tiny run, counter per optimizer step

    results = {}
    for name, (task, flags) in runs.items():
        with tempfile.TemporaryDirectory() as folder:
            steps, _ = count_step_syncs(task, ["--max_steps", "3", *flags], folder)
        results[name] = {
            "host_syncs_per_step": [s.syncs for s in steps],
            "aten_ops_per_step": [s.total_ops for s in steps],
        }
    return results


SYNC_RUNS = {
    "pretrain default (dataset negatives)": ("pretrain", []),
    "pretrain itc_hard": ("pretrain", ["--itm_negatives", "itc_hard", "--objectives", "mlm,itm,itc"]),
    "pretrain in_batch": ("pretrain", ["--itm_negatives", "in_batch"]),
    "pretrain, gradient accumulation 2": ("pretrain", ["--gradient_accumulation_steps", "2"]),
    **{task: (task, ["--image_transform", "blip"]) for task in ("vqa", "snli_ve", "nlvr2", "retrieval", "itm", "mlm")},
}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--flop_batches", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lengths = karpathy_lengths(args.batch_size * 64)
    flop_lengths = lengths[: args.batch_size * args.flop_batches]
    report = {
        "command": "python benchmarks/step_counts.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "host_syncs": host_syncs_per_step(SYNC_RUNS),
        "gflop_per_sample": {
            "50_tokens": gflop_per_sample(args.preset, [50] * len(flop_lengths), [], args.batch_size),
            "karpathy_lengths_buckets": gflop_per_sample(args.preset, flop_lengths, BUCKETS, args.batch_size),
        },
        "padding": padding(lengths, BUCKETS, args.batch_size),
        "loader": loader_counts(BridgeTowerConfig(**PRESETS[args.preset]).vision_config.image_size, 8, 4),
    }
    report["gflop_per_sample"]["preset"] = args.preset
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
