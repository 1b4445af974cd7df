"""Flags that belong to the device: the Gaudi-only flags and the optimum-habana example script's flags. Defined
here (device/ imports nothing from training/); the training arguments of every device include them."""

from __future__ import annotations

from dataclasses import dataclass, field

# Flags that only mean something on Gaudi; off HPU they must stay at their defaults.
HPU_ONLY_FLAGS = {
    "use_lazy_mode": None,
    "use_hpu_graphs_for_training": False,
    "use_hpu_graphs_for_inference": False,
    "gaudi_config_name": None,
    "distribution_strategy": "ddp",
    "pipelining_fwd_bwd": False,
    "non_blocking_data_copy": False,
    "adjust_throughput": False,
    "sdp_on_bf16": False,
    "use_flash_attention": False,
    "flash_attention_recompute": False,
    "mediapipe_dataloader": False,
}


@dataclass
class ExampleScriptArguments:
    """Flags of optimum-habana's examples/contrastive-image-text/run_bridgetower.py that GaudiTrainingArguments lacks:
    accepted on every device with the same names (`device.gaudi` adds them to GaudiTrainingArguments too)."""

    use_flash_attention: bool = field(
        default=False,
        metadata={"help": "Gaudi: towers use Habana's fused SDPA (attn_implementation gaudi_fused_sdpa)."},
    )
    mediapipe_dataloader: bool = field(default=False, metadata={"help": "Gaudi media-pipe loader (not available yet)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N examples only."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first N examples only."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub models are downloaded to."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag, commit) of the models."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: `hf auth login`'s)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow data sets that run their own code."})
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Not used: images go through our own transforms (--image_size)."}
    )
    freeze_vision_model: bool = field(default=False, metadata={"help": "Same as --freeze_vision_tower."})
    freeze_text_model: bool = field(default=False, metadata={"help": "Same as --freeze_text_tower."})
    freeze_text_pooler: bool = field(
        default=True,
        metadata={"help": "The text tower's own pooler: BridgeTower never uses it, so it is always frozen."},
    )
    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Load the fast (Rust) tokenizer when there is one."}
    )
    dataset_revision: str = field(
        default="main", metadata={"help": "Hub revision (branch, tag, commit) of --dataset_name."}
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Sub-folder of --dataset_name (a Hub data set or a local folder) to read."}
    )
    overwrite_cache: bool = field(
        default=False, metadata={"help": "Refused: no preprocessed data set is cached (examples are built as read)."}
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Refused: examples are built in the loader; use --dataloader_num_workers."}
    )
