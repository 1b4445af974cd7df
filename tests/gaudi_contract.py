"""Run our GaudiTrainer path on CPU for a few steps (called by test_gaudi_contract.py in a subprocess whose
PYTHONPATH holds a test-only shim for optimum-habana's SynapseAI version check)."""

import json
import sys

from bridgetower_gaudi.device import resolve_training_arguments
from bridgetower_gaudi.training.pretrain import build_trainer, parse_args

FLAGS = ["--do_train", "--max_steps", "2", "--per_device_train_batch_size", "4", "--max_seq_length", "16",
         "--synthetic_train_size", "32", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
         # On CPU: no --use_habana, no lazy mode, bf16 autocast on the CPU instead of the HPU.
         "--use_cpu", "--use_lazy_mode", "False", "--bf16", "--half_precision_backend", "cpu_amp"]  # fmt: skip


def main(output_dir: str) -> None:
    from optimum.habana import GaudiConfig, GaudiTrainer, GaudiTrainingArguments

    # The same parser as `run_pretrain.py --use_habana`: GaudiTrainingArguments parsed directly.
    model_args, data_args, pretraining_args, args = parse_args(
        ["--output_dir", output_dir, *FLAGS], training_arguments_class=GaudiTrainingArguments
    )
    args = resolve_training_arguments(args)
    trainer = build_trainer(model_args, data_args, pretraining_args, args)
    result = trainer.train()
    config = trainer.gaudi_config
    report = {
        "is_gaudi_trainer": isinstance(trainer, GaudiTrainer),
        "is_gaudi_args": isinstance(trainer.args, GaudiTrainingArguments),
        "is_gaudi_config": isinstance(config, GaudiConfig),
        "use_fused_adam": config.use_fused_adam,
        "use_fused_clip_norm": config.use_fused_clip_norm,
        "use_torch_autocast": config.use_torch_autocast,
        "adam_beta2": trainer.args.adam_beta2,
        "warmup_ratio": trainer.args.warmup_ratio,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "optimizer_groups": len(trainer.optimizer.param_groups),
    }
    print("CONTRACT " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
