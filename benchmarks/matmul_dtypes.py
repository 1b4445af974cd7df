"""Where a bf16 pre-training step computes in fp32: matmul calls and GFLOP by input dtype, for our step with each
`--attn_implementation` and for transformers' two passes (the report's `pretrain` case: same weights and batch).

    OMP_NUM_THREADS=2 python benchmarks/matmul_dtypes.py --preset base

Counts, not times (any machine). On the CPU, torch's SDPA with dropout has no fused kernel and computes in fp32
under bf16 autocast; eager attention keeps its matmuls in bf16, as transformers' eager attention does.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

import bridgetower_gaudi as btg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_benchmarks  # noqa: E402  (beside this script: the report's config and batches)

MATMULS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}


class MatmulsByDtype(TorchDispatchMode):
    """Matmul calls and FLOPs per (op, input dtype)."""

    def __init__(self):
        super().__init__()
        self.calls, self.flops = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket in MATMULS:
            left, right = args[-2], args[-1]  # (self, mat1, mat2) for addmm / baddbmm, (mat1, mat2) otherwise
            key = (func._overloadpacket.__name__, str(left.dtype).replace("torch.", ""))
            self.calls[key] += 1
            self.flops[key] += 2 * left.numel() * right.shape[-1]  # 2 * (batch) * m * k * n
        return out


def step_counts(step) -> MatmulsByDtype:
    step()  # warm-up: lazily built state (optimizer moments) out of the count
    with MatmulsByDtype() as counts:
        step()
    return counts


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def transformers_counts(config, folder: str, batch: dict) -> MatmulsByDtype:
    """Transformers' two passes (MaskedLM + ImageAndTextRetrieval sharing weights); the weights saved to `folder`."""
    torch.manual_seed(0)
    mlm = transformers.BridgeTowerForMaskedLM(config).train()
    itm = transformers.BridgeTowerForImageAndTextRetrieval(config).train()
    itm.bridgetower = mlm.bridgetower
    mlm.save_pretrained(folder)

    def step():
        with bf16():
            logits = itm(**batch["itm"]).logits.float()
            loss = mlm(**batch["mlm"]).loss + torch.nn.functional.cross_entropy(logits, batch["itm_labels"])
        loss.backward()
        mlm.zero_grad(set_to_none=True)

    return step_counts(step)


def our_counts(folder: str, attention: str, batch: dict) -> MatmulsByDtype:
    model = btg.BridgeTowerForPreTraining.from_pretrained(folder, attn_implementation=attention).train()

    def step():
        with bf16():
            loss = model(**batch).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step_counts(step)


def main(argv=None) -> dict[str, MatmulsByDtype]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", choices=sorted(btg.PRESETS))
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args(argv)
    config = run_benchmarks.transformers_config(args.preset)
    folder = tempfile.mkdtemp()
    ours_batch, theirs_batch = run_benchmarks.pretraining_batches(
        config, args.batch_size, 50, "full", torch.Generator().manual_seed(0)
    )
    rows = {"transformers": transformers_counts(config, folder, theirs_batch)}
    for attention in ("sdpa", "eager"):
        rows[f"ours, {attention}"] = our_counts(folder, attention, ours_batch)
    print(f"{args.preset}, batch {args.batch_size}, 50 tokens, bf16 autocast, forward + backward of one step")
    print(f"{'model':14s} {'op':8s} {'dtype':9s} {'calls':>6s} {'GFLOP':>9s}")
    for label, counts in rows.items():
        for key in sorted(counts.calls):
            print(f"{label:14s} {key[0]:8s} {key[1]:9s} {counts.calls[key]:6d} {counts.flops[key] / 1e9:9.1f}")
    return rows


if __name__ == "__main__":
    main()
