"""Pre-training entry point (`run_scripts/run_pretrain.py`): parse, build, train, evaluate, report.

With no arguments it runs the embedded default: a tiny BridgeTower on the synthetic source, on whatever device is
there, then prints ITM accuracy, MLM accuracy and samples/s.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, fields

import torch
from transformers import AutoTokenizer, HfArgumentParser, set_seed

from ..data import DataArguments, PretrainingCollator, SkipLog, build_dataset, synthetic_tokenizer
from ..data.synthetic import COLORS, POSITIONS, SHAPES
from ..device import (
    DEFAULT_GAUDI_CONFIG,
    GAUDI_ATTENTION,
    GaudiSoftwareMissing,
    backend_name,
    gaudi_training_arguments_class,
    parsing_context,
    require_use_habana_on_hpu,
    resolve_training_arguments,
    share_cpu_cores_with_loader_workers,
    trainer_class,
)
from ..modeling import PRESETS, BridgeTowerConfig, BridgeTowerForPreTraining
from .arguments import (
    PAPER_OPTIMIZER_FLAGS,
    BridgeTowerTrainingArguments,
    ModelArguments,
    PretrainingArguments,
    resolve_itm_recipe,
)
from .optimization import freeze_towers
from .trainer import PretrainingMetrics

logger = logging.getLogger("bridgetower_gaudi")

DEFAULT_ARGS = [
    "--config_name", "tiny",
    "--dataset_format", "synthetic",
    "--output_dir", "outputs/pretrain-tiny-synthetic",
    "--overwrite_output_dir",
    "--do_train", "--do_eval",
    "--max_steps", "1000",
    "--per_device_train_batch_size", "64",  # at 32, ITM stays at chance for 600+ steps with the official std 0.02
    "--per_device_eval_batch_size", "64",
    "--learning_rate", "5e-4",
    "--max_seq_length", "16",
    "--synthetic_train_size", "64000",  # one epoch
    "--synthetic_eval_size", "512",
    "--logging_steps", "100",
    "--save_steps", "1000",
    "--save_total_limit", "1",
    "--dataloader_num_workers", "1",
    "--report_to", "tensorboard",
    "--seed", "0",
]  # fmt: skip


@dataclass
class DeviceSwitches:
    """The flags that choose the training-arguments class and its set-up, read before the full parse in any spelling
    HfArgumentParser accepts (`--use_habana`, `--use_habana=True`, `--use_habana True`, or a JSON file's key)."""

    use_habana: bool = False
    use_cpu: bool = False
    bf16: bool = False
    use_flash_attention: bool = False
    gaudi_config_name: str | None = None


def device_switches(argv: list[str], values: dict | None = None) -> DeviceSwitches:
    if values is not None:
        return DeviceSwitches(**{f.name: values[f.name] for f in fields(DeviceSwitches) if f.name in values})
    parser = HfArgumentParser(DeviceSwitches, add_help=False)
    return parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)[0]


def parse_args(argv: list[str] | None = None, training_arguments_class=None):
    """(ModelArguments, DataArguments, PretrainingArguments, training arguments) from flags or one JSON file. With
    `--use_habana` the training arguments are optimum-habana's GaudiTrainingArguments (Gaudi's own defaults kept)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = DEFAULT_ARGS
    values = None
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(os.path.abspath(argv[0])) as f:
            values = json.load(f)
    switches = device_switches(argv, values)
    if training_arguments_class is None:
        require_use_habana_on_hpu(switches.use_habana, switches.use_cpu)
        training_arguments_class = (
            gaudi_training_arguments_class() if switches.use_habana else BridgeTowerTrainingArguments
        )
    # Set before GaudiTrainingArguments is built: its device set-up reads the GaudiConfig, its checks the attention.
    extra = {}
    if switches.use_habana and not switches.gaudi_config_name:
        extra["gaudi_config_name"] = DEFAULT_GAUDI_CONFIG
    if switches.use_habana and switches.use_flash_attention:
        extra["attn_implementation"] = GAUDI_ATTENTION
    if switches.bf16 and not (switches.use_habana or switches.use_cpu or torch.cuda.is_available()):
        extra["use_cpu"] = True  # transformers accepts bf16 autocast on CPU only with --use_cpu
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainingArguments, training_arguments_class))
    with parsing_context(training_arguments_class):
        if values is not None:  # the paper's optimiser settings as defaults here too, the file's values win
            paper = {
                flag[2:]: float(value)
                for flag, value in zip(PAPER_OPTIMIZER_FLAGS[::2], PAPER_OPTIMIZER_FLAGS[1::2], strict=True)
            }
            return parser.parse_dict({**paper, **values, **extra})
        extra_flags = [item for key, value in extra.items() for item in (f"--{key}", str(value))]
        return parser.parse_args_into_dataclasses(PAPER_OPTIMIZER_FLAGS + argv + extra_flags)


def parse_overrides(text: str | None) -> dict:
    """'a=1,b=gated,c=true' -> {"a": 1, "b": "gated", "c": True} (values parsed as JSON when they are)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides item {item!r} is not key=value.")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return overrides


def load_tokenizer(model_args: ModelArguments, data_args: DataArguments):
    source = model_args.tokenizer_name or model_args.model_name_or_path or model_args.text_model_name_or_path
    if source:
        return AutoTokenizer.from_pretrained(source)
    if data_args.dataset_format == "synthetic":
        return synthetic_tokenizer()
    raise ValueError("no tokenizer: pass --tokenizer_name (or a checkpoint with one) for this data set.")


def build_model(model_args: ModelArguments, pretraining_args: PretrainingArguments, data_args, tokenizer):
    overrides = parse_overrides(model_args.config_overrides)
    overrides["pretraining_objectives"] = pretraining_args.objective_list
    if model_args.model_name_or_path:
        return BridgeTowerForPreTraining.from_pretrained(model_args.model_name_or_path, **overrides)
    if model_args.vision_model_name_or_path or model_args.text_model_name_or_path:
        if not (model_args.vision_model_name_or_path and model_args.text_model_name_or_path):
            raise ValueError("uni-modal init needs both --vision_model_name_or_path and --text_model_name_or_path.")
        return BridgeTowerForPreTraining.from_backbones(
            model_args.vision_model_name_or_path,
            model_args.text_model_name_or_path,
            image_size=data_args.image_size or 288,
            **overrides,
        )
    name = model_args.config_name or "tiny"
    if name in PRESETS:
        fields = {**PRESETS[name]}
    else:
        fields = BridgeTowerConfig.from_pretrained(name).to_dict()
    text = dict(fields.get("text_config", {}))
    text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)  # random init: fit the tokenizer
    fields["text_config"] = text
    if data_args.image_size:
        fields["vision_config"] = {**fields.get("vision_config", {}), "image_size": data_args.image_size}
    config = BridgeTowerConfig(**{**fields, **overrides})
    if config.text_config.vocab_size < len(tokenizer):
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary {config.text_config.vocab_size}: "
            "pass --config_overrides with a matching text vocabulary or another --tokenizer_name."
        )
    return BridgeTowerForPreTraining(config)


def synthetic_word_classes(tokenizer, data_args) -> dict[str, set[int]] | None:
    if data_args.dataset_format != "synthetic" or data_args.train_file or data_args.dataset_name:
        return None
    ids = lambda words: {tokenizer.convert_tokens_to_ids(w) for w in words}
    return {"color": ids(COLORS), "shape": ids(SHAPES), "position": ids(POSITIONS)}


def build_trainer(model_args, data_args, pretraining_args, args):
    """Model, data, collator, metrics and trainer for already-resolved arguments (Trainer or GaudiTrainer)."""
    args.dataloader_drop_last = True  # static shapes: every batch the same size (HPU graphs, compile)
    args.remove_unused_columns = False
    set_seed(args.seed)
    resolve_itm_recipe(pretraining_args, data_args)
    if threads := share_cpu_cores_with_loader_workers(args):
        logger.info("CPU: %d torch threads, one core left to each data-loader worker", threads)
    tokenizer = load_tokenizer(model_args, data_args)
    model = build_model(model_args, pretraining_args, data_args, tokenizer)
    freeze_towers(model, pretraining_args.freeze_text_tower, pretraining_args.freeze_vision_tower)
    image_size = data_args.image_size or model.config.vision_config.image_size

    objectives = pretraining_args.objective_list
    skip_log = SkipLog(_skip_log_path(data_args, args, "train"), fresh=True)
    eval_skip_log = SkipLog(_skip_log_path(data_args, args, "validation"), fresh=True)
    train_dataset = (
        build_dataset(data_args, tokenizer, image_size, "train", args.seed, skip_log) if args.do_train else None
    )
    eval_dataset = (
        build_dataset(data_args, tokenizer, image_size, "validation", args.seed, eval_skip_log)
        if args.do_eval
        else None
    )
    if args.do_eval and eval_dataset is None:
        raise ValueError("--do_eval needs --validation_file (or --dataset_name with a validation split).")

    collator = PretrainingCollator(
        tokenizer,
        mlm_probability=data_args.mlm_probability,
        whole_word_masking=data_args.whole_word_masking,
        itm_negatives=data_args.itm_negatives,
        reuse_image_features=pretraining_args.pretrain_step == "one_pass",
        mlm="mlm" in objectives,
        seed=args.seed if data_args.deterministic_masking else None,
    )
    # Held-out figures must not depend on the training recipe: every recipe is evaluated on the same pairs (half
    # matched, half with another image of the held-out set) and the same masks.
    eval_collator = PretrainingCollator(
        tokenizer,
        mlm_probability=data_args.mlm_probability,
        whole_word_masking=data_args.whole_word_masking,
        itm_negatives="in_batch" if "itm" in objectives else "none",
        reuse_image_features=True,
        mlm="mlm" in objectives,
        seed=args.seed,
    )
    metrics = PretrainingMetrics(objectives, synthetic_word_classes(tokenizer, data_args))
    args.label_names = metrics.label_names
    return trainer_class(args)(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        eval_data_collator=eval_collator,
        processing_class=tokenizer,
        compute_metrics=metrics,
        preprocess_logits_for_metrics=metrics.preprocess,
        pretraining_args=pretraining_args,
        skip_log=skip_log,
        eval_skip_log=eval_skip_log,
    )


def _skip_log_path(data_args, args, split: str) -> str:
    """One log per split and rank (workers append to it); `--skipped_records_file` names the train one."""
    if split == "train" and data_args.skipped_records_file:
        return data_args.skipped_records_file
    return os.path.join(args.output_dir, f"skipped_records.{split}.rank{args.process_index}.jsonl")


def run(trainer) -> dict:
    """Train and / or evaluate as the arguments say; write Trainer-style metric files; return the metrics."""
    args = trainer.args
    logger.info("training on %s with %s", backend_name(args), type(trainer).__name__)
    results = {}
    if args.do_train:
        train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        trainer.save_model()
        train_metrics = {**train_result.metrics, **_flat(trainer.skipped_records("train"))}
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
        trainer.save_state()
        results.update(train_metrics)
    if args.do_eval:
        skipped = trainer.skipped_records("validation")
        eval_metrics = {**trainer.evaluate(), **{f"eval_{k}": v for k, v in _flat(skipped).items()}}
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        results.update(eval_metrics)
    if args.should_save:
        with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    logger.info("skipped records: train: %s; validation: %s", trainer.skip_log.report(), trainer.eval_skip_log.report())
    if args.should_log:
        print(summary_line(results))
    return results


def main(argv: list[str] | None = None) -> dict:
    try:
        model_args, data_args, pretraining_args, training_args = parse_args(argv)
    except GaudiSoftwareMissing as error:
        raise SystemExit(f"bridgetower_gaudi: {error}") from None  # the fix, without a traceback
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = resolve_training_arguments(training_args)
    apply_example_flags(model_args, pretraining_args, args)
    trainer = build_trainer(model_args, data_args, pretraining_args, args)
    limit_samples(trainer, args)
    return run(trainer)


def apply_example_flags(model_args: ModelArguments, pretraining_args: PretrainingArguments, args) -> None:
    """The optimum-habana example flags (`ExampleScriptArguments`, Gaudi's attention) turned into what we build."""
    if args.do_predict:
        raise ValueError(
            "--do_predict: pre-training has no test-set prediction step here; use --do_eval with a --validation_file."
        )
    if args.image_processor_name:
        raise ValueError(
            "--image_processor_name: bridgetower_gaudi builds its own image transforms (CLIP normalisation, "
            "--image_size, --image_transform); drop the flag."
        )
    pretraining_args.freeze_vision_tower |= args.freeze_vision_model
    pretraining_args.freeze_text_tower |= args.freeze_text_model
    if getattr(args, "attn_implementation", None) == GAUDI_ATTENTION:
        model_args.config_overrides = ",".join(
            filter(None, [model_args.config_overrides, f"attn_implementation={GAUDI_ATTENTION}"])
        )
    if args.trust_remote_code:
        import datasets

        datasets.config.HF_DATASETS_TRUST_REMOTE_CODE = True  # read when a data set is loaded
    if args.cache_dir or args.token or args.model_revision != "main":
        resolve_hub_models(model_args, args.cache_dir, args.model_revision, args.token)


def resolve_hub_models(model_args: ModelArguments, cache_dir: str | None, revision: str, token: str | None) -> None:
    """Download Hub models named in the flags at `--model_revision` into `--cache_dir` (with `--token`) and load
    them from there; local paths and presets are left alone."""
    from huggingface_hub import snapshot_download

    for name in ("model_name_or_path", "vision_model_name_or_path", "text_model_name_or_path", "tokenizer_name"):
        value = getattr(model_args, name)
        if value and not os.path.exists(value):
            setattr(model_args, name, snapshot_download(value, revision=revision, cache_dir=cache_dir, token=token))


def limit_samples(trainer, args) -> None:
    """`--max_train_samples` / `--max_eval_samples`: the first N examples of each split, as optimum-habana's
    examples select them."""
    for attribute, limit, flag in (
        ("train_dataset", args.max_train_samples, "--max_train_samples"),
        ("eval_dataset", args.max_eval_samples, "--max_eval_samples"),
    ):
        dataset = getattr(trainer, attribute)
        if limit is None or dataset is None:
            continue
        if isinstance(dataset, torch.utils.data.IterableDataset):
            raise ValueError(f"{flag} needs a random-access data set: drop --streaming (tar shards always stream).")
        setattr(trainer, attribute, torch.utils.data.Subset(dataset, range(min(limit, len(dataset)))))


def _flat(summary: dict) -> dict:
    """Skip counts as metrics (the list of first examples becomes one string)."""
    return {k: (", ".join(v) if isinstance(v, list) else v) for k, v in summary.items()}


def summary_line(results: dict) -> str:
    """One line for people: the held-out figures and the training speed that this run produced."""
    parts = [
        f"{label} {results[key]:.4f}"
        for label, key in (
            ("ITM accuracy", "eval_itm_accuracy"),
            ("MLM accuracy", "eval_mlm_accuracy"),
            ("MLM accuracy on colour/shape/position words", "eval_mlm_attribute_accuracy"),
            ("text alone allows", "eval_mlm_attribute_text_only_baseline"),
        )
        if isinstance(results.get(key), float)
    ]
    if "train_samples_per_second" in results:
        parts.append(f"train {results['train_samples_per_second']:.1f} samples/s")
    return "bridgetower_gaudi: " + (" | ".join(parts) or "done")


if __name__ == "__main__":
    main()
