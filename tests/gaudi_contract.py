"""Run our GaudiTrainer path on CPU (called by test_gaudi_contract.py in a subprocess whose PYTHONPATH holds a
test-only shim for optimum-habana's SynapseAI version check). `python gaudi_contract.py CHECK OUTPUT_DIR`."""

import json
import sys
import types

import torch

from bridgetower_gaudi.device import DEFAULT_GAUDI_CONFIG, resolve_training_arguments
from bridgetower_gaudi.training.pretrain import build_trainer, parse_args

FLAGS = ["--do_train", "--max_steps", "2", "--per_device_train_batch_size", "4", "--max_seq_length", "16",
         "--synthetic_train_size", "32", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
         # On CPU: no --use_habana, no lazy mode, bf16 autocast on the CPU instead of the HPU.
         "--use_cpu", "--use_lazy_mode", "False", "--bf16", "--half_precision_backend", "cpu_amp"]  # fmt: skip


def gaudi_trainer(output_dir, flags):
    from bridgetower_gaudi.device.gaudi import BridgeTowerGaudiTrainingArguments

    # The same parser as `run_pretrain.py --use_habana`, with the Gaudi arguments class.
    model_args, data_args, pretraining_args, args = parse_args(
        ["--output_dir", output_dir, *flags], training_arguments_class=BridgeTowerGaudiTrainingArguments
    )
    return build_trainer(model_args, data_args, pretraining_args, resolve_training_arguments(args))


def contract(output_dir: str) -> dict:
    from optimum.habana import GaudiConfig, GaudiTrainer, GaudiTrainingArguments

    trainer = gaudi_trainer(output_dir, FLAGS)
    result = trainer.train()
    config = trainer.gaudi_config
    return {
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


def gaudi_config(output_dir: str) -> dict:
    """The shipped GaudiConfig once habana_frameworks.torch.core is loaded (autoloaded with torch, Synapse >= 1.18)."""
    from optimum.habana import GaudiConfig

    sys.modules.setdefault("habana_frameworks", types.ModuleType("habana_frameworks"))
    sys.modules.setdefault("habana_frameworks.torch", types.ModuleType("habana_frameworks.torch"))
    sys.modules.setdefault("habana_frameworks.torch.core", types.ModuleType("habana_frameworks.torch.core"))
    config = GaudiConfig.from_pretrained(DEFAULT_GAUDI_CONFIG)
    try:
        config.declare_autocast_bf16_fp32_ops()
        error = None
    except RuntimeError as e:
        error = str(e)
    return {"keys": sorted(k for k, v in config.to_dict().items() if v not in (None, False)), "error": error}


def accumulation(output_dir: str) -> dict:
    """Losses and weights after 2 optimizer steps with gradient accumulation 2: GaudiTrainer path vs Trainer path."""
    from bridgetower_gaudi.training.pretrain import parse_args as parse

    flags = ["--do_train", "--max_steps", "2", "--per_device_train_batch_size", "4", "--max_seq_length", "16",
             "--synthetic_train_size", "32", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
             "--gradient_accumulation_steps", "2", "--shuffle_train_data", "False", "--deterministic_masking", "True",
             "--config_overrides", "hidden_dropout_prob=0.0", "--use_cpu", "--seed", "0",
             "--lr_scheduler_type", "constant", "--warmup_ratio", "0", "--adam_epsilon", "1e-8",
             "--max_grad_norm", "0"]  # fmt: skip
    gaudi = gaudi_trainer(output_dir + "/gaudi", [*flags, "--use_lazy_mode", "False"])
    gaudi.train()
    model_args, data_args, pretraining_args, args = parse(["--output_dir", output_dir + "/hf", *flags])
    plain = build_trainer(model_args, data_args, pretraining_args, resolve_training_arguments(args))
    plain.train()
    losses = lambda trainer: [h["loss"] for h in trainer.state.log_history if "loss" in h]
    gaudi_state, plain_state = gaudi.model.state_dict(), plain.model.state_dict()
    return {
        "gaudi_losses": losses(gaudi),
        "trainer_losses": losses(plain),
        "max_weight_difference": max(
            (gaudi_state[k].float() - plain_state[k].float()).abs().max().item() for k in plain_state
        ),
    }


def deepspeed_optimizer(output_dir: str) -> dict:
    """With --deepspeed the GaudiConfig turns fused AdamW and autocast off (DeepSpeed owns bf16 and the optimizer)."""
    from types import SimpleNamespace

    from bridgetower_gaudi.device.gaudi import load_gaudi_config

    config = load_gaudi_config(SimpleNamespace(gaudi_config_name=None, deepspeed="run_scripts/ds_zero2.json"))
    return {"use_fused_adam": config.use_fused_adam, "use_torch_autocast": config.use_torch_autocast}


def towers_kept(output_dir: str) -> dict:
    """What adapt_transformers_to_gaudi() does to CLIP / BERT (it needs an HPU, so it is mimicked here) is undone by
    the parsing context, and a model built afterwards has transformers' own tower classes."""
    from transformers.models.bert import modeling_bert
    from transformers.models.clip import modeling_clip

    from bridgetower_gaudi import PRESETS, BridgeTowerConfig, BridgeTowerModel
    from bridgetower_gaudi.device import parsing_context
    from bridgetower_gaudi.device.gaudi import BridgeTowerGaudiTrainingArguments

    originals = (modeling_clip.CLIPAttention, modeling_bert.BertSdpaSelfAttention.forward)
    with parsing_context(BridgeTowerGaudiTrainingArguments):
        modeling_clip.CLIPAttention = type("GaudiCLIPAttention", (modeling_clip.CLIPAttention,), {})
        modeling_bert.BertSdpaSelfAttention.forward = lambda self, *a, **k: None
        patched_inside = modeling_clip.CLIPAttention is not originals[0]
    restored = (modeling_clip.CLIPAttention, modeling_bert.BertSdpaSelfAttention.forward) == originals
    model = BridgeTowerModel(BridgeTowerConfig(**{**PRESETS["tiny"], "text_backbone": "bert"}))
    return {
        "patched_inside": patched_inside,
        "restored": restored,
        "vision_attention": type(model.vision_model.encoder.layers[0].self_attn).__name__,
        "text_attention": type(model.text_model.encoder.layer[0].attention.self).__name__,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    check, output = sys.argv[1], sys.argv[2]
    print("CONTRACT " + json.dumps(globals()[check](output)))
