"""Pre-training step time: one vision-tower pass per step (ITM reuses the MLM pass's image features, in-batch
negatives) vs the official two-pass step (the ITM images run through the vision tower again).

    python benchmarks/pretrain_step.py --preset base --batch_size 4 --steps 3
"""

from __future__ import annotations

import argparse
import os
import platform

import measure  # benchmarks/measure.py: the timing every benchmark script shares
import torch

from bridgetower_gaudi import BridgeTowerForPreTraining, preset_config
from bridgetower_gaudi.data import PretrainingCollator


def make_batch(config, batch_size: int, seq_len: int, two_pass: bool, generator: torch.Generator) -> dict:
    vocab = config.text_config.vocab_size
    input_ids = torch.randint(5, vocab, (batch_size, seq_len), generator=generator)
    input_ids[:, 0] = 0
    labels = torch.full_like(input_ids, -100)
    chosen = torch.rand(input_ids.shape, generator=generator) < 0.15
    chosen[:, 1] = True
    labels[chosen] = input_ids[chosen]
    size = config.vision_config.image_size
    batch = {
        "input_ids": input_ids.masked_fill(chosen, 3),
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator),
        "labels": labels,
    }
    itm_labels = torch.tensor([1, 0] * (batch_size // 2))
    index = torch.where(itm_labels.bool(), torch.arange(batch_size), torch.arange(batch_size).roll(1))
    batch["itm_labels"] = itm_labels
    if two_pass:
        batch["itm_pixel_values"] = batch["pixel_values"][index]
    else:
        batch["itm_image_index"] = index
    return batch


def time_steps(model, batch, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return measure.median(measure.time_steps(step, steps, torch.device("cpu")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=50)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    assert PretrainingCollator  # the collator's two_pass flag produces exactly these two batch layouts
    torch.manual_seed(0)
    config = preset_config(args.preset)
    model = BridgeTowerForPreTraining(config).train()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"# pre-training step, preset={args.preset} ({params:.0f}M parameters), batch {args.batch_size}, "
        f"{platform.node()} ({os.cpu_count()} cores), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    results = {}
    for mode in ("two_pass", "one_pass"):
        batch = make_batch(config, args.batch_size, args.seq_len, mode == "two_pass", torch.Generator().manual_seed(0))
        results[mode] = time_steps(model, batch, args.steps)
        print(f"{mode:9s} {results[mode]:7.2f} s/step  {args.batch_size / results[mode]:6.2f} samples/s")
    print(f"one_pass speed-up over two_pass: {results['two_pass'] / results['one_pass']:.2f}x")


if __name__ == "__main__":
    main()
