"""Gaudi (HPU) path: GaudiTrainer, GaudiTrainingArguments and GaudiConfig from optimum-habana. The only module that
imports optimum.habana / habana_frameworks. Written from the optimum-habana 1.21 and Intel Gaudi docs; contract-tested
on CPU (`use_habana=False, use_cpu=True`), not yet run on Gaudi hardware."""

from __future__ import annotations

import os

from optimum.habana import GaudiConfig, GaudiTrainer, GaudiTrainingArguments
from transformers import Trainer

from ..training.trainer import BridgeTowerTrainerMixin
from . import DEFAULT_GAUDI_CONFIG


def check_gaudi_arguments(args: GaudiTrainingArguments) -> None:
    """Gaudi flag combinations that cannot work, with the fix."""
    if args.use_habana and args.torch_compile:
        # Intel's recommended mode: eager + torch.compile(backend="hpu_backend"); lazy mode must be off for it.
        if args.use_lazy_mode or os.environ.get("PT_HPU_LAZY_MODE") != "0":
            raise ValueError(
                "--torch_compile on Gaudi runs in eager mode: export PT_HPU_LAZY_MODE=0 and pass --use_lazy_mode False "
                "(or drop --torch_compile to use lazy mode)."
            )
        if args.torch_compile_backend != "hpu_backend":
            raise ValueError("--torch_compile on Gaudi needs --torch_compile_backend hpu_backend.")


def adapt_towers_to_gaudi() -> None:
    """Swap in optimum-habana's Gaudi kernels (fused SDPA, bf16-safe masks) for transformers' CLIP / BERT / RoBERTa
    layers, which are our towers. Called once, on HPU only, before the model is built (never at import)."""
    from optimum.habana.transformers.modeling_utils import adapt_transformers_to_gaudi

    adapt_transformers_to_gaudi()


def load_gaudi_config(args) -> GaudiConfig:
    """The GaudiConfig: fused AdamW / clip-norm and bf16 autocast op lists. With DeepSpeed, bf16 comes from the
    DeepSpeed JSON instead of autocast."""
    config = GaudiConfig.from_pretrained(args.gaudi_config_name or DEFAULT_GAUDI_CONFIG)
    if args.deepspeed:
        config.use_torch_autocast = False
    return config


class GaudiBridgeTowerTrainer(BridgeTowerTrainerMixin, GaudiTrainer):
    """GaudiTrainer with BridgeTower's optimizer groups and metrics."""

    def __init__(self, *args, gaudi_config: GaudiConfig | None = None, **kwargs):
        training_args = kwargs.get("args")
        super().__init__(*args, gaudi_config=gaudi_config or load_gaudi_config(training_args), **kwargs)

    def optimizer_class(self):
        if self.gaudi_config.use_fused_adam and self.args.use_habana:
            from habana_frameworks.torch.hpex.optimizers import FusedAdamW

            return FusedAdamW, {}
        return super().optimizer_class()

    def log(self, logs, start_time=None, end_time=None):
        if self.args.use_habana:
            return super().log(logs, start_time, end_time)
        # GaudiTrainer.log reads HPU memory statistics; off HPU (the CPU contract test) log as transformers does.
        return Trainer.log(self, logs, start_time)
