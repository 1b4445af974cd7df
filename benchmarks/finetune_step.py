"""Time of one fine-tuning step (forward + backward + AdamW) per downstream task, at a model size (default: base)
and each task's paper resolution (VQA 576, the others 384), with the batch the task's collator builds.

    python benchmarks/finetune_step.py --preset base --batch_size 2 --steps 2
"""

from __future__ import annotations

import argparse
import os
import platform

import measure  # benchmarks/measure.py: the timing every benchmark script shares
import torch

from bridgetower_gaudi import PRESETS, preset_config
from bridgetower_gaudi.modeling import (
    BridgeTowerForNLVR2,
    BridgeTowerForPreTraining,
    BridgeTowerForVisualEntailment,
    BridgeTowerForVisualQuestionAnswering,
)

VQA_ANSWERS = 3129  # VQAv2's vocabulary (answers given 9+ times in train + val)


def config_at(preset: str, image_size: int, **fields):
    return preset_config(
        preset, vision_config={**PRESETS[preset].get("vision_config", {}), "image_size": image_size}, **fields
    )


def text(config, batch: int, length: int, generator) -> dict:
    input_ids = torch.randint(5, config.text_config.vocab_size, (batch, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def images(size: int, batch: int, generator) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=generator)


def task_case(task: str, preset: str, batch: int, generator) -> tuple[torch.nn.Module, dict]:
    """(model, batch) of `task` as run_finetune.py builds them (sizes and head settings of the paper's recipe)."""
    if task == "vqa":
        config = config_at(preset, 576, num_labels=VQA_ANSWERS)
        inputs = {**text(config, batch, 50, generator), "pixel_values": images(576, batch, generator)}
        inputs["labels"] = torch.zeros(batch, VQA_ANSWERS).index_fill_(1, torch.tensor([3, 7]), 1.0)
        return BridgeTowerForVisualQuestionAnswering(config), inputs
    if task == "snli_ve":
        config = config_at(preset, 384, num_labels=3)
        inputs = {**text(config, batch, 50, generator), "pixel_values": images(384, batch, generator)}
        return BridgeTowerForVisualEntailment(config), {**inputs, "labels": torch.arange(batch) % 3}
    if task == "nlvr2":
        config = config_at(preset, 384, num_labels=2, num_image_token_types=2, classifier_hidden_scale=1.5,
                           classifier_dropout_prob=0.1)  # fmt: skip
        inputs = {**text(config, batch, 50, generator), "pixel_values": images(384, batch, generator),
                  "pixel_values_2": images(384, batch, generator), "labels": torch.arange(batch) % 2}  # fmt: skip
        return BridgeTowerForNLVR2(config), inputs
    if task == "retrieval":  # ITC + ITM on ITC-sampled hard negatives: three cross-modal passes of the batch
        config = config_at(preset, 384, pretraining_objectives=["itm", "itc"])
        inputs = {**text(config, batch, 40, generator), "pixel_values": images(384, batch, generator)}
        inputs["itm_negative_mask"] = ~torch.eye(batch, dtype=torch.bool)
        inputs["itc_image_ids"] = torch.arange(batch)
        return BridgeTowerForPreTraining(config), inputs
    raise ValueError(task)


def time_steps(model, batch: dict, steps: int, bf16: bool) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return measure.median(measure.time_steps(step, steps, torch.device("cpu")))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", choices=["tiny", "base", "large"])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--tasks", nargs="+", default=["retrieval", "vqa", "snli_ve", "nlvr2"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CPU AMX)")
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, preset {args.preset}, batch {args.batch_size}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, fused AdamW")  # fmt: skip
    print("| task | resolution | step (s) | samples/s |\n| --- | --- | --- | --- |")
    for task in args.tasks:
        generator = torch.Generator().manual_seed(0)
        model, batch = task_case(task, args.preset, args.batch_size, generator)
        model.train()
        seconds = time_steps(model, batch, args.steps, args.bf16)
        size = model.config.vision_config.image_size
        print(f"| {task} | {size} | {seconds:.2f} | {args.batch_size / seconds:.2f} |", flush=True)
        del model, batch


if __name__ == "__main__":
    main()
