"""One DeepSpeed ZeRO run (under torchrun) with a NaN loss at step 2 (NaN gradients) and, at step 3, a NaN loss whose
gradients are finite (a NaN constant added): both steps are skipped by DeepSpeed's optimizer and counted, the others
applied. Prints one verdict line. Run by test_reliability.py: `torchrun ... deepspeed_nonfinite.py ZERO_JSON OUT`."""

import sys

import torch

from bridgetower_gaudi.device import leave_process_group
from bridgetower_gaudi.training.pretrain import build_trainer, parse_args


def main(ds_config: str, output_dir: str) -> None:
    flags = ["--output_dir", output_dir, "--do_train", "--max_steps", "4", "--warmup_ratio", "0", "--use_cpu",
             "--per_device_train_batch_size", "4", "--max_seq_length", "16", "--synthetic_train_size", "64",
             "--report_to", "none", "--save_strategy", "no", "--dataloader_num_workers", "0",
             "--deepspeed", ds_config]  # fmt: skip
    trainer = build_trainer(*parse_args(flags))
    model, seen = trainer.model, set()
    forward = model.forward

    def forward_with_nan(*args, **kwargs):  # under the trainer's compute_loss, which must make DeepSpeed skip both
        outputs = forward(*args, **kwargs)
        step = trainer.state.global_step + 1
        if model.training and step in (2, 3) and step not in seen:
            seen.add(step)
            # step 2: NaN through the graph; step 3: a NaN added (its gradient is zero: the gradients stay finite)
            outputs.loss = outputs.loss * float("nan") if step == 2 else outputs.loss + torch.tensor(float("nan"))
        return outputs

    model.forward = forward_with_nan
    trainer.train()
    engine = trainer.model_wrapped
    adam_steps = {int(s["step"]) for s in engine.optimizer.optimizer.state.values() if "step" in s}
    ok = trainer.nonfinite_steps == [2, 3] and engine.skipped_steps == 2 and adam_steps == {2}
    ok = ok and trainer.state.global_step == 4
    ok = ok and all(torch.isfinite(p.ds_tensor if hasattr(p, "ds_tensor") else p).all() for p in engine.parameters())
    verdict = "OK" if ok else f"BAD {trainer.nonfinite_steps} {engine.skipped_steps} {adam_steps}"
    sys.stdout.write(f"DEEPSPEED NONFINITE {verdict}\n")  # one write
    sys.stdout.flush()
    leave_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
