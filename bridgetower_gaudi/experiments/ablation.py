"""The paper's ablations as one command (`run_scripts/run_ablation.py`): one model per grid point, everything else
fixed, evaluated on held-out data, written as tables in the paper's layout.

Grids (`--grid`; `--values a,b,...` picks the points, the reference point is always added):

- `bridge_type` (Design I): `link_tower_type` over the paper's bridge variants (a)-(i); reference (a) `add`.
- `num_cross_layers` (Design II): L_Z cross-modal layers, every one after the first fed by a bridge
  (`num_bridges` = L_Z - 1, BridgeTower); reference: the base model's L_Z (6 for the paper's base model).
- `num_bridges` (Design III): bridges at the base model's L_Z; reference 0 bridges, the METER two-tower model. The
  paper's "# internal" layers are num_bridges + 1, "# external" L_Z - num_bridges - 1.
- `backbones` (Table 4): `VISION+TEXT` checkpoint-path pairs (CLIP, ViT or DeiT; RoBERTa or BERT), each trained as
  BridgeTower (all bridges) and as METER (0 bridges); each BridgeTower row is compared with its own METER row.

Every (point, seed) is one `run_pretrain.py` process (transformers' TrainingArguments set process environment
variables, such as ACCELERATE_MIXED_PRECISION, that would leak into the next run of the same process) writing a
normal run folder `output_dir/<grid>/<point>/seed<s>/` (checkpoint, all_results.json, logs). The flags of each run are
stored beside it (`ablation_point.json`); a folder whose run finished with the same flags is reused, so an
interrupted grid resumes where it stopped; a run with other flags or cut short is trained again. After training,
retrieval (IR / TR @1/5/10, RSUM) is evaluated here on the held-out split with `evaluation.retrieval` (every pair
scored by ITM: the default model has no ITC head), when the data is synthetic or a Karpathy file.

The tables (`ablation_<grid>.md`, `.csv`, `.png`, and every seed's figures in `ablation_<grid>.json`) give each
point's mean and standard deviation over seeds, its difference to the reference, and mark (*) a difference that
exceeds the spread: |mean - reference mean| > std(point) + std(reference), i.e. the mean +- std bands do not overlap.

This module holds the flags and the runs; the grids' points are in `ablation_grid`, the tables in `ablation_tables`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..tasks.pretrain import TINY_SYNTHETIC_INITIALIZER_FACTOR
from .ablation_grid import GRIDS, PAPER_BRIDGES, AblationError, Point, grid_points
from .ablation_tables import METRICS, markdown_table, summarize, write_tables

# Re-exported: the grid and the tables are read through this module too.
__all__ = ["GRIDS", "METRICS", "PAPER_BRIDGES", "AblationError", "Point", "grid_points", "main", "markdown_table",
           "parse_args", "run", "summarize", "write_tables"]  # fmt: skip

# The default run: the tiny preset with 3 cross-modal layers (its towers have 3 layers, so 0-2 bridges and 1-3
# layers can be compared) on the harder synthetic task, where which object a word describes depends on the other one.
# The tiny synthetic runs' init (TINY_SYNTHETIC_INITIALIZER_FACTOR), not the official 0.02, with which ITM stayed at
# chance for 300 steps and every bridge tied: measured in docs/results/ablations.md ("How to run it").
DEFAULT_MODEL_FLAGS = ["--config_name", "tiny"]
DEFAULT_MODEL_OVERRIDES = {"num_hidden_layers": 3, "initializer_factor": TINY_SYNTHETIC_INITIALIZER_FACTOR}
DEFAULT_DATA_FLAGS = [
    "--dataset_format", "synthetic",
    "--synthetic_task", "relations",
    "--synthetic_train_size", "64000",
    "--synthetic_eval_size", "512",
    "--max_seq_length", "16",
]  # fmt: skip
# Always first, so any flag the user gives wins. Cheap steps, so that a 3-seed grid fits in minutes on 2 CPU cores:
# in-batch ITM negatives (the vision tower runs once per batch and no extra image is drawn). No intermediate
# checkpoints: the final model is the checkpoint. The default run's learning rate (5e-4; the learning rates tried on
# the relations task, dated: docs/results/ablations.md).
TRAINING_FLAGS = [
    "--do_train", "--do_eval",
    "--max_steps", "300",
    "--per_device_train_batch_size", "64",
    "--per_device_eval_batch_size", "64",
    "--learning_rate", "5e-4",
    "--itm_negatives", "in_batch",
    "--save_strategy", "no",
    "--logging_steps", "50",
    "--report_to", "none",
    "--disable_tqdm", "true",
    "--dataloader_num_workers", "0",
]  # fmt: skip
DATA_FLAGS = ("--train_file", "--validation_file", "--dataset_name", "--dataset_format")
MODEL_FLAGS = ("--config_name", "--vision_model_name_or_path", "--text_model_name_or_path")

POINT_FILE = "ablation_point.json"
# Every point runs the pre-training entry point as a module of the installed package (a wheel has no run_scripts/).
LAUNCHER = (sys.executable, "-m", "bridgetower_gaudi.training.pretrain")
RETRIEVAL_FILE = "ablation_retrieval.json"


# --- flags -----------------------------------------------------------------------------------------------------------
@dataclass
class AblationArguments:
    grid: str
    values: list[str] | None
    seeds: int
    parallel: int
    output_dir: str
    seed: int
    config_overrides: dict
    retrieval_images: int
    retrieval_k: str
    run_flags: list[str]  # everything for run_pretrain.py but the per-point ones


def parse_args(argv: list[str] | None = None) -> AblationArguments:
    from ..training import pretrain  # noqa: F401  (first, as run_pretrain.py: training.run alone is an import cycle)
    from ..training.model_builder import parse_overrides

    parser = argparse.ArgumentParser(
        description="Run one of the paper's ablation grids; every other flag goes to run_pretrain.py.",
        allow_abbrev=False,  # --seed must never be read as --seeds
    )
    parser.add_argument("--grid", required=True, choices=GRIDS)
    parser.add_argument("--values", help="Comma-separated points (default: the grid's own; the reference is added).")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds per point: --seed, --seed + 1, ...")
    parser.add_argument("--parallel", type=int, default=1, help="Runs at once (each one process).")
    # Underscores as run_pretrain.py; the dashed spellings (the console script's style) are accepted too.
    parser.add_argument("--output_dir", "--output-dir", default="outputs/ablations")
    parser.add_argument("--seed", type=int, default=0, help="First seed.")
    parser.add_argument(
        "--config_overrides", "--config-overrides", default=None, help="Config fields for every point (key=value,...)."
    )
    parser.add_argument(
        "--retrieval_images",
        "--retrieval-images",
        type=int,
        default=64,
        help="Held-out images for retrieval (0: none).",
    )
    parser.add_argument(
        "--retrieval_k", "--retrieval-k", default="all", help="ITM re-ranks this many ITC candidates, or all pairs."
    )
    args, run_flags = parser.parse_known_args(argv)
    if args.seeds < 1 or args.parallel < 1:
        raise AblationError("--seeds and --parallel must be at least 1.")
    # run_pretrain.py's flags in either spelling (HfArgumentParser takes both), compared with underscores
    given = {"--" + flag[2:].split("=")[0].replace("-", "_") for flag in run_flags if flag.startswith("--")}
    for own in ("--output_dir", "--seed", "--overwrite_output_dir", "--model_name_or_path"):
        if own in given:  # argparse took ours; these are what a pass-through copy would be
            raise AblationError(f"{own} is set per point by the ablation; drop it.")
    overrides = parse_overrides(args.config_overrides)
    flags = list(TRAINING_FLAGS)
    if not given & set(DATA_FLAGS):
        flags += DEFAULT_DATA_FLAGS
    if args.grid != "backbones" and not given & set(MODEL_FLAGS):  # backbones: each pair is the model
        flags += DEFAULT_MODEL_FLAGS
        overrides = {**DEFAULT_MODEL_OVERRIDES, **overrides}
    values = [v.strip() for v in args.values.split(",") if v.strip()] if args.values else None
    return AblationArguments(
        grid=args.grid,
        values=values,
        seeds=args.seeds,
        parallel=args.parallel,
        output_dir=args.output_dir,
        seed=args.seed,
        config_overrides=overrides,
        retrieval_images=args.retrieval_images,
        retrieval_k=args.retrieval_k,
        run_flags=flags + run_flags,
    )


def _flag_value(flags: list[str], name: str, default: str | None = None) -> str | None:
    """The last value given to `name` in `flags` (the one argparse keeps)."""
    value = default
    for index, flag in enumerate(flags):
        if flag == name and index + 1 < len(flags):
            value = flags[index + 1]
        elif flag.startswith(name + "="):
            value = flag.split("=", 1)[1]
    return value


def base_config(args: AblationArguments):
    """The config every point starts from (preset, config file or backbone configs, plus --config_overrides), read
    without building a model, so that every point's config is checked before anything trains. None for a backbones
    grid (each pair has its own) or a Hub name."""
    from ..modeling import PRESETS, BridgeTowerConfig
    from ..modeling.backbones import config_from_backbones

    if args.grid == "backbones":
        return None
    vision = _flag_value(args.run_flags, "--vision_model_name_or_path")
    text = _flag_value(args.run_flags, "--text_model_name_or_path")
    if vision and text:
        if not (os.path.isdir(vision) and os.path.isdir(text)):
            return None
        from transformers import AutoConfig

        vision_config = AutoConfig.from_pretrained(vision)
        vision_config = getattr(vision_config, "vision_config", vision_config)
        return config_from_backbones(vision_config, AutoConfig.from_pretrained(text), **args.config_overrides)
    name = _flag_value(args.run_flags, "--config_name", "tiny")
    if name in PRESETS:
        return BridgeTowerConfig(**{**PRESETS[name], **args.config_overrides})
    if os.path.exists(name):
        return BridgeTowerConfig.from_pretrained(name, **args.config_overrides)
    return None


def check_points(points: list[Point], base) -> None:
    """Build every point's config now: a design the towers cannot feed fails before the first run, with the fix."""
    from ..modeling import BridgeTowerConfig

    if base is None:
        return
    fields = base.to_dict()
    for point in points:
        try:
            BridgeTowerConfig(**{**fields, **point.overrides})
        except ValueError as error:
            raise AblationError(f"grid point {point.name}: {error}") from None


def point_command(args: AblationArguments, point: Point, seed: int, run_dir: str) -> list[str]:
    overrides = {**args.config_overrides, **point.overrides}
    text = ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items())
    flags = [*args.run_flags, *point.flags, "--seed", str(seed), "--output_dir", run_dir, "--overwrite_output_dir"]
    if text:
        flags += ["--config_overrides", text]
    return [*LAUNCHER, *flags]


def run_flags_of(command: list[str]) -> list[str]:
    """A point command's flags (what a finished run is recognised by; the interpreter may differ)."""
    return command[len(LAUNCHER) :]


# --- running ---------------------------------------------------------------------------------------------------------
def run_dir_of(args: AblationArguments, point: Point, seed: int) -> str:
    return os.path.join(args.output_dir, args.grid, point.name, f"seed{seed}")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def finished(run_dir: str, command: list[str]) -> bool:
    """The run in `run_dir` ran to the end with exactly these flags (the interpreter may differ)."""
    stored = _read_json(os.path.join(run_dir, POINT_FILE)) or {}
    same = stored.get("flags") == run_flags_of(command)
    return same and stored.get("seconds") is not None and os.path.isfile(os.path.join(run_dir, "all_results.json"))


def train_point(command: list[str], run_dir: str, log) -> float:
    """Run one point in its own process; its output goes to run_dir/ablation.log. Returns its wall time."""
    os.makedirs(run_dir, exist_ok=True)
    for stale in ("all_results.json", RETRIEVAL_FILE):  # from a run with other flags, or cut short
        if os.path.exists(os.path.join(run_dir, stale)):
            os.remove(os.path.join(run_dir, stale))
    with open(os.path.join(run_dir, POINT_FILE), "w") as f:
        json.dump({"flags": run_flags_of(command), "seconds": None}, f, indent=2)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # several runs share the cores: one thread each unless told otherwise
    env.setdefault("PT_HPU_LAZY_MODE", "1")  # as run_pretrain.py sets it before torch is imported (Gaudi only)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log(f"train {run_dir}")
    start = time.time()
    with open(os.path.join(run_dir, "ablation.log"), "w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.time() - start
    if code != 0:
        with open(os.path.join(run_dir, "ablation.log")) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{run_dir} failed (exit code {code}); the end of its ablation.log:\n{tail}")
    with open(os.path.join(run_dir, POINT_FILE), "w") as f:
        json.dump({"flags": run_flags_of(command), "seconds": seconds}, f, indent=2)
    return seconds


def retrieval_records(run_flags: list[str], seed: int, num_images: int, image_size: int):
    """The held-out split's first `num_images` images with their captions, as the run's evaluation saw them:
    synthetic (the run's held-out seed) or a Karpathy file; None for data retrieval is not evaluated on here."""
    from transformers import HfArgumentParser

    from ..data import DataArguments
    from ..data.synthetic import SyntheticSource

    (data_args, _) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(
        run_flags, return_remaining_strings=True
    )
    if data_args.dataset_format == "synthetic":
        # build_dataset draws held-out pairs with seed + 10_007 (no evaluation image seen in training)
        source = SyntheticSource(num_images, seed + 10_007, max(64, image_size), task=data_args.synthetic_task)
        return [source[i] for i in range(num_images)], data_args
    files = data_args.validation_file or []
    if len(files) == 1 and data_args.dataset_format in ("karpathy", "auto") and files[0].endswith(".json"):
        from ..data.builder import guess_format
        from ..evaluation.retrieval import karpathy_records

        if guess_format(files[0]) == "karpathy":
            records = karpathy_records(files[0], data_args.image_root, data_args.validation_split or "val")
            first = list(dict.fromkeys(r.image_id for r in records))[:num_images]
            return [r for r in records if r.image_id in set(first)], data_args
    return None, data_args


def evaluate_point_retrieval(args: AblationArguments, run_dir: str, seed: int) -> dict | None:
    """Retrieval on the held-out split (cached in run_dir); None when the data is not synthetic / Karpathy."""
    path = os.path.join(run_dir, RETRIEVAL_FILE)
    if (cached := _read_json(path)) is not None:
        return cached or None
    if args.retrieval_images <= 0:
        return None
    import torch
    from transformers import AutoTokenizer

    from ..data.dataset import ExampleBuilder
    from ..data.images import ImageTransform, evaluation_transform
    from ..evaluation.retrieval import RetrievalData, RetrievalOptions, evaluate_retrieval
    from ..modeling import BridgeTowerForPreTraining

    model = BridgeTowerForPreTraining.from_pretrained(run_dir).eval()
    image_size = model.config.vision_config.image_size
    records, data_args = retrieval_records(args.run_flags, seed, args.retrieval_images, image_size)
    metrics = {}
    if records is not None:
        tokenizer = AutoTokenizer.from_pretrained(run_dir)
        transform = ImageTransform(image_size, evaluation_transform(getattr(model.config, "image_transform", "clip")))
        data = RetrievalData.from_records(records, ExampleBuilder(tokenizer, transform, data_args.max_seq_length))
        with torch.inference_mode():
            options = RetrievalOptions(k=args.retrieval_k, progress=False)
            metrics = evaluate_retrieval(model, data.images, data.captions, data.caption_to_image, options)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics or None


def parameter_counts(run_dir: str) -> dict[str, int]:
    """Parameters of the saved model, read from its safetensors header: the bridges alone (both modalities' link
    towers, as the paper's "# Params" of Design I), the cross-modal part, and all."""
    from safetensors import safe_open

    counts = {"bridge_params": 0, "cross_modal_params": 0, "total_params": 0}
    with safe_open(os.path.join(run_dir, "model.safetensors"), "pt") as f:
        for key in f.keys():
            size = math.prod(f.get_slice(key).get_shape())
            counts["total_params"] += size
            if "link_tower" in key:
                counts["bridge_params"] += size
            if key.startswith("bridgetower.cross_modal_"):
                counts["cross_modal_params"] += size
    return counts


def run(args: AblationArguments, log=print) -> dict:
    """Train and evaluate every (point, seed) not already finished, then write the tables. Returns the summary."""
    import torch

    torch.set_num_threads(1)  # this process only evaluates retrieval, beside the training processes
    base = base_config(args)
    base_layers = base.num_hidden_layers if base is not None else 6
    points = grid_points(args.grid, args.values, base_layers)
    check_points(points, base)
    seeds = list(range(args.seed, args.seed + args.seeds))
    jobs = [(point, seed) for point in points for seed in seeds]
    lock, evaluation_lock = threading.Lock(), threading.Lock()
    counts = {"trained": 0, "reused": 0}

    def locked_log(message: str) -> None:
        with lock:
            log(message)

    def job(point: Point, seed: int) -> dict:
        run_dir = run_dir_of(args, point, seed)
        command = point_command(args, point, seed, run_dir)
        if finished(run_dir, command):
            with lock:
                counts["reused"] += 1
        else:
            train_point(command, run_dir, locked_log)
            with lock:
                counts["trained"] += 1
        results = _read_json(os.path.join(run_dir, "all_results.json")) or {}
        with evaluation_lock:  # from_pretrained patches torch globally while it loads: one model at a time
            results.update(evaluate_point_retrieval(args, run_dir, seed) or {})
        results.update(parameter_counts(run_dir))
        results["run_seconds"] = (_read_json(os.path.join(run_dir, POINT_FILE)) or {}).get("seconds")
        locked_log(f"done {run_dir}: " + ", ".join(f"{k} {results[k]:.4g}" for _, k, _ in METRICS if k in results))
        return results

    start = time.time()
    failures = []
    per_seed: dict[str, dict[int, dict]] = {p.name: {} for p in points}
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {pool.submit(job, point, seed): (point, seed) for point, seed in jobs}
        for future, (point, seed) in futures.items():
            try:
                per_seed[point.name][seed] = future.result()
            except Exception as error:  # the other points still run; the grid resumes after the fix
                failures.append(f"{point.name} seed {seed}: {error}")
    summary = summarize(args, points, per_seed, seconds=time.time() - start, **counts)
    write_tables(args, points, summary)
    if failures:
        raise RuntimeError("some runs failed (the others are in the tables; rerun to resume):\n" + "\n".join(failures))
    return summary


def main(argv: list[str] | None = None) -> dict:
    try:
        args = parse_args(argv)
        summary = run(args)
    except AblationError as error:
        raise SystemExit(f"run_ablation: {error}") from None
    print(markdown_table(summary))
    print(f"tables: {os.path.join(args.output_dir, args.grid)}/ablation_{args.grid}.{{md,csv,png,json}}")
    return summary
