"""The model a run starts from: a checkpoint, two uni-modal backbones, or a preset / config freshly initialised.

Its own module (not run.py) because the task modules build their models with it and run.py imports the tasks."""

from __future__ import annotations

import json
import logging

from ..data import DataArguments
from ..modeling import PRESETS, BridgeTowerConfig
from ..modeling.backbones import set_image_size
from .arguments import ModelArguments

logger = logging.getLogger("bridgetower_gaudi")


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


def build_model(model_cls, model_args: ModelArguments, data_args: DataArguments, tokenizer, **overrides):
    """A `model_cls` from a checkpoint (`--model_name_or_path`, at `--image_size` when given: position embeddings
    interpolated), from uni-modal backbones, or freshly initialised from a preset / config; `overrides` (and
    `--config_overrides`) set config fields."""
    overrides = {**overrides, **parse_overrides(model_args.config_overrides)}  # the user's flag wins
    if model_args.model_name_or_path:
        model = model_cls.from_pretrained(model_args.model_name_or_path, **overrides)
        if data_args.image_size:
            set_image_size(model, data_args.image_size)
        if len(tokenizer) > model.config.text_config.vocab_size:  # a tokenizer with added words (--tokenizer_name)
            logger.info("text vocabulary %d -> %d (new rows initialised)", model.config.text_config.vocab_size,
                        len(tokenizer))  # fmt: skip
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        return model
    if model_args.vision_model_name_or_path or model_args.text_model_name_or_path:
        if not (model_args.vision_model_name_or_path and model_args.text_model_name_or_path):
            raise ValueError("uni-modal init needs both --vision_model_name_or_path and --text_model_name_or_path.")
        return model_cls.from_backbones(
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
    return model_cls(config)
