"""Throughput report: our BridgeTower vs transformers' on the current device, same config, weights, inputs and
precision, the two models taking turns step by step in one process (so that their ratio survives a busy machine).

    python benchmarks/run_benchmarks.py --preset base --output_dir benchmarks/results
    python benchmarks/run_benchmarks.py --task itc --preset large --output_dir benchmarks/results  # optimum-habana
    python benchmarks/run_benchmarks.py --preset tiny --quick --output_dir /tmp/bench  # CI: seconds

Measured, each after warm-up: training samples/s of the pre-training step (MLM + ITM: ours against transformers'
MaskedLM + ImageAndTextRetrieval sharing weights, two passes; 50-token and Karpathy-length captions), ITM and ITC
fine-tuning steps (forward + backward + optimizer step); inference pairs/s of ITM scoring and of re-ranking
candidate images for a caption; peak memory; FLOPs per step (torch.utils.flop_counter), achieved FLOP/s and MFU
against a matmul peak measured here in the same run; samples/s against batch size; the data path (JPEG images/s per
loader worker vs what the model consumes); how many distinct input shapes each model saw per tensor. Each model runs
as a user runs it by default: ours with our trainer's optimizer (parameter groups, fused AdamW), transformers' with
its Trainer's default optimizer (fused AdamW).

Writes <output_dir>/<device>-<date>/: report.json (every figure with device, versions, git commit, config and this
command), report.md, throughput.png, memory.png, scaling.png.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

import torch
import transformers

import bridgetower_gaudi as btg
from bridgetower_gaudi import PRESETS
from bridgetower_gaudi.data import PretrainingCollator, decode_image
from bridgetower_gaudi.data.collator import PadToLengthBucket
from bridgetower_gaudi.data.images import normalize_pixels
from bridgetower_gaudi.modeling.modeling_bridgetower import TowerOutput
from bridgetower_gaudi.training.trainer import BridgeTowerTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data_loading  # noqa: E402  (benchmarks/data_loading.py: JPEG files, loader rate, workers needed)
import measure  # noqa: E402  (benchmarks/measure.py, beside this script)
import step_counts  # noqa: E402  (benchmarks/step_counts.py: Karpathy-length captions, the buckets)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ("pretrain", "itm", "itc", "itm_inference", "rerank")
# optimum-habana's published run_bridgetower.py figures (BridgeTower-large ITC fine-tuning, batch 48 per card, bf16,
# 8 cards; its test baselines), samples/s for 8 cards.
OPTIMUM_HABANA_8_CARDS = {"Gaudi2": 904.9, "Gaudi3": 783.5, "A100": 254.7}
# run_bridgetower.py's shape: images at the checkpoint's image_size (BridgeTower-large: 294), captions padded to its
# --max_seq_length default 128, --per_device_train_batch_size 48, --bf16.
OPTIMUM_HABANA_SHAPE = dict(batch_size=48, seq_len=128, precision="bf16")


# --- inputs ----------------------------------------------------------------------------------------------------------
class _Vocabulary:
    """The part of a tokenizer PretrainingCollator reads (RoBERTa's special ids; the mask token is the last id)."""

    def __init__(self, size: int):
        self.size, self.all_special_ids, self.mask_token_id = size, [0, 1, 2, 3], size - 1

    def __len__(self) -> int:
        return self.size


def captions(config, batch: int, seq_len: int, generator) -> dict:
    """Full-length captions (bos ... eos, no padding): one shape for every batch."""
    input_ids = torch.randint(5, config.text_config.vocab_size - 1, (batch, seq_len), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = 0, 2
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def images(config, batch: int, generator) -> torch.Tensor:
    size = config.vision_config.image_size
    return torch.randn(batch, 3, size, size, generator=generator)


def pretraining_batches(config, batch: int, seq_len: int, caption_lengths: str, generator) -> tuple[dict, dict]:
    """(ours, transformers') batch of the official recipe (MLM 15%, data-set ITM negatives), the same captions, masks,
    pairs and images: ours as our collator builds it (uint8 images, the batch's own images reused for ITM
    positives, only negatives sent again) cut to its --length_buckets; transformers' padded to the batch's longest
    caption, float images, an MLM batch and an ITM batch (its two models take every image again).
    `caption_lengths`: "full" (every caption `seq_len` tokens) or "karpathy" (COCO Karpathy-like lengths, see
    step_counts.py)."""
    lengths = (
        [seq_len] * batch if caption_lengths == "full" else step_counts.karpathy_lengths(batch, max_length=seq_len)
    )
    examples = step_counts.pretraining_examples(config, lengths, seq_len, generator)
    collator = PretrainingCollator(_Vocabulary(config.text_config.vocab_size), itm_negatives="dataset", seed=0)
    buckets = [b for b in step_counts.BUCKETS if b < seq_len] + [seq_len]
    ours = PadToLengthBucket(collator, buckets)(examples)
    full = collator(examples)  # the same draws (seeded by content), not cut
    longest = max(lengths)
    clean_ids = torch.stack([e["input_ids"] for e in examples])[:, :longest].contiguous()
    mask = full["attention_mask"][:, :longest].contiguous()
    pool = normalize_pixels(torch.cat([full["pixel_values"], full["itm_pixel_values"]]))
    theirs = {
        "mlm": {"input_ids": full["input_ids"][:, :longest].contiguous(), "attention_mask": mask,
                "labels": full["labels"][:, :longest].contiguous(),
                "pixel_values": normalize_pixels(full["pixel_values"])},
        "itm": {"input_ids": clean_ids, "attention_mask": mask, "pixel_values": pool[full["itm_image_index"]]},
        "itm_labels": full["itm_labels"],
    }  # fmt: skip
    return ours, theirs


# --- models and optimizers -------------------------------------------------------------------------------------------
def transformers_config(preset: str, image_size: int | None = None) -> transformers.BridgeTowerConfig:
    fields = {**PRESETS[preset], "contrastive_hidden_size": 512, "logit_scale_init_value": 2.6592}
    if image_size is not None:
        fields["vision_config"] = {**fields.get("vision_config", {}), "image_size": image_size}
    return transformers.BridgeTowerConfig(**fields)


def model_pair(head: str, config: transformers.BridgeTowerConfig, folder: str, device, attention: str = "sdpa"):
    """(ours, transformers') of class `head`: transformers' model, saved, loaded by ours (with `attention`, our
    --attn_implementation): the same weights. Transformers' BridgeTower has eager attention only."""
    torch.manual_seed(0)
    theirs = getattr(transformers, head)(config)
    path = os.path.join(folder, head)
    theirs.save_pretrained(path)
    ours = getattr(btg, head).from_pretrained(path, attn_implementation=attention)
    return ours.to(device).train(), theirs.to(device).train()


def our_optimizer(model, folder: str):
    """What our trainer builds for a run_pretrain / run_finetune user (the paper's groups and AdamW settings)."""
    args = transformers.TrainingArguments(
        os.path.join(folder, "ours"), report_to="none", learning_rate=1e-5, weight_decay=0.01, adam_beta2=0.98
    )
    return BridgeTowerTrainer(model=model, args=args).create_optimizer()


def transformers_optimizer(model, folder: str):
    """transformers' Trainer default (`optim="adamw_torch_fused"` from torch 2.8)."""
    args = transformers.TrainingArguments(os.path.join(folder, "theirs"), report_to="none", learning_rate=1e-5)
    return transformers.Trainer(model=model, args=args).create_optimizer()


def describe_optimizer(optimizer) -> str:
    group = optimizer.param_groups[0]
    implementation = "fused" if group.get("fused") else "foreach" if group.get("foreach") else "default"
    return f"{type(optimizer).__name__} ({implementation})"


# --- one measured case -------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    case: str
    model: str  # "ours", "transformers", ...
    kind: str  # "train" or "inference"
    batch_size: int
    samples_per_step: int
    seconds: list[float]
    flops_per_step: int | None = None
    peak_memory_bytes: int | None = None
    optimizer: str | None = None
    note: str = ""
    samples_per_second: float = 0.0
    achieved_flops: float | None = None
    mfu: float | None = None

    def finish(self, peak: float) -> Measurement:
        seconds = measure.median(self.seconds)
        self.samples_per_second = self.samples_per_step / seconds
        if self.flops_per_step:
            self.achieved_flops = self.flops_per_step / seconds
            self.mfu = self.achieved_flops / peak
        return self


@dataclass
class Runner:
    args: argparse.Namespace
    device: torch.device
    folder: str
    peak: float  # FLOP/s of the run's precision
    shapes: measure.ShapeLog = field(default_factory=measure.ShapeLog)
    results: list[Measurement] = field(default_factory=list)
    memory_method: str = ""  # how peak memory was read (set by the first measured step)

    def autocast(self):
        if self.args.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, model, batch: dict, optimizer):
        def step():
            with self.autocast():
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step

    def inference_step(self, forward):
        def step():
            with torch.inference_mode(), self.autocast():
                forward()

        return step

    def run(self, case: str, kind: str, entries: list[tuple], batch_size: int, costs: bool = True):
        """`entries`: (label, model, step, optimizer or None). FLOPs and memory from one untimed step each (unless
        `costs` is False), then the steps timed in turns."""
        measured = {}
        entries = [(label, model, self.shapes.in_context(f"{case}/{label}/batch{batch_size}", step), optimizer)
                   for label, model, step, optimizer in entries]  # fmt: skip
        for label, model, step, optimizer in entries:
            flops = memory = None
            if costs:
                flops = measure.count_flops(step)
                memory, self.memory_method = measure.peak_memory(
                    step, self.device, measure.module_tensors(model, optimizer)
                )
            measured[label] = Measurement(
                case, label, kind, batch_size, batch_size, [], flops, memory,
                describe_optimizer(optimizer) if optimizer is not None else None,
            )  # fmt: skip
        timings = measure.time_interleaved({label: step for label, _, step, _ in entries}, self.args.steps, self.device)
        for label, seconds in timings.items():
            measured[label].seconds = seconds
            self.results.append(measured[label].finish(self.peak))
            r = measured[label]
            unit = "samples/s" if kind == "train" else "pairs/s"
            print(
                f"{case:18s} {label:16s} batch {batch_size:3d} {r.samples_per_second:9.2f} {unit}  MFU {r.mfu or 0:.3f}"
            )

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --- the cases ----------------------------------------------------------------------------------------------------
def run_pretrain(runner: Runner, config, batch_size: int, seq_len: int):
    """Our pre-training step (one vision pass, MLM decoder at masked positions, captions in length buckets) against
    what a transformers user writes for the same recipe: BridgeTowerForMaskedLM and
    BridgeTowerForImageAndTextRetrieval sharing one BridgeTowerModel (one set of weights), two full passes, the
    losses summed, captions padded to the batch's longest. At `seq_len` tokens ("pretrain") and with Karpathy-length
    captions ("pretrain_karpathy")."""
    folder = runner.folder
    torch.manual_seed(0)
    theirs_mlm = transformers.BridgeTowerForMaskedLM(config)
    theirs_itm = transformers.BridgeTowerForImageAndTextRetrieval(config)
    theirs_itm.bridgetower = theirs_mlm.bridgetower  # one set of weights
    theirs_mlm.save_pretrained(os.path.join(folder, "pretrain"))
    ours = btg.BridgeTowerForPreTraining.from_pretrained(  # + a fresh ITM head
        os.path.join(folder, "pretrain"), attn_implementation=runner.args.attn_implementation
    )
    ours.itm_score.load_state_dict(theirs_itm.itm_score.state_dict())
    ours = ours.to(runner.device).train()
    theirs_mlm, theirs_itm = theirs_mlm.to(runner.device).train(), theirs_itm.to(runner.device).train()
    theirs = torch.nn.ModuleDict({"mlm": theirs_mlm, "itm_score": theirs_itm.itm_score})
    runner.shapes.watch(ours)
    runner.shapes.watch(theirs_mlm)
    ours_optimizer, theirs_optimizer = our_optimizer(ours, folder), transformers_optimizer(theirs, folder)
    for case, lengths in (("pretrain", "full"), ("pretrain_karpathy", "karpathy")):
        ours_batch, theirs_batch = pretraining_batches(config, batch_size, seq_len, lengths,
                                                       torch.Generator().manual_seed(0))  # fmt: skip
        ours_batch = runner.to_device(ours_batch)
        mlm_batch, itm_batch = runner.to_device(theirs_batch["mlm"]), runner.to_device(theirs_batch["itm"])
        itm_labels = theirs_batch["itm_labels"].to(runner.device)

        def theirs_step(mlm_batch=mlm_batch, itm_batch=itm_batch, itm_labels=itm_labels):
            with runner.autocast():
                loss = theirs_mlm(**mlm_batch).loss
                loss = loss + torch.nn.functional.cross_entropy(theirs_itm(**itm_batch).logits.float(), itm_labels)
            loss.backward()
            theirs_optimizer.step()
            theirs_optimizer.zero_grad(set_to_none=True)

        entries = [("ours", ours, runner.train_step(ours, ours_batch, ours_optimizer), ours_optimizer),
                   ("transformers", theirs, theirs_step, theirs_optimizer)]  # fmt: skip
        runner.run(case, "train", entries, batch_size)
    runner.shapes.context = ""  # the models and optimizers go with this function's frame


def run_finetune(runner: Runner, task: str, config, batch_size: int, seq_len: int, scaling: list[int]):
    """ITM (ForImageAndTextRetrieval, cross-entropy on match labels) or ITC (ForContrastiveLearning, its 3-way
    contrastive loss) fine-tuning, ours vs transformers; ITM also at the scaling batch sizes."""
    head = "BridgeTowerForImageAndTextRetrieval" if task == "itm" else "BridgeTowerForContrastiveLearning"
    ours, theirs = model_pair(head, config, runner.folder, runner.device, runner.args.attn_implementation)
    runner.shapes.watch(ours)
    runner.shapes.watch(theirs)
    optimizers = {
        "ours": our_optimizer(ours, runner.folder),
        "transformers": transformers_optimizer(theirs, runner.folder),
    }
    for size in [batch_size, *[s for s in scaling if s != batch_size]]:
        generator = torch.Generator().manual_seed(size)
        batch = {**captions(config, size, seq_len, generator), "pixel_values": images(config, size, generator)}
        if task == "itm":
            batch["labels"] = torch.arange(size) % 2
        else:
            batch["return_loss"] = True
        batch = runner.to_device(batch)
        entries = [(label, model, runner.train_step(model, batch, optimizers[label]), optimizers[label])
                   for label, model in (("ours", ours), ("transformers", theirs))]  # fmt: skip
        runner.run(f"{task}_train" if size == batch_size else f"{task}_train_scaling", "train", entries, size)
    del ours, theirs, optimizers
    gc.collect()


def run_inference(runner: Runner, config, batch_size: int, seq_len: int, tasks: list[str]):
    """ITM scoring of `batch_size` pairs, and re-ranking `batch_size` candidate images for one caption: ours runs each
    tower once and only the cross-modal encoder per pair (as our retrieval evaluation and pipeline do); a
    transformers user runs the whole model on every (caption, image) pair."""
    ours, theirs = model_pair("BridgeTowerForImageAndTextRetrieval", config, runner.folder, runner.device,
                               runner.args.attn_implementation)  # fmt: skip
    ours.eval(), theirs.eval()
    runner.shapes.watch(ours)
    runner.shapes.watch(theirs)
    generator = torch.Generator().manual_seed(1)
    batch = runner.to_device(
        {**captions(config, batch_size, seq_len, generator), "pixel_values": images(config, batch_size, generator)}
    )
    if "itm_inference" in tasks:
        entries = [(label, model, runner.inference_step(lambda m=model: m(**batch).logits), None)
                   for label, model in (("ours", ours), ("transformers", theirs))]  # fmt: skip
        runner.run("itm_inference", "inference", entries, batch_size)
    if "rerank" in tasks:
        query = {k: v[:1] for k, v in batch.items() if k != "pixel_values"}
        repeated = {k: v.expand(batch_size, -1) for k, v in query.items()}
        top_layers = ours.config.num_bridges + 1

        def ours_rerank():
            bridgetower = ours.bridgetower
            text = bridgetower.encode_text(query["input_ids"], query["attention_mask"])
            image = bridgetower.encode_image(batch["pixel_values"])
            text = text.index_select(torch.zeros(batch_size, dtype=torch.long, device=runner.device), top_layers)
            image = TowerOutput(image.hidden_states[-top_layers:], image.mask)
            return ours.itm_score(bridgetower.fuse(text, image).pooler_output)

        def transformers_rerank():
            return theirs(**repeated, pixel_values=batch["pixel_values"]).logits

        entries = [
            ("ours", ours, runner.inference_step(ours_rerank), None),
            ("transformers", theirs, runner.inference_step(transformers_rerank), None),
        ]
        runner.run("rerank", "inference", entries, batch_size)


# --- levers: what each speed-up we tried is worth, measured on our ITM training step ----------------------------
LEVERS = {
    "fused_adamw": (True, "fused AdamW (our trainer's default on CPU and CUDA) against foreach AdamW"),
    "compile": (False, "torch.compile (inductor) of the vision and text encoders and each cross-modal layer, against "
                "eager; compile time (minutes on CPU) not counted"),
}  # fmt: skip


@contextlib.contextmanager
def compiled_parts(model):
    """The vision and text encoders and each cross-modal layer replaced by their torch.compile wrappers while active
    (the wrappers share the model's parameters, so the same optimizer steps them and no copy is held)."""
    bridgetower = model.bridgetower
    parts = [(bridgetower.vision_model, "encoder"), (bridgetower.text_model, "encoder")]
    parts += [(layers, str(i)) for layers in (bridgetower.cross_modal_text_layers, bridgetower.cross_modal_image_layers)
              for i in range(len(layers))]  # fmt: skip
    if not hasattr(model, "_benchmark_compiled"):  # compiled once, reused by every step
        model._benchmark_compiled = [torch.compile(getattr(parent, name)) for parent, name in parts]
    originals = [getattr(parent, name) for parent, name in parts]
    for (parent, name), compiled in zip(parts, model._benchmark_compiled, strict=True):
        setattr(parent, name, compiled)
    try:
        yield
    finally:
        for (parent, name), original in zip(parts, originals, strict=True):
            setattr(parent, name, original)


def lever_variant(lever: str, model, optimizer, runner: Runner, batch: dict):
    """(optimizer, step) of our ITM training step with `lever` flipped: off for the kept ones, on for the others.
    The same model (and, but for fused_adamw, the same optimizer): nothing large is copied."""
    if lever == "fused_adamw":
        groups = [{**group, "fused": None, "foreach": True} for group in optimizer.param_groups]
        optimizer = torch.optim.AdamW(groups)
    plain = runner.train_step(model, batch, optimizer)
    if lever != "compile":
        return optimizer, plain

    def step():
        with compiled_parts(model):
            plain()

    return optimizer, step


def run_levers(runner: Runner, config, batch_size: int, seq_len: int, levers: list[str]) -> list[dict]:
    """Each lever: our ITM training step with it and without it, taking turns (one pair of models at a time)."""
    ours, theirs = model_pair("BridgeTowerForImageAndTextRetrieval", config, runner.folder, runner.device,
                               runner.args.attn_implementation)  # fmt: skip
    del theirs
    generator = torch.Generator().manual_seed(batch_size)
    batch = {**captions(config, batch_size, seq_len, generator), "pixel_values": images(config, batch_size, generator)}
    batch = runner.to_device({**batch, "labels": torch.arange(batch_size) % 2})
    optimizer = our_optimizer(ours, runner.folder)
    rows = []
    for lever in levers:
        kept, description = LEVERS[lever]
        variant_optimizer, variant_step = lever_variant(lever, ours, optimizer, runner, batch)
        label = f"ours, {lever} {'off' if kept else 'on'}"
        entries = [("ours", ours, runner.train_step(ours, batch, optimizer), optimizer),
                   (label, ours, variant_step, variant_optimizer)]  # fmt: skip
        runner.run(f"lever_{lever}", "train", entries, batch_size, costs=False)
        default, flipped = (measure.median(r.seconds) for r in runner.results[-2:])
        with_lever, without = (default, flipped) if kept else (flipped, default)
        rows.append({"lever": lever, "kept": kept, "description": description, "seconds_with": with_lever,
                     "seconds_without": without, "speedup": without / with_lever})  # fmt: skip
        del variant_optimizer, variant_step
        gc.collect()
    return rows


# --- the data path ------------------------------------------------------------------------------------------------
def decode_all(transform, paths: list[str], draft_size: int | None) -> None:
    for path in paths:
        transform(decode_image(path, path, draft_size))


def data_path(image_size: int, images_count: int, batches: int) -> dict:
    """Images/s one loader worker delivers for the official pre-training recipe from 640x480 JPEG files, and what
    JPEG draft-mode decoding is worth for decode + transform (one process) on 640x480 and 1280x960 files."""
    from bridgetower_gaudi.data import DataArguments, ImageTransform, build_dataset, synthetic_tokenizer

    tokenizer = synthetic_tokenizer()
    collator = PretrainingCollator(tokenizer, itm_negatives="dataset")
    transform = ImageTransform(image_size, "clip")
    draft = {}
    with tempfile.TemporaryDirectory() as folder:
        jsonl = data_loading.write_jpegs(folder, images_count)
        dataset = build_dataset(
            DataArguments(train_file=[jsonl], dataset_format="jsonl", itm_negatives="dataset"), tokenizer, image_size
        )
        rate = data_loading.loader_rate(dataset, collator, workers=1, batch_size=8, batches=batches)
        for size in ((640, 480), (1280, 960)):
            name = f"{size[0]}x{size[1]}"
            os.makedirs(os.path.join(folder, name))
            data_loading.write_jpegs(os.path.join(folder, name), min(images_count // 4, 32), size)
            paths = [
                os.path.join(folder, name, f)
                for f in sorted(os.listdir(os.path.join(folder, name)))
                if f.endswith(".jpg")
            ]
            modes = {"full": None, "draft": transform.draft_size}
            steps = {mode: functools.partial(decode_all, transform, paths, d) for mode, d in modes.items()}
            seconds = measure.time_interleaved(steps, 3, torch.device("cpu"))
            draft[name] = {mode: len(paths) / measure.median(times) for mode, times in seconds.items()}
    # Every example of the official recipe decodes its own image, and half of them a data-set negative.
    return {"image_size": image_size, "source": "jpeg_640x480", "workers": 1, "examples_per_second_per_worker": rate,
            "images_per_second_per_worker": 1.5 * rate, "decode_transform_images_per_second": draft}  # fmt: skip


# --- report -------------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "hpu":
        return torch.hpu.get_device_name()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {model}, {cores} cores"


def git_commit() -> dict:
    def git(*command):
        return subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True).stdout.strip()

    with contextlib.suppress(OSError):
        return {
            "commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    return {"commit": None, "dirty": None}


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if hasattr(torch, "hpu") and torch.hpu.is_available():
        return torch.device("hpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def comparisons(results: list[Measurement]) -> list[dict]:
    """Ours / transformers per case and batch size."""
    by_key = {(r.case, r.batch_size, r.model): r for r in results}
    rows = []
    for (case, size, model), r in by_key.items():
        if model == "ours" and (case, size, "transformers") in by_key:
            other = by_key[(case, size, "transformers")]
            rows.append({"case": case, "batch_size": size, "ours": r.samples_per_second,
                         "baseline": "transformers", "baseline_value": other.samples_per_second,
                         "ratio": r.samples_per_second / other.samples_per_second})  # fmt: skip
    return rows


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"# BridgeTower throughput: {meta['device_name']}, {meta['date']}", "",
        f"`{meta['command']}`", "",
        f"torch {meta['versions']['torch']}, transformers {meta['versions']['transformers']}, git "
        f"{(meta['git']['commit'] or 'unknown')[:10]}{' (uncommitted changes)' if meta['git']['dirty'] else ''}; "
        f"preset {meta['config']['preset']}, image {meta['config']['image_size']} px, {meta['config']['seq_len']} "
        f"tokens, {meta['config']['precision']}; our attention: {meta['config'].get('attn_implementation', 'sdpa')}; "
        f"{meta['config']['torch_threads']} torch threads. Matmul peak "
        f"measured here: fp32 {report['matmul_peak']['fp32'] / 1e12:.3f} TFLOP/s, bf16 "
        f"{report['matmul_peak']['bf16'] / 1e12:.3f} TFLOP/s. Median of {meta['config']['steps']} steps per model, "
        "the models taking turns; FLOPs by torch.utils.flop_counter (forward + backward; the optimizer's are not "
        f"counted). Peak memory: {meta['memory_method']}.", "",
        "| case | model | batch | samples/s | step s | GFLOP/step | MFU | peak memory MiB | optimizer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in report["results"]:
        flops = f"{r['flops_per_step'] / 1e9:.1f}" if r["flops_per_step"] else "-"
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        memory = f"{r['peak_memory_bytes'] / 2**20:.0f}" if r["peak_memory_bytes"] else "-"
        step = measure.median(r["seconds"])
        lines.append(f"| {r['case']} | {r['model']} | {r['batch_size']} | {r['samples_per_second']:.2f} | "
                     f"{step:.3f} | {flops} | {mfu} | {memory} | {r['optimizer'] or '-'} |")  # fmt: skip
    for note in report["notes"]:
        lines.append(f"\n{note}")
    lines += [
        "",
        "| case | batch | ours | baseline | baseline value | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in report["comparisons"]:
        lines.append(f"| {c['case']} | {c['batch_size']} | {c['ours']:.2f} | {c['baseline']} | "
                     f"{c['baseline_value']:.2f} | {c['ratio']:.2f}x |")  # fmt: skip
    if report["levers"]:
        lines += ["", "Levers, each on our ITM training step with and without it (taking turns):", "",
                  "| lever | kept | step s with | step s without | speed-up | what |",
                  "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for lever in report["levers"]:
            kept = "yes" if lever["kept"] else "no"
            lines.append(f"| {lever['lever']} | {kept} | {lever['seconds_with']:.3f} | {lever['seconds_without']:.3f} "
                         f"| {lever['speedup']:.2f}x | {lever['description']} |")  # fmt: skip
    if report.get("optimum_habana"):
        ref = report["optimum_habana"]
        lines += ["", "optimum-habana run_bridgetower.py (published, 8 cards; per card = / 8) beside ours here:",
                  "", "| | samples/s, 8 cards | per card |", "| --- | --- | --- |"]  # fmt: skip
        for name, value in ref["published_8_cards"].items():
            lines.append(f"| optimum-habana, {name} | {value} | {value / 8:.1f} |")
        lines.append(f"| ours, {meta['device_name']} (1 device) | - | {ref['ours_per_device']:.2f} |")
        lines.append(f"| transformers, {meta['device_name']} (1 device) | - | {ref['transformers_per_device']:.2f} |")
    if report.get("data_path"):
        d = report["data_path"]
        here, device = d["workers_needed"], d["workers_needed_at_device_rate"]
        lines += ["", f"Data path: one loader worker (one core) delivers {d['examples_per_second_per_worker']:.1f} "
                  f"examples/s ({d['images_per_second_per_worker']:.1f} images/s: its own image, and a data-set "
                  f"negative for half of them) from {d['source']} at {d['image_size']} px. Our pre-training step "
                  f"consumes {here['device_examples_per_second']:.3g} examples/s here: {here['workers']:.3g} "
                  f"workers keep up ({here['whole_workers']} whole); a device stepping at "
                  f"{device['device_examples_per_second']:.1f} examples/s "
                  f"(--device_examples_per_second) needs {device['workers']:.2f} workers "
                  f"({device['whole_workers']} whole)."]  # fmt: skip
        draft = ", ".join(f"{size}: {rates['full']:.0f} -> {rates['draft']:.0f}"
                          for size, rates in d["decode_transform_images_per_second"].items())  # fmt: skip
        lines.append(f"JPEG decode + transform at {d['image_size']} px, images/s in one process, full -> draft-mode "
                     f"decoding: {draft}.")  # fmt: skip
    shapes = report["static_shapes"]
    worst = max(shapes.values(), default=0)
    changing = [name for name, count in shapes.items() if count > 1]
    verdict = "static" if not changing else "NOT static: " + ", ".join(changing)
    lines += ["", f"Static shapes: {len(shapes)} input tensors watched (per case, model and batch size), at most "
              f"{worst} distinct shape(s) per tensor ({verdict})."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plots(report: dict, folder: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in report["results"] if not r["case"].endswith("_scaling")]
    written = []
    for name, key, unit, scale in (("throughput.png", "samples_per_second", "samples (pairs) / s", 1),
                                   ("memory.png", "peak_memory_bytes", "peak memory, MiB", 2**20)):  # fmt: skip
        figure, axis = plt.subplots(figsize=(8, 4))
        labels = [f"{r['case']}\n{r['model']}" for r in main]
        colours = ["tab:blue" if r["model"].startswith("ours") else "tab:orange" for r in main]
        axis.bar(range(len(main)), [(r[key] or 0) / scale for r in main], color=colours)
        axis.set_xticks(range(len(main)), labels, fontsize=7, rotation=30, ha="right")
        axis.set_ylabel(unit)
        axis.set_title(f"{report['meta']['device_name']}: ours (blue) vs transformers (orange)", fontsize=9)
        figure.tight_layout()
        figure.savefig(os.path.join(folder, name), dpi=100)
        plt.close(figure)
        written.append(name)
    figure, axis = plt.subplots(figsize=(6, 4))
    for model, colour in (("ours", "tab:blue"), ("transformers", "tab:orange")):
        points = sorted((r["batch_size"], r["samples_per_second"]) for r in report["results"]
                        if r["case"].startswith("itm_train") and r["model"] == model)  # fmt: skip
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", color=colour, label=model)
    axis.set_xlabel("batch size")
    axis.set_ylabel("ITM training samples / s")
    axis.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(folder, "scaling.png"), dpi=100)
    plt.close(figure)
    return [*written, "scaling.png"]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# --- main ---------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base", choices=sorted(PRESETS))
    parser.add_argument("--output_dir", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--task", nargs="+", default=["all"], choices=["all", *TASKS],
                        help="`--task itc --preset large` takes optimum-habana run_bridgetower.py's shape")  # fmt: skip
    parser.add_argument("--batch_size", type=int, help="training batch (default 4; 48 in optimum-habana's shape)")
    parser.add_argument("--inference_batch_size", type=int, default=16, help="pairs per inference call")
    parser.add_argument("--seq_len", type=int, help="caption tokens (default 50; 128 in optimum-habana's shape)")
    parser.add_argument("--image_size", type=int, help="default: the preset's (base 288, large 294)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="default bf16 (fp32 weights, bf16 autocast)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model, after one warm-up step")
    parser.add_argument("--scaling_batch_sizes", type=int, nargs="*", help="ITM training batch sizes to plot")
    parser.add_argument("--data_images", type=int, default=256, help="JPEG files for the data-path figure (0: skip)")
    parser.add_argument("--device_examples_per_second", type=float, default=data_loading.GAUDI2_EXAMPLES_PER_SECOND,
                        help="a device's step rate for the data path's workers needed (default: the published "
                        "Gaudi2 per-card rate, BridgeTower-large ITC, 113.1)")  # fmt: skip
    parser.add_argument("--device", default="auto", help="auto (HPU, CUDA, CPU), or a torch device")
    parser.add_argument("--attn_implementation", default="sdpa", choices=["sdpa", "eager"],
                        help="our model's attention (its --attn_implementation); transformers' is eager")  # fmt: skip
    parser.add_argument("--levers", nargs="*", default=[], choices=sorted(LEVERS),
                        help="also time our ITM training step with and without each speed-up lever")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="few steps, small data path: a smoke run (CI)")
    args = parser.parse_args(argv)
    args.tasks = list(TASKS) if "all" in args.task else args.task
    habana_shape = args.tasks == ["itc"] and args.preset == "large"
    defaults = OPTIMUM_HABANA_SHAPE if habana_shape else dict(batch_size=4, seq_len=50, precision="bf16")
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.optimum_habana_shape = habana_shape
    if args.quick:
        args.steps, args.data_images = min(args.steps, 2), min(args.data_images, 40)  # 5 loader batches of 8
    if args.scaling_batch_sizes is None:
        args.scaling_batch_sizes = sorted({max(1, args.batch_size // 4), max(1, args.batch_size // 2), args.batch_size})
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data path forks loader workers
    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.utils.logging.set_verbosity_error()
    device = pick_device(args.device)
    name = device_name(device)
    # Square matmuls big enough to reach the device's rate (an accelerator needs larger ones than a CPU).
    peak_size = 512 if args.preset == "tiny" else 2048 if device.type == "cpu" else 8192
    peaks = {"fp32": measure.matmul_peak(device, torch.float32, peak_size),
             "bf16": measure.matmul_peak(device, torch.bfloat16, peak_size)}  # fmt: skip
    config = transformers_config(args.preset, args.image_size)
    image_size = config.vision_config.image_size
    print(f"# {name}, torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
          f"{transformers.__version__}, preset {args.preset}, batch {args.batch_size}, {image_size} px, "
          f"{args.seq_len} tokens, {args.precision}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        runner = Runner(args, device, folder, peaks[args.precision])
        if "pretrain" in args.tasks:
            run_pretrain(runner, config, args.batch_size, args.seq_len)
        for task in ("itm", "itc"):
            if task in args.tasks:
                scaling = args.scaling_batch_sizes if task == "itm" else []
                run_finetune(runner, task, config, args.batch_size, args.seq_len, scaling)
        if {"itm_inference", "rerank"} & set(args.tasks):
            run_inference(runner, config, args.inference_batch_size, args.seq_len, args.tasks)
        levers = run_levers(runner, config, args.batch_size, args.seq_len, args.levers) if args.levers else []
    # The peak again at the end: on a shared machine the higher of the two is the closer to the device's.
    peaks = {"fp32": max(peaks["fp32"], measure.matmul_peak(device, torch.float32, peak_size)),
             "bf16": max(peaks["bf16"], measure.matmul_peak(device, torch.bfloat16, peak_size))}  # fmt: skip
    results = [r.finish(peaks[args.precision]) for r in runner.results]

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    notes = []
    if "pretrain" in args.tasks:
        notes.append(
            "pretrain: ours (one vision pass, MLM decoder at masked positions, captions in length buckets "
            f"{step_counts.BUCKETS}) against transformers' BridgeTowerForMaskedLM + "
            "BridgeTowerForImageAndTextRetrieval sharing one set of weights, two full passes, captions padded "
            "to the batch's longest; the official recipe's batch (data-set negatives). pretrain: every "
            "caption --seq_len tokens; pretrain_karpathy: Karpathy-length captions (mean 15 tokens)."
        )
    if "rerank" in args.tasks:
        notes.append("rerank: one caption against `batch` candidate images; ours encodes the caption once and runs "
                     "the cross-modal encoder per pair, transformers runs the whole model on each pair.")  # fmt: skip
    report = {
        "meta": {
            "device": device.type, "device_name": name, "date": date,
            "command": " ".join(["python", "benchmarks/run_benchmarks.py", *(sys.argv[1:] if argv is None else argv)]),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version(), "bridgetower_gaudi": btg.__version__
                         if hasattr(btg, "__version__") else None},
            "git": git_commit(),
            "config": {"preset": args.preset, "tasks": args.tasks, "batch_size": args.batch_size,
                       "inference_batch_size": args.inference_batch_size, "seq_len": args.seq_len,
                       "attn_implementation": args.attn_implementation,
                       "image_size": image_size, "precision": args.precision, "steps": args.steps,
                       "torch_threads": torch.get_num_threads(), "scaling_batch_sizes": args.scaling_batch_sizes,
                       "optimum_habana_shape": args.optimum_habana_shape, "quick": args.quick,
                       "model": config.to_dict()},
            "memory_method": runner.memory_method,
        },
        "matmul_peak": peaks,
        "results": [asdict(r) for r in results],
        "comparisons": comparisons(results),
        "levers": levers,
        "static_shapes": runner.shapes.counts(),
        "notes": notes,
    }  # fmt: skip
    if args.optimum_habana_shape:
        per_device = {r.model: r.samples_per_second for r in results if r.case == "itc_train"}
        report["optimum_habana"] = {
            "published_8_cards": OPTIMUM_HABANA_8_CARDS, "ours_per_device": per_device["ours"],
            "transformers_per_device": per_device["transformers"],
            "shape": {**OPTIMUM_HABANA_SHAPE, "image_size": image_size},
        }  # fmt: skip
    if args.data_images and "pretrain" in args.tasks:
        data = data_path(image_size, args.data_images, 3 if args.quick else 20)
        consumed = next(r.samples_per_second for r in results if r.case == "pretrain" and r.model == "ours")
        per_worker = data["examples_per_second_per_worker"]
        data["workers_needed"] = data_loading.workers_needed(consumed, per_worker)
        data["workers_needed_at_device_rate"] = data_loading.workers_needed(args.device_examples_per_second, per_worker)
        report["data_path"] = data
    out = os.path.join(args.output_dir, f"{slug(name)}-{date}")
    os.makedirs(out, exist_ok=True)
    report["files"] = ["report.json", "report.md", *plots(report, out)]
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = markdown(report)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(table)
    print(table)
    print(f"report: {out}")
    return out


if __name__ == "__main__":
    main()
