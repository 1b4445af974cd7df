"""The one place that knows devices: which backend runs, which flags it accepts, which trainer it gets.

HPU code (optimum.habana, habana_frameworks) is imported only from `device.gaudi`, and only when `--use_habana`
is given: `import optimum.habana` fails on machines without SynapseAI.
"""

from __future__ import annotations

import os

import torch

from ..training.arguments import HPU_ONLY_FLAGS

RUN_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "run_scripts")
DEFAULT_GAUDI_CONFIG = os.path.join(RUN_SCRIPTS, "gaudi_config.json")


def backend_name(args) -> str:
    """'hpu', 'cuda' or 'cpu': what this run will train on."""
    if getattr(args, "use_habana", False):
        return "hpu"
    if torch.cuda.is_available() and not getattr(args, "use_cpu", False):
        return "cuda"
    return "cpu"


def check_device_flags(args) -> None:
    """HPU-only flags off HPU fail at start-up with the fix (GaudiTrainingArguments checks the Gaudi side)."""
    wrong = [f"--{name}" for name, default in HPU_ONLY_FLAGS.items() if getattr(args, name) not in (default, False)]
    if args.torch_compile_backend == "hpu_backend":
        wrong.append("--torch_compile_backend hpu_backend")
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)} only work on Gaudi: add --use_habana on an HPU machine, or drop them here "
            f"(this run would use {backend_name(args)})."
        )


def gaudi_training_arguments_class():
    """optimum-habana's GaudiTrainingArguments (imports optimum.habana: only call it for Gaudi runs)."""
    from .gaudi import GaudiTrainingArguments

    return GaudiTrainingArguments


def is_gaudi_arguments(args) -> bool:
    return type(args).__name__ == "GaudiTrainingArguments"


def resolve_training_arguments(args):
    """Check the device flags; on HPU also swap Gaudi kernels into transformers' tower layers."""
    if not is_gaudi_arguments(args):
        if args.use_habana:
            raise ValueError(
                "--use_habana needs GaudiTrainingArguments: parse the flags with training.pretrain.parse_args."
            )
        check_device_flags(args)
        return args
    from . import gaudi

    gaudi.check_gaudi_arguments(args)
    if args.use_habana:
        gaudi.adapt_towers_to_gaudi()
    return args


def trainer_class(args):
    """GaudiTrainer-based on HPU (or whenever `args` are GaudiTrainingArguments), transformers' Trainer elsewhere."""
    from ..training.trainer import BridgeTowerTrainer

    if is_gaudi_arguments(args):
        from . import gaudi

        return gaudi.GaudiBridgeTowerTrainer
    return BridgeTowerTrainer
