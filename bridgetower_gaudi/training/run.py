"""The one run for every task (`run_pretrain.py`, `run_finetune.py --task ...`): parse the flags, build the model,
data and trainer (transformers' Trainer, or optimum-habana's GaudiTrainer with `--use_habana`), train, evaluate,
predict, write the metric files and print one summary line. What differs between tasks lives in
`bridgetower_gaudi.tasks`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, fields

import torch
from transformers import AutoTokenizer, HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..data import DataArguments, ImageTextDataset, SkipLog, synthetic_tokenizer
from ..data.builder import default_loader_workers
from ..data.collator import pad_to_length_buckets
from ..device import (
    DEFAULT_GAUDI_CONFIG,
    GAUDI_ATTENTION,
    GaudiSoftwareMissing,
    backend_name,
    gaudi_training_arguments_class,
    habana_deepspeed_problem,
    lazy_collectives_problem,
    leave_process_group,
    parsing_context,
    require_use_habana_on_hpu,
    resolve_training_arguments,
    share_cpu_cores_with_loader_workers,
    unwritable_directory_problem,
)
from ..tasks.base import Task
from .arguments import PAPER_OPTIMIZER_FLAGS, BridgeTowerTrainingArguments, ModelArguments, RecipeArguments
from .checks import RunFlagError, check_run_flags, fp16_on_gaudi_problem, nothing_to_run_problem
from .optimization import freeze_towers
from .trainer import trainer_class

logger = logging.getLogger("bridgetower_gaudi")


@dataclass
class DeviceSwitches:
    """The flags that choose the training-arguments class and its set-up, read before the full parse in any spelling
    HfArgumentParser accepts (`--use_habana`, `--use_habana=True`, `--use_habana True`, or a JSON file's key)."""

    use_habana: bool = False
    use_cpu: bool = False
    bf16: bool = False
    fp16: bool = False
    use_flash_attention: bool = False
    attn_implementation: str | None = None
    gaudi_config_name: str | None = None
    deepspeed: str | None = None


def device_switches(argv: list[str], values: dict | None = None) -> DeviceSwitches:
    if values is not None:
        return DeviceSwitches(**{f.name: values[f.name] for f in fields(DeviceSwitches) if f.name in values})
    parser = HfArgumentParser(DeviceSwitches, add_help=False)
    return parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)[0]


def parse_args(argv: list[str] | None, task, training_arguments_class=None, default_args: list[str] | None = None):
    """(ModelArguments, DataArguments, the task's arguments, training arguments) from flags or one JSON file. The
    paper's optimiser settings and the task's recipe come first, so the user's flags win. With `--use_habana` the
    training arguments are optimum-habana's GaudiTrainingArguments (Gaudi's own defaults kept). No flags at all:
    `default_args` (the embedded default run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv and default_args is not None:
        argv = list(default_args)
    values = None
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(os.path.abspath(argv[0])) as f:
            values = json.load(f)
    switches = device_switches(argv, values)
    if switches.use_habana and switches.fp16:  # before GaudiTrainingArguments refuses it without naming the fix
        raise RunFlagError(fp16_on_gaudi_problem())
    if switches.use_habana and switches.deepspeed and (problem := habana_deepspeed_problem()):
        raise RunFlagError(problem)  # before GaudiTrainingArguments sets DeepSpeed up with the wrong package
    if training_arguments_class is None:
        require_use_habana_on_hpu(switches.use_habana, switches.use_cpu)
        training_arguments_class = (
            gaudi_training_arguments_class() if switches.use_habana else BridgeTowerTrainingArguments
        )
    # Set before GaudiTrainingArguments is built: its device set-up reads the GaudiConfig, its checks the attention.
    extra = {}
    if switches.use_habana and not switches.gaudi_config_name:
        extra["gaudi_config_name"] = DEFAULT_GAUDI_CONFIG
    if switches.use_flash_attention and switches.attn_implementation not in (None, GAUDI_ATTENTION):
        raise RunFlagError(
            f"--use_flash_attention selects Habana's fused SDPA ({GAUDI_ATTENTION}) and --attn_implementation "
            f"{switches.attn_implementation} another kernel: keep one of the two flags."
        )
    if switches.use_habana and switches.use_flash_attention:
        extra["attn_implementation"] = GAUDI_ATTENTION
    if switches.bf16 and not (switches.use_habana or switches.use_cpu or torch.cuda.is_available()):
        extra["use_cpu"] = True  # transformers accepts bf16 autocast on CPU only with --use_cpu
    parser = HfArgumentParser((ModelArguments, DataArguments, task.arguments_class, training_arguments_class))
    recipe = PAPER_OPTIMIZER_FLAGS + task.recipe_flags
    with parsing_context(training_arguments_class):
        if values is not None:  # the recipe as defaults here too, the file's values win
            parsed = parser.parse_dict({**flags_as_values(parser, recipe), **values, **extra})
        else:
            extra_flags = [item for key, value in extra.items() for item in (f"--{key}", str(value))]
            parsed = parser.parse_args_into_dataclasses(recipe + argv + extra_flags)
    given = set(values or ()) | {a.lstrip("-").split("=")[0] for a in argv if a.startswith("--")}
    accelerator = switches.use_habana or (torch.cuda.is_available() and not switches.use_cpu)
    default_loader_workers(parsed[-1], given, accelerator)
    return parsed


def flags_as_values(parser: HfArgumentParser, flags: list[str]) -> dict:
    """["--name", "value", ...] -> {"name": value typed as the parser's field} (for JSON argument files)."""
    values = {}
    for flag, text in zip(flags[::2], flags[1::2], strict=True):
        action = next(a for a in parser._actions if flag in a.option_strings)
        values[action.dest] = action.type(text) if callable(action.type) else text
    return values


def load_tokenizer(model_args: ModelArguments, data_args: DataArguments, task_words: bool = False,
                   use_fast: bool = True):  # fmt: skip
    """The checkpoint's (or `--tokenizer_name`'s) tokenizer (the fast one unless `use_fast` is off); on synthetic data
    without one, the synthetic word tokenizer (with the downstream tasks' question words when `task_words`)."""
    source = model_args.tokenizer_name or model_args.model_name_or_path or model_args.text_model_name_or_path
    if source:
        return AutoTokenizer.from_pretrained(source, use_fast=use_fast)
    if data_args.dataset_format == "synthetic":
        return synthetic_tokenizer(task_words, relations=data_args.synthetic_task == "relations")
    raise ValueError("no tokenizer: pass --tokenizer_name (or a checkpoint with one) for this data set.")


def resolve_resume(args) -> None:
    """`--resume_from_checkpoint auto`: the newest checkpoint-N in --output_dir (a checkpoint-N folder is always
    complete: it is renamed into place once written), or a fresh start when there is none, so that one command line
    both starts a preemptible job and restarts it."""
    if args.resume_from_checkpoint != "auto":
        return
    last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    logger.info("--resume_from_checkpoint auto: %s", f"resuming from {last}" if last else "no checkpoint, starting")
    args.resume_from_checkpoint = last


def build_trainer(task, model_args, data_args, task_args, args):
    """Model, data, collators, metrics and trainer for already-resolved arguments (Trainer or GaudiTrainer)."""
    if problem := unwritable_directory_problem(args.output_dir, "--output_dir"):
        raise RunFlagError(problem)  # before anything is built or written: a container without a writable volume
    resolve_resume(args)
    # the recipe's total batch via gradient accumulation: before the checks compare it with a DeepSpeed config
    task.resolve_batch(args, data_args)
    check_run_flags(model_args, data_args, task_args, args)  # before anything is built or written
    args.dataloader_drop_last = True  # static shapes: every batch the same size (HPU graphs, compile)
    args.remove_unused_columns = False
    set_seed(args.seed)
    task.resolve(task_args, data_args)
    if problem := lazy_collectives_problem(args, "itc" in getattr(task_args, "objective_list", ())):
        raise RunFlagError(problem)
    if args.do_predict and type(task).predict is Task.predict:
        task.predict(None, None, args.output_dir)  # says that this task has no prediction step, before training
    if threads := share_cpu_cores_with_loader_workers(args):
        logger.info("CPU: %d torch threads, one core left to each data-loader worker", threads)
    tokenizer = load_tokenizer(model_args, data_args, task.synthetic_task_words, args.use_fast_tokenizer)
    model = task.build_model(model_args, task_args, data_args, tokenizer)
    freeze_towers(model, task_args.freeze_text_tower, task_args.freeze_vision_tower)
    model.config.image_transform = data_args.image_transform  # saved: inference uses its evaluation counterpart
    image_size = data_args.image_size or model.config.vision_config.image_size

    # A resumed run adds to its first part's log: its re-reads are the same encounters (SkipLog counts them once).
    skip_log = SkipLog(_skip_log_path(data_args, args, "train"), fresh=not args.resume_from_checkpoint)
    eval_skip_log = SkipLog(_skip_log_path(data_args, args, "validation"), fresh=True)
    build = lambda split, log: task.build_dataset(data_args, task_args, tokenizer, image_size, split, args.seed, log)
    train_dataset = build("train", skip_log) if args.do_train else None
    eval_dataset = build("validation", eval_skip_log) if args.do_eval else None
    for wanted, dataset, need in ((args.do_train, train_dataset, "--do_train needs --train_file"),
                                  (args.do_eval, eval_dataset, "--do_eval needs --validation_file")):  # fmt: skip
        if wanted and dataset is None:
            raise ValueError(f"{need} (or --dataset_name with that split).")

    collator, eval_collator = task.collators(tokenizer, data_args, task_args, args)
    collator, eval_collator = pad_to_length_buckets(data_args.bucket_lengths, collator, eval_collator)
    metrics = task.metrics(tokenizer, data_args, task_args, model)
    args.label_names = metrics.label_names
    trainer = trainer_class(args)(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=collator,
        eval_data_collator=eval_collator,
        processing_class=tokenizer,
        compute_metrics=metrics.compute,
        preprocess_logits_for_metrics=metrics.preprocess,
        recipe_args=task_args,
        skip_log=skip_log,
        eval_skip_log=eval_skip_log,
    )
    trainer.task, trainer.data_args, trainer.image_size = task, data_args, image_size
    return trainer


def _skip_log_path(data_args, args, split: str) -> str:
    """One log per split and rank (workers append to it); `--skipped_records_file` names the train one."""
    if split == "train" and data_args.skipped_records_file:
        return data_args.skipped_records_file
    return os.path.join(args.output_dir, f"skipped_records.{split}.rank{args.process_index}.jsonl")


def run(trainer) -> dict:
    """Train, evaluate and / or predict as the arguments say; write Trainer-style metric files; return the
    metrics."""
    args, task = trainer.args, trainer.task
    logger.info("%s on %s with %s", task.name, backend_name(args), type(trainer).__name__)
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
        eval_metrics = task.evaluate(trainer, trainer.eval_dataset)
        eval_metrics.update({f"eval_{k}": v for k, v in _flat(skipped).items()})
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        results.update(eval_metrics)
    if args.do_predict:
        test_log = SkipLog(_skip_log_path(trainer.data_args, args, "test"), fresh=True)
        test_dataset = task.build_dataset(
            trainer.data_args, trainer.recipe_args, trainer.processing_class, trainer.image_size, "test", args.seed,
            test_log,
        )  # fmt: skip
        if test_dataset is None:
            raise ValueError("--do_predict needs --test_file.")
        predict_metrics = task.predict(trainer, test_dataset, args.output_dir)
        trainer.log_metrics("predict", predict_metrics)
        trainer.save_metrics("predict", predict_metrics)
        results.update(predict_metrics)
    if args.should_save:
        with open(os.path.join(args.output_dir, "all_results.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    logger.info("skipped records: train: %s; validation: %s", trainer.skip_log.report(), trainer.eval_skip_log.report())
    if args.should_log:
        print(summary_line(results, task.summary_metrics))
    return results


def main(argv: list[str] | None, task, default_args: list[str] | None = None) -> dict:
    try:
        model_args, data_args, task_args, training_args = parse_args(argv, task, default_args=default_args)
    except GaudiSoftwareMissing as error:
        raise SystemExit(f"bridgetower_gaudi: {error}") from None  # the fix, without a traceback
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = resolve_training_arguments(training_args)
    if not (args.do_train or args.do_eval or args.do_predict):  # would build the model, then write nothing
        raise RunFlagError(nothing_to_run_problem())
    apply_example_flags(model_args, task_args, args)
    resolve_dataset_location(data_args, args.dataset_revision, args.data_dir, args.cache_dir, args.token)
    trainer = build_trainer(task, model_args, data_args, task_args, args)
    limit_samples(trainer, args)
    results = run(trainer)
    del trainer  # its DistributedDataParallel wrapper holds the process group, which leave_process_group frees
    leave_process_group()
    return results


def apply_example_flags(model_args: ModelArguments, task_args: RecipeArguments, args) -> None:
    """The optimum-habana example flags (`ExampleScriptArguments`, Gaudi's attention) turned into what we build."""
    if args.image_processor_name:
        raise ValueError(
            "--image_processor_name: bridgetower_gaudi builds its own image transforms (CLIP normalisation, "
            "--image_size, --image_transform); drop the flag."
        )
    if args.overwrite_cache:
        raise ValueError(
            "--overwrite_cache: bridgetower_gaudi caches no preprocessed data set (images and captions are turned "
            "into examples as they are read), so there is nothing to overwrite; drop the flag."
        )
    if args.preprocessing_num_workers is not None:
        raise ValueError(
            "--preprocessing_num_workers: examples are built inside the data loader, not in a preprocessing pass; "
            f"use --dataloader_num_workers {args.preprocessing_num_workers} instead."
        )
    if not args.freeze_text_pooler:
        raise ValueError(
            "--freeze_text_pooler False: BridgeTower never uses the text tower's own pooler (it pools in the "
            "cross-modal encoder), so that pooler stays frozen; drop the flag."
        )
    task_args.freeze_vision_tower |= args.freeze_vision_model
    task_args.freeze_text_tower |= args.freeze_text_model
    if (attention := getattr(args, "attn_implementation", None)) not in (None, "sdpa", "eager", GAUDI_ATTENTION):
        raise ValueError(
            f"--attn_implementation {attention}: pick sdpa (torch's SDPA, the default), eager (explicit matmuls, "
            f"the faster one for bf16 training on some CPUs) or, with --use_habana, {GAUDI_ATTENTION}."
        )
    if attention:
        model_args.config_overrides = ",".join(
            filter(None, [model_args.config_overrides, f"attn_implementation={attention}"])
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


def resolve_dataset_location(data_args, revision: str, data_dir: str | None, cache_dir: str | None,
                             token: str | None) -> None:  # fmt: skip
    """`--dataset_revision` / `--data_dir` (optimum-habana's run_bridgetower.py flags): a Hub data set is downloaded
    at that revision and read from the download; `--data_dir` names the sub-folder of the data set to read."""
    if not (revision != "main" or data_dir):
        return
    name = data_args.dataset_name
    if not name:
        raise ValueError("--dataset_revision / --data_dir apply to --dataset_name: add it or drop them.")
    if not os.path.exists(name):
        from huggingface_hub import snapshot_download

        name = snapshot_download(name, repo_type="dataset", revision=revision, cache_dir=cache_dir, token=token)
    elif revision != "main":
        raise ValueError(f"--dataset_revision {revision}: --dataset_name {name} is a local folder, not a Hub data set.")
    if data_dir:
        name = os.path.join(name, data_dir)
        if not os.path.isdir(name):
            raise ValueError(f"--data_dir {data_dir}: {name} is not a folder of the data set.")
    data_args.dataset_name = name


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
        if isinstance(dataset, ImageTextDataset):  # still asked for by epoch and index: new draws each epoch
            setattr(trainer, attribute, dataset.first(limit))
        else:
            setattr(trainer, attribute, torch.utils.data.Subset(dataset, range(min(limit, len(dataset)))))


def _flat(summary: dict) -> dict:
    """Skip counts as metrics (the list of first examples becomes one string)."""
    return {k: (", ".join(v) if isinstance(v, list) else v) for k, v in summary.items()}


def summary_line(results: dict, metrics: tuple[tuple[str, str], ...] = ()) -> str:
    """One line for people: the held-out figures (the task's `metrics`: (label, key) pairs) and the training speed
    that this run produced."""
    parts = [f"{label} {results[key]:.4f}" for label, key in metrics if isinstance(results.get(key), float)]
    if "train_samples_per_second" in results:
        parts.append(f"train {results['train_samples_per_second']:.1f} samples/s")
    return "bridgetower_gaudi: " + (" | ".join(parts) or "done")
