"""A saved BridgeTower checkpoint, ready to run: the device, the model with its head, its tokenizer; each failure
raised as a PipelineError that says what to do."""

from __future__ import annotations

import json
import os

import torch
from transformers import AutoTokenizer
from transformers.utils import is_torch_hpu_available

from ..modeling import (
    BridgeTowerConfig,
    BridgeTowerForContrastiveLearning,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerForPreTraining,
    BridgeTowerForVisualQuestionAnswering,
)

MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (
        BridgeTowerForPreTraining,
        BridgeTowerForMaskedLM,
        BridgeTowerForImageAndTextRetrieval,
        BridgeTowerForContrastiveLearning,
        BridgeTowerForVisualQuestionAnswering,
    )
}


class PipelineError(ValueError):
    """Bad input or an unusable checkpoint; the message says what to do."""


def resolve_device(device: str = "auto") -> str:
    """'auto' -> hpu, cuda or cpu, whichever is present; an explicit device that is missing is an error."""
    if device == "auto":
        return "hpu" if is_torch_hpu_available() else "cuda" if torch.cuda.is_available() else "cpu"
    if device == "hpu" and not is_torch_hpu_available():
        raise PipelineError("--device hpu: no Gaudi (HPU) found here; use --device auto, cuda or cpu.")
    if device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda: no CUDA GPU found here; use --device auto or cpu.")
    if device not in ("hpu", "cuda", "cpu"):
        raise PipelineError(f"device {device!r}: choose auto, hpu, cuda or cpu.")
    return device


def load_model(model_dir: str, device: str):
    """(model, config) of a BridgeTower checkpoint folder, or a PipelineError that says what is wrong with it."""
    if not os.path.isdir(model_dir):
        raise PipelineError(
            f"no checkpoint folder at {model_dir!r}: pass --model with a folder written by run_pretrain.py "
            "(e.g. outputs/pretrain-tiny-synthetic after `python run_scripts/run_pretrain.py`)."
        )
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise PipelineError(
            f"{model_dir!r} has no config.json: it is not a saved checkpoint (save_pretrained writes one)."
        )
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    if raw.get("model_type") != "bridgetower":
        raise PipelineError(
            f"{model_dir!r} holds a {raw.get('model_type')!r} model, not BridgeTower: pass a BridgeTower checkpoint."
        )
    architectures = [name for name in raw.get("architectures") or [] if name in MODEL_CLASSES]
    if not architectures:
        raise PipelineError(
            f"{model_dir!r}: architectures {raw.get('architectures')} has no BridgeTower class with a head "
            f"({', '.join(MODEL_CLASSES)}); save the model with its head (e.g. a run_pretrain.py output)."
        )
    config = BridgeTowerConfig.from_pretrained(model_dir)
    # SDPA on CPU / CUDA / HPU; HPU graphs capture it like any other op.
    model = MODEL_CLASSES[architectures[0]].from_pretrained(model_dir, config=config, attn_implementation="sdpa")
    return model.eval().to(device), config


def load_tokenizer(model_dir: str):
    """The tokenizer saved beside the weights, or a PipelineError that says how to save one."""
    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise PipelineError(
            f"{model_dir!r} has no tokenizer ({error}); save one beside the weights "
            "(tokenizer.save_pretrained(DIR); run_pretrain.py does)."
        ) from None
