"""Flags of the run scripts: model, pre-training objectives, and training arguments with the Gaudi flags that
optimum-habana users already type. One parser serves every device; `device.resolve_training_arguments` turns the
result into `GaudiTrainingArguments` on HPU."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..device.flags import ExampleScriptArguments


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "A BridgeTower checkpoint to start from."})
    vision_model_name_or_path: str | None = field(default=None, metadata={"help": "CLIP checkpoint (uni-modal init)."})
    text_model_name_or_path: str | None = field(default=None, metadata={"help": "RoBERTa / BERT checkpoint."})
    config_name: str | None = field(
        default=None, metadata={"help": "Random init from a preset (tiny, base, large) or a config.json / folder."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated key=value config fields, e.g. 'num_hidden_layers=4,link_tower_type=gated'."},
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer; default: the checkpoint's, or the synthetic one for synthetic data."},
    )


@dataclass
class RecipeArguments:
    """Every task's training-recipe flags: learning-rate multipliers (the official `lr_mult_cross_modal` /
    `lr_mult_head`), frozen towers, data order. Each task's arguments extend these."""

    cross_modal_lr_multiplier: float = field(default=5.0, metadata={"help": "LR factor for cross-modal parameters."})
    head_lr_multiplier: float = field(default=5.0, metadata={"help": "LR factor for the task's heads."})
    freeze_text_tower: bool = field(default=False, metadata={"help": "Keep the text tower fixed (ablations)."})
    freeze_vision_tower: bool = field(default=False, metadata={"help": "Keep the vision tower fixed (ablations)."})
    shuffle_train_data: bool = field(
        default=True, metadata={"help": "Shuffle training data; off: file order (to compare runs across world sizes)."}
    )
    max_nonfinite_steps: int | None = field(
        default=None,
        metadata={
            "help": "Optimizer steps with a non-finite loss or gradient are skipped (no update) and counted; stop the "
            "run once more than this many were skipped (default: never stop)."
        },
    )


@dataclass
class PretrainingArguments(RecipeArguments):
    objectives: str = field(default="mlm,itm", metadata={"help": "Comma-separated: mlm, itm, itc."})
    pretrain_step: str | None = field(
        default=None,
        metadata={
            "help": "Removed: there is one pre-training step now (the ITM pass reuses the MLM pass's image features "
            "and encodes only data-set negatives). Passing it is an error."
        },
    )

    def __post_init__(self):
        if self.pretrain_step is not None:
            raise ValueError(
                f"--pretrain_step {self.pretrain_step} was removed: there is one pre-training step now. Its ITM pass "
                "reuses the MLM pass's image features and encodes only data-set negatives; the vision tower draws no "
                "random numbers, so this is the official two-pass step's loss and gradients with one vision pass "
                "per image (tests/test_step.py). Drop the flag."
            )
        unknown = set(self.objective_list) - {"mlm", "itm", "itc"}
        if unknown or not {"mlm", "itm"} & set(self.objective_list):
            raise ValueError(
                f"--objectives {self.objectives!r}: a comma-separated subset of mlm, itm, itc with mlm or itm in it "
                "(itc trains with them)."
            )

    @property
    def objective_list(self) -> list[str]:
        return [o.strip() for o in self.objectives.split(",") if o.strip()]


def resolve_itm_recipe(pretraining_args: PretrainingArguments, data_args) -> None:
    """Settle how ITM pairs are made, the one decision behind --objectives and --itm_negatives: fill the defaults
    (the official recipe) and refuse combinations that cannot work, before anything is built."""
    objectives = set(pretraining_args.objective_list)
    negatives = data_args.itm_negatives
    if "itm" not in objectives:
        if negatives not in (None, "none"):
            raise ValueError(f"--itm_negatives {negatives} needs itm in --objectives (given: {sorted(objectives)}).")
        data_args.itm_negatives = "none"
        return
    if negatives is None:
        negatives = "itc_hard" if "itc" in objectives else "dataset"
    if negatives == "none":
        raise ValueError("--itm_negatives none: drop itm from --objectives instead.")
    if negatives == "itc_hard" and "itc" not in objectives:
        raise ValueError(
            "--itm_negatives itc_hard samples negatives from ITC similarities: add itc to --objectives "
            "(--objectives mlm,itm,itc), or choose --itm_negatives dataset / in_batch."
        )
    data_args.itm_negatives = negatives


# The paper's optimisation (the official set_schedule and Lightning trainer): AdamW (0.9, 0.98), eps 1e-8 (explicit:
# GaudiTrainingArguments defaults to 1e-6), weight decay 0.01, 10% warmup then linear decay to 0, and no gradient
# clipping (0 also turns off Gaudi's fused clip-norm and DeepSpeed's "gradient_clipping": "auto").
# Put before the user's flags (later flags win), so GaudiTrainingArguments gets them too.
PAPER_OPTIMIZER_FLAGS = [
    "--adam_beta2", "0.98",
    "--adam_epsilon", "1e-8",
    "--weight_decay", "0.01",
    "--warmup_ratio", "0.1",
    "--max_grad_norm", "0",
]  # fmt: skip


@dataclass
class BridgeTowerTrainingArguments(TrainingArguments, ExampleScriptArguments):
    """transformers' TrainingArguments plus optimum-habana's Gaudi flags (same names, same meaning)."""

    use_habana: bool = field(default=False, metadata={"help": "Run on Gaudi (HPU) with GaudiTrainer."})
    use_lazy_mode: bool | None = field(default=None, metadata={"help": "HPU lazy mode (Gaudi default: on)."})
    use_hpu_graphs_for_training: bool = field(default=False, metadata={"help": "Wrap the training step in HPU graphs."})
    use_hpu_graphs_for_inference: bool = field(default=False, metadata={"help": "Wrap evaluation in HPU graphs."})
    gaudi_config_name: str | None = field(default=None, metadata={"help": "GaudiConfig file (default: shipped one)."})
    throughput_warmup_steps: int = field(default=0, metadata={"help": "Steps left out of the throughput figure."})
    distribution_strategy: str = field(default="ddp", metadata={"help": "ddp, or fast_ddp on HPU."})
    pipelining_fwd_bwd: bool = field(default=False, metadata={"help": "HPU: overlap forward and backward."})
    non_blocking_data_copy: bool = field(default=False, metadata={"help": "HPU: asynchronous host-to-device copies."})
    adjust_throughput: bool = field(default=False, metadata={"help": "HPU: leave logging / eval / saving time out."})
    sdp_on_bf16: bool = field(default=False, metadata={"help": "HPU: bf16 reductions in torch's math SDPA."})
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention of every layer: sdpa (default), eager, or on HPU gaudi_fused_sdpa."},
    )
    flash_attention_recompute: bool = field(default=False, metadata={"help": "HPU: recompute in fused SDPA."})
    # The paper's optimisation (PAPER_OPTIMIZER_FLAGS) as defaults here too, for arguments built in code.
    adam_beta2: float = field(default=0.98, metadata={"help": "AdamW beta2 (the paper: 0.98)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases / LayerNorm)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps for linear warmup."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon (the paper: 1e-8)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping norm; 0: none (the paper)."})
    # transformers' default (True) reads every micro-step's loss on the host; optimum-habana defaults it off too.
    # Non-finite steps are skipped and counted by the trainer's device-side guard instead.
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Leave non-finite losses out of the logged loss (a host sync per step)."}
    )
    # transformers' default (None) makes DDP look for unused parameters, which reads a flag per parameter on the host
    # in every backward (torch's Reducer). Every model here freezes what its losses never reach, as optimum-habana
    # assumes by defaulting it off too.
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "DDP find_unused_parameters (a host sync per parameter and step)."}
    )
