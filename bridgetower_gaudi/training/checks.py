"""Start-up checks of a run's flags. Every combination here would otherwise fail (or silently do the wrong thing)
only after the model is built, the data read or hours of training: they are refused first, before the model is
built or anything is written, each with the fix in the message. Everything is read cheaply: presets, config.json
files and the DeepSpeed JSON, never model weights."""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass

from ..data import DataArguments
from ..data.sources import expand_shards, is_url
from ..modeling import PRESETS, BridgeTowerConfig
from ..modeling.configuration import usable_text_positions
from .arguments import ModelArguments

CHECKPOINT_FOLDER = re.compile(r"checkpoint-\d+")  # what transformers' get_last_checkpoint resumes from


class RunFlagError(ValueError):
    """Flags that cannot work together; raised before the model is built, with every problem found and its fix."""


def check_run_flags(model_args: ModelArguments, data_args: DataArguments, task_args, args) -> None:
    """Raise RunFlagError listing every problem of these flags (nothing is built or written)."""
    problems = [
        *precision_problems(args),
        *deepspeed_problems(args),
        *data_file_problems(data_args, task_args),
        *model_shape_problems(model_args, data_args),
        *checkpoint_problems(model_args, args),
        *output_dir_problems(args),
    ]
    if problems:
        raise RunFlagError("cannot start:\n  - " + "\n  - ".join(problems))


def fp16_on_gaudi_problem() -> str:
    return "--fp16 with --use_habana: Gaudi trains in bf16 (no fp16 loss scaling there); pass --bf16 instead."


def nothing_to_run_problem() -> str:
    return (
        "cannot start: none of --do_train, --do_eval, --do_predict was given, so the run would build the model and "
        "write nothing. Add the steps you want (the flags replace the embedded default run, which applies only when "
        "no flag at all is given)."
    )


def precision_problems(args) -> list[str]:
    problems = []
    if getattr(args, "use_habana", False) and args.fp16:
        problems.append(fp16_on_gaudi_problem())
    if not args.save_safetensors:
        problems.append(
            "--save_safetensors False: checkpoints are written as safetensors only (no pickle: loading one runs no "
            "code); drop the flag."
        )
    return problems


def deepspeed_problems(args) -> list[str]:
    """Values of the DeepSpeed JSON that contradict the flags ("auto" values follow the flags and always agree).
    transformers finds the same mismatches only when DeepSpeed starts, after the model is built."""
    if not args.deepspeed:
        return []
    name = args.deepspeed if isinstance(args.deepspeed, str) else "config"
    if isinstance(args.deepspeed, dict):
        config = args.deepspeed
    else:
        try:
            with open(args.deepspeed) as f:
                config = json.load(f)
        except OSError as error:
            return [f"--deepspeed {name} cannot be read ({error.strerror}): check the path."]
        except json.JSONDecodeError as error:
            return [f"--deepspeed {name} is not valid JSON ({error}): fix the file."]
    problems = []
    for key, flag in (("bf16", "--bf16"), ("fp16", "--fp16")):
        section = config.get(key) or (config.get("bfloat16") if key == "bf16" else None) or {}
        enabled = section.get("enabled", "auto") if isinstance(section, dict) else "auto"
        if enabled != "auto" and bool(enabled) != bool(getattr(args, key)):
            state, given, fix = ("enables", "not given", "add") if enabled else ("disables", "given", "drop")
            problems.append(
                f'--deepspeed {name} {state} {key} ("{key}": {{"enabled": {json.dumps(enabled)}}}) but {flag} is '
                f'{given}: {fix} {flag}, or set "enabled": "auto" in the JSON to follow the flag.'
            )
    world_size = max(1, getattr(args, "world_size", 1))
    numbers = (
        ("train_micro_batch_size_per_gpu", "--per_device_train_batch_size", args.per_device_train_batch_size),
        ("gradient_accumulation_steps", "--gradient_accumulation_steps", args.gradient_accumulation_steps),
        ("gradient_clipping", "--max_grad_norm", args.max_grad_norm),
        (
            "train_batch_size",
            "--per_device_train_batch_size x --gradient_accumulation_steps x world size",
            args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
        ),
    )
    for key, flag, value in numbers:
        given = config.get(key, "auto")
        if given != "auto" and float(given) != float(value):
            problems.append(
                f'--deepspeed {name} says "{key}": {given} but {flag} is {value}: make them agree, or set "{key}": '
                '"auto" in the JSON to follow the flag.'
            )
    return problems


def data_file_problems(data_args: DataArguments, task_args=None) -> list[str]:
    """Every file a data flag names exists and can be read; `--image_root` is a folder."""
    named = [
        *(("--train_file", p) for p in data_args.train_file or []),
        *(("--validation_file", p) for p in data_args.validation_file or []),
        *(("--test_file", p) for p in data_args.test_file or []),
        *(("--train_annotation_file", p) for p in data_args.train_annotation_file or []),
        *(("--validation_annotation_file", p) for p in data_args.validation_annotation_file or []),
        ("--answer_vocabulary_file", getattr(task_args, "answer_vocabulary_file", None)),
    ]
    problems = []
    named = [(flag, shard) for flag, path in named for shard in ([path] if path is None else expand_shards(path))]
    for flag, path in named:
        if path is None or is_url(path):  # pipe: / remote shards are opened when read
            continue
        if not os.path.exists(path):
            problems.append(f"{flag} {path} does not exist: check the path.")
        elif os.path.isdir(path):
            problems.append(f"{flag} {path} is a folder: name the file in it.")
        else:
            try:  # os.access says yes to root whatever the file's state; reading a byte says what happens later
                with open(path, "rb") as f:
                    f.read(1)
            except OSError as error:
                problems.append(f"{flag} {path} cannot be read ({error.strerror}): check its permissions.")
    if data_args.image_root is not None and not os.path.isdir(data_args.image_root):
        problems.append(f"--image_root {data_args.image_root} is not a folder: check the path.")
    return problems


@dataclass
class TowerShapes:
    """What the model will be, as far as the flags need it, read without building it."""

    source: str  # where the numbers come from, for the messages
    image_size: int
    patch_size: int
    text_positions: int  # the longest caption the text tower can number


def _has_config(path: str) -> bool:
    """A local folder (or file) with a config: read cheaply. Hub names are not fetched here."""
    return os.path.isfile(path) or os.path.isfile(os.path.join(path, "config.json"))


def _bridgetower_shapes(config: BridgeTowerConfig, source: str, image_size: int | None) -> TowerShapes:
    return TowerShapes(
        source, image_size or config.vision_config.image_size, config.vision_config.patch_size, config.text_positions
    )


def tower_shapes(model_args: ModelArguments, data_args: DataArguments) -> TowerShapes | str | None:
    """The model's image size, patch size and text positions as build_model will make them; a problem (str) when a
    checkpoint is not a BridgeTower one; None when they cannot be known cheaply (a Hub name)."""
    image_size = data_args.image_size
    if path := model_args.model_name_or_path:
        if not os.path.exists(path):
            return None  # a Hub name: from_pretrained fetches it
        if problem := bridgetower_config_problem(path, "--model_name_or_path"):
            return problem
        return _bridgetower_shapes(BridgeTowerConfig.from_pretrained(path), f"checkpoint {path}", image_size)
    if model_args.vision_model_name_or_path or model_args.text_model_name_or_path:
        vision, text = model_args.vision_model_name_or_path, model_args.text_model_name_or_path
        if not (vision and text and _has_config(vision) and _has_config(text)):
            return None
        from transformers import AutoConfig

        vision_config = AutoConfig.from_pretrained(vision)
        vision_config = getattr(vision_config, "vision_config", vision_config)  # CLIPConfig holds its vision tower
        text_config = AutoConfig.from_pretrained(text)
        positions = usable_text_positions(
            text_config.model_type, text_config.max_position_embeddings, text_config.pad_token_id
        )
        return TowerShapes(f"towers {vision} + {text}", image_size or 288, vision_config.patch_size, positions)
    name = model_args.config_name or "tiny"
    if name in PRESETS:
        return _bridgetower_shapes(BridgeTowerConfig(**PRESETS[name]), f"the {name} preset", image_size)
    if _has_config(name):
        return _bridgetower_shapes(BridgeTowerConfig.from_pretrained(name), f"config {name}", image_size)
    return None


def model_shape_problems(model_args: ModelArguments, data_args: DataArguments) -> list[str]:
    shapes = tower_shapes(model_args, data_args)
    if isinstance(shapes, str):
        return [shapes]
    if shapes is None:
        return []
    problems = []
    if shapes.image_size % shapes.patch_size:
        below = max(shapes.patch_size, shapes.image_size - shapes.image_size % shapes.patch_size)
        problems.append(
            f"image size {shapes.image_size} is not a multiple of the patch size {shapes.patch_size} "
            f"({shapes.source}): pass --image_size {below} or {below + shapes.patch_size}."
        )
    if data_args.max_seq_length > shapes.text_positions:
        problems.append(
            f"--max_seq_length {data_args.max_seq_length} is longer than the text tower's {shapes.text_positions} "
            f"positions ({shapes.source}): pass --max_seq_length {shapes.text_positions} or less."
        )
    return problems


def output_dir_problems(args) -> list[str]:
    """Training into a folder that holds another run's checkpoints would mix the two runs' checkpoints (and
    `--save_total_limit` would delete the old run's): refused unless the user says which they mean."""
    output_dir = args.output_dir
    if not args.do_train or not output_dir or not os.path.isdir(output_dir):
        return []
    if getattr(args, "overwrite_output_dir", False) or args.resume_from_checkpoint:
        return []
    found = sorted(
        (d for d in os.listdir(output_dir) if CHECKPOINT_FOLDER.fullmatch(d)), key=lambda d: int(d.split("-")[1])
    )
    if not found:
        return []
    return [
        f"--output_dir {output_dir} already holds another run's checkpoints ({', '.join(found[-3:])}): pass "
        f"--resume_from_checkpoint {os.path.join(output_dir, found[-1])} to continue that run, "
        "--overwrite_output_dir to train afresh in this folder, or another --output_dir."
    ]


# --- checkpoints ---------------------------------------------------------------------------------------------------
def bridgetower_config_problem(path: str, flag: str) -> str | None:
    """Why the folder `path` is not a BridgeTower checkpoint, judged by its config.json; None when it is one."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        return f"{flag} {path} has no config.json: name a checkpoint folder (config.json and model.safetensors)."
    try:
        with open(config_file) as f:
            model_type = json.load(f).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{flag} {path}: {config_file} cannot be read ({error}); the checkpoint is damaged."
    if model_type != BridgeTowerConfig.model_type:
        return (
            f"{flag} {path} holds a {model_type!r} model ({config_file}), not BridgeTower: start from a BridgeTower "
            "checkpoint, or from uni-modal towers with --vision_model_name_or_path and --text_model_name_or_path."
        )
    return None


def safetensors_problem(path: str) -> str | None:
    """Why the safetensors file `path` cannot be loaded (truncated, or not safetensors), from its header alone: the
    header says where the last tensor ends, and the file must end there. None when it is whole."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > size - 8:
                raise ValueError(f"its header claims {header_size} bytes, the file has {size}")
            header = json.loads(f.read(header_size))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError) as error:
        return f"{path} is not a readable safetensors file ({error}): the save or copy was cut short, or it is damaged."
    if 8 + header_size + end != size:
        return (
            f"{path} is truncated ({size} bytes; its header says {8 + header_size + end}): the save or copy was cut "
            "short; copy it again or use another checkpoint."
        )
    return None


def weights_problems(path: str, flag: str) -> list[str]:
    """model.safetensors (or its shards) of checkpoint folder `path` are whole."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(os.path.join(path, "model.safetensors")):
        files = [os.path.join(path, "model.safetensors")]
    elif os.path.isfile(index):
        try:
            with open(index) as f:
                files = [os.path.join(path, shard) for shard in sorted(set(json.load(f)["weight_map"].values()))]
        except (OSError, ValueError, KeyError) as error:
            return [f"{flag} {path}: {index} cannot be read ({error}); the checkpoint is damaged."]
    else:
        return []  # pytorch_model.bin or DeepSpeed's own files: their loaders name them
    problems = []
    for file in files:
        if not os.path.isfile(file):
            problems.append(f"{flag} {path}: {file} is missing (named in {index}).")
        elif problem := safetensors_problem(file):
            problems.append(f"{flag}: {problem}")
    return problems


def checkpoint_problems(model_args: ModelArguments, args) -> list[str]:
    """The checkpoints the run will load are BridgeTower ones, whole: `--model_name_or_path` (config in
    model_shape_problems) and `--resume_from_checkpoint` (also complete: trainer_state.json is written last)."""
    problems = []
    path = model_args.model_name_or_path
    if path and os.path.isdir(path):
        problems += weights_problems(path, "--model_name_or_path")
    resume = args.resume_from_checkpoint
    if not resume:
        return problems
    if not os.path.isdir(resume):
        return [*problems, f"--resume_from_checkpoint {resume} is not a folder: name a checkpoint-N folder of a run."]
    if problem := bridgetower_config_problem(resume, "--resume_from_checkpoint"):
        return [*problems, problem]
    if not os.path.isfile(os.path.join(resume, "trainer_state.json")):
        problems.append(
            f"--resume_from_checkpoint {resume} has no trainer_state.json: it is not a complete checkpoint (a save "
            "that was cut short?); resume from an earlier checkpoint-N."
        )
    return problems + weights_problems(resume, "--resume_from_checkpoint") + training_state_problems(resume)


def training_state_problems(checkpoint: str) -> list[str]:
    """The rest of a checkpoint the resume reads is whole: optimizer / scheduler / RNG states (torch's zip format keeps
    its directory at the end, so a cut file fails to open, cheaply) and the JSON states (trainer, data readers)."""
    problems = []
    for name in sorted(os.listdir(checkpoint)):
        path = os.path.join(checkpoint, name)
        try:
            if name.endswith((".pt", ".pth")):
                with zipfile.ZipFile(path):
                    pass
            elif name == "trainer_state.json" or (name.startswith("data_state.") and name.endswith(".json")):
                with open(path) as f:
                    json.load(f)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            problems.append(
                f"--resume_from_checkpoint: {path} is truncated or damaged ({error}): the save or copy was cut short; "
                "copy it again or resume from an earlier checkpoint-N."
            )
    return problems
