"""Every private (underscore or undocumented) API of transformers, optimum-habana and torch this package relies on,
with the parameters we call it with and what our code needs it to do. A new release may rename or change any of them
without notice: tests/test_private_apis.py checks each still exists with these parameters (optimum-habana's from its
source, read with `ast`: it cannot be imported without SynapseAI). Add an entry whenever new code overrides or calls
one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrivateApi:
    """`owner.name` in `module`. `parameters`: the leading parameters (after self) in the order we pass or receive
    them; None for an attribute. `calls`: the methods `self.<call>(...)` its body must still call, for the overrides
    that hook into them. `used_by`: where we rely on it, and why."""

    module: str
    owner: str | None  # a class, or None for a module-level function
    name: str
    parameters: tuple[str, ...] | None
    used_by: str
    calls: tuple[str, ...] = ()


_TRAINER = "transformers.trainer"
_CHECKPOINTS = "training/checkpoints.py: atomic checkpoints"

TRANSFORMERS: tuple[PrivateApi, ...] = (
    PrivateApi(
        _TRAINER,
        "Trainer",
        "_save_checkpoint",
        ("model", "trial"),
        f"{_CHECKPOINTS} (staged, renamed)",
        calls=("_get_output_dir", "save_model", "_save_rng_state", "_rotate_checkpoints"),
    ),
    PrivateApi(_TRAINER, "Trainer", "_get_output_dir", ("trial",), f"{_CHECKPOINTS}: points saves at the staging dir"),
    PrivateApi(
        _TRAINER,
        "Trainer",
        "_rotate_checkpoints",
        ("use_mtime", "output_dir"),
        f"{_CHECKPOINTS}: --save_total_limit, replaced by an atomic rotation",
    ),
    PrivateApi(
        _TRAINER,
        "Trainer",
        "_sorted_checkpoints",
        ("output_dir", "checkpoint_prefix", "use_mtime"),
        f"{_CHECKPOINTS}: which checkpoints the rotation deletes",
    ),
    PrivateApi(_TRAINER, "Trainer", "_save_rng_state", ("output_dir",), "tests: a crash injected mid-save"),
    PrivateApi(_TRAINER, "Trainer", "_load_rng_state", ("checkpoint",), "training/streaming.py: ResumeRandomState"),
    PrivateApi(
        _TRAINER,
        "Trainer",
        "_load_from_checkpoint",
        ("resume_from_checkpoint", "model"),
        "training/checkpoints.py: loads our checkpoint layout",
    ),
    PrivateApi(
        _TRAINER,
        "Trainer",
        "_load_optimizer_and_scheduler",
        ("checkpoint",),
        "training/checkpoints.py: several CPU ranks resume (map_location)",
    ),
    PrivateApi(_TRAINER, "Trainer", "_load_best_model", (), "training/checkpoints.py: --load_best_model_at_end"),
    PrivateApi(_TRAINER, "Trainer", "_get_train_sampler", ("train_dataset",), "training/streaming.py: EpochSampler"),
    PrivateApi(_TRAINER, "Trainer", "_train_batch_size", None, "training/streaming.py: the streaming loader's batch"),
    PrivateApi(
        _TRAINER, "Trainer", "gather_function", None, "training/padded_evaluation.py: evaluation_loop cuts padding"
    ),
    PrivateApi(
        _TRAINER, "Trainer", "_eval_dataloaders", None, "training/padded_evaluation.py: persistent loaders kept by name"
    ),
    PrivateApi(
        _TRAINER,
        "Trainer",
        "current_gradient_accumulation_steps",
        None,
        "device/gaudi.py: divides the loss by the accumulation steps",
    ),
    PrivateApi(_TRAINER, "Trainer", "model_accepts_loss_kwargs", None, "device/gaudi.py: loss division"),
    PrivateApi(_TRAINER, "Trainer", "compute_loss_func", None, "device/gaudi.py: loss division"),
    PrivateApi(
        "transformers.modeling_attn_mask_utils",
        None,
        "_prepare_4d_attention_mask",
        ("mask", "dtype", "tgt_len"),
        "modeling/modeling_bridgetower.py: cross-modal attention masks",
    ),
    PrivateApi(
        "transformers.models.bert.modeling_bert",
        None,
        "BERT_SELF_ATTENTION_CLASSES",
        None,
        "modeling/modeling_bridgetower.py: BERT tower attention classes",
    ),
    PrivateApi(
        "transformers.models.roberta.modeling_roberta",
        None,
        "ROBERTA_SELF_ATTENTION_CLASSES",
        None,
        "modeling/modeling_bridgetower.py: RoBERTa tower attention classes",
    ),
    PrivateApi(
        "transformers.models.bert.modeling_bert",
        "BertSdpaSelfAttention",
        "forward",
        ("hidden_states",),
        "device/gaudi.py: restored after optimum-habana's patches",
    ),
)

_GAUDI_TRAINER = "optimum.habana.transformers.trainer"
OPTIMUM_HABANA: tuple[PrivateApi, ...] = (
    PrivateApi(
        _GAUDI_TRAINER,
        "GaudiTrainer",
        "__init__",
        ("model", "gaudi_config", "args"),
        "device/gaudi.py: CorrectedGaudiTrainer passes gaudi_config",
    ),
    PrivateApi(
        _GAUDI_TRAINER,
        "GaudiTrainer",
        "_save_checkpoint",
        ("model", "trial"),
        f"{_CHECKPOINTS} on Gaudi",
        calls=("_get_output_dir", "save_model", "_save_rng_state", "_rotate_checkpoints"),
    ),
    PrivateApi(_GAUDI_TRAINER, "GaudiTrainer", "_load_rng_state", ("checkpoint",), "ResumeRandomState on Gaudi"),
    PrivateApi(_GAUDI_TRAINER, "GaudiTrainer", "_load_best_model", (), "--load_best_model_at_end on Gaudi"),
    PrivateApi(_GAUDI_TRAINER, "GaudiTrainer", "_get_train_sampler", ("train_dataset",), "EpochSampler on Gaudi"),
    PrivateApi(
        _GAUDI_TRAINER,
        "GaudiTrainer",
        "training_step",
        ("model", "inputs", "num_items_in_batch"),
        "device/gaudi.py: loss division under gradient accumulation",
    ),
    PrivateApi(
        _GAUDI_TRAINER,
        "GaudiTrainer",
        "log",
        ("logs", "start_time", "end_time"),
        "device/gaudi.py: logs as transformers off HPU",
    ),
    PrivateApi(
        _GAUDI_TRAINER,
        "GaudiTrainer",
        "save_model",
        ("output_dir", "_internal_call"),
        "training/checkpoints.py: the final model written atomically",
    ),
    PrivateApi(
        "optimum.habana.transformers.training_args",
        "GaudiTrainingArguments",
        "use_lazy_mode",
        None,
        "device/gaudi.py: loss division (lazy mode + pipelining)",
    ),
    PrivateApi(
        "optimum.habana.transformers.training_args",
        "GaudiTrainingArguments",
        "pipelining_fwd_bwd",
        None,
        "device/gaudi.py: loss division (lazy mode + pipelining)",
    ),
    PrivateApi(
        "optimum.habana.transformers.gaudi_configuration",
        "GaudiConfig",
        "use_fused_adam",
        None,
        "device/gaudi.py: Habana's fused AdamW",
    ),
    PrivateApi(
        "optimum.habana.transformers.gaudi_configuration",
        "GaudiConfig",
        "use_torch_autocast",
        None,
        "device/gaudi.py: no autocast under DeepSpeed",
    ),
    PrivateApi(
        "optimum.habana.transformers.integrations.gaudi_fused_sdpa_attention",
        None,
        "gaudi_fused_sdpa_attention_forward",
        ("module", "query", "key", "value", "attention_mask", "dropout", "scaling"),
        "device/gaudi.py: the towers' fused SDPA",
    ),
)

_WORKERS_DRAW = "training/streaming.py draw_as_new_workers_do: runs draw alike with and without persistent workers"
TORCH: tuple[PrivateApi, ...] = (
    PrivateApi(
        "torch.utils.data.dataloader",
        "DataLoader",
        "_iterator",
        None,
        f"{_WORKERS_DRAW} (a persistent loader keeps its iterator: its workers exist)",
    ),
    PrivateApi(
        "torch.utils.data.dataloader",
        "_BaseDataLoaderIter",
        "_base_seed",
        None,
        f"{_WORKERS_DRAW} (the draw it repeats: the workers' base seed from the loader's generator)",
    ),
)
