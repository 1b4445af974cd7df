"""Run our GaudiTrainer path on CPU for a few steps (called by test_gaudi_contract.py in a subprocess whose
PYTHONPATH holds a test-only shim for optimum-habana's SynapseAI version check)."""

import json
import sys

from bridgetower_gaudi.training.pretrain import build_trainer, parse_args


def main(output_dir: str) -> None:
    model_args, data_args, pretraining_args, training_args = parse_args(
        [
            "--output_dir",
            output_dir,
            "--do_train",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--max_seq_length",
            "16",
            "--synthetic_train_size",
            "32",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--logging_steps",
            "1",
            "--bf16",
        ]
    )
    from optimum.habana import GaudiConfig, GaudiTrainer, GaudiTrainingArguments

    from bridgetower_gaudi.device import gaudi

    args = gaudi.to_gaudi_training_arguments(training_args, use_habana=False, use_cpu=True, use_lazy_mode=False)
    trainer = build_trainer(model_args, data_args, pretraining_args, args)
    result = trainer.train()
    config = trainer.gaudi_config
    report = {
        "args_type": type(trainer.args).__name__,
        "is_gaudi_trainer": isinstance(trainer, GaudiTrainer),
        "is_gaudi_args": isinstance(trainer.args, GaudiTrainingArguments),
        "is_gaudi_config": isinstance(config, GaudiConfig),
        "use_fused_adam": config.use_fused_adam,
        "use_fused_clip_norm": config.use_fused_clip_norm,
        "use_torch_autocast": config.use_torch_autocast,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "optimizer_groups": len(trainer.optimizer.param_groups),
        "optimizer": type(trainer.optimizer).__name__,
    }
    print("CONTRACT " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
