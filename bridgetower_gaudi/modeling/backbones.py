"""Start a BridgeTower from uni-modal checkpoints (how the paper begins pre-training): a CLIP vision checkpoint
(CLIPModel or CLIPVisionModel) and a RoBERTa or BERT checkpoint. Tower weights are copied exactly; CLIP's position
embeddings are resized by bicubic interpolation when the image size changes (224 -> 288)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import AutoModel, CLIPVisionModel

from .configuration import TEXT_BACKBONES, BridgeTowerConfig

# tie_word_embeddings too: BERT / RoBERTa configs say True, the official MLM decoder is never tied.
_DROP_KEYS = ("model_type", "architectures", "_name_or_path", "transformers_version", "auto_map", "tie_word_embeddings")


def config_from_backbones(
    vision_config, text_config, image_size: int | None = None, **config_kwargs
) -> BridgeTowerConfig:
    """A BridgeTowerConfig whose towers have the shapes of the given CLIP vision and RoBERTa / BERT configs."""
    text_backbone = text_config.model_type
    if text_backbone not in TEXT_BACKBONES:
        raise ValueError(
            f"text checkpoint is a {text_backbone!r} model; BridgeTower's text tower must be one of {TEXT_BACKBONES}."
        )
    text = {k: v for k, v in text_config.to_dict().items() if k not in _DROP_KEYS}
    vision = {
        "hidden_size": vision_config.hidden_size,
        "num_hidden_layers": vision_config.num_hidden_layers,
        "num_attention_heads": vision_config.num_attention_heads,
        "intermediate_size": vision_config.intermediate_size,
        "hidden_act": vision_config.hidden_act,
        "layer_norm_eps": vision_config.layer_norm_eps,
        "num_channels": vision_config.num_channels,
        "patch_size": vision_config.patch_size,
        "image_size": image_size or vision_config.image_size,
    }
    config_kwargs.setdefault("hidden_size", text_config.hidden_size)
    return BridgeTowerConfig(text_config=text, vision_config=vision, text_backbone=text_backbone, **config_kwargs)


def resize_position_embedding(weight: torch.Tensor, patch_size: int, image_size: int) -> torch.Tensor:
    """(1 + g*g, D) CLIP position embeddings -> the grid of `image_size`, as CLIP's `interpolate_pos_encoding`."""
    new_grid = image_size // patch_size
    old_grid = int(math.isqrt(weight.shape[0] - 1))
    if old_grid == new_grid:
        return weight
    cls_position, patch_positions = weight[:1], weight[1:]
    dim = weight.shape[-1]
    grid = patch_positions.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_position, grid.permute(0, 2, 3, 1).reshape(-1, dim)], dim=0)


@torch.no_grad()
def set_image_size(model, image_size: int) -> None:
    """Let a loaded model take `image_size` images (fine-tuning at another resolution than pre-training, 288 -> 384
    or 576 in the paper): CLIP's position embeddings interpolated, the config updated so checkpoints reload."""
    vision = model.base_model.vision_model.embeddings
    config = model.config.vision_config
    if image_size % config.patch_size:
        raise ValueError(f"--image_size {image_size} is not a multiple of the patch size {config.patch_size}.")
    if image_size == config.image_size:
        return
    weight = resize_position_embedding(vision.position_embedding.weight, config.patch_size, image_size)
    vision.position_embedding = torch.nn.Embedding.from_pretrained(weight, freeze=False)
    vision.image_size, vision.num_patches = image_size, (image_size // config.patch_size) ** 2
    vision.num_positions = vision.num_patches + 1
    vision.register_buffer("position_ids", torch.arange(vision.num_positions, device=weight.device)[None], False)
    config.image_size = image_size


def build_from_backbones(
    model_cls, vision_model_name_or_path, text_model_name_or_path, image_size=None, **config_kwargs
):
    vision = CLIPVisionModel.from_pretrained(vision_model_name_or_path)
    text = AutoModel.from_pretrained(text_model_name_or_path)
    config = config_from_backbones(vision.config, text.config, image_size=image_size, **config_kwargs)
    model = model_cls(config)
    bridgetower = model.base_model

    vision_state = vision.vision_model.state_dict()
    key = "embeddings.position_embedding.weight"
    vision_state[key] = resize_position_embedding(
        vision_state[key], config.vision_config.patch_size, config.vision_config.image_size
    )
    bridgetower.vision_model.load_state_dict(vision_state, strict=True)

    text_state = text.state_dict()
    missing, unexpected = bridgetower.text_model.load_state_dict(text_state, strict=False)
    missing = [k for k in missing if not k.startswith("pooler.")]  # a checkpoint saved without its pooler
    if missing or unexpected:
        raise ValueError(
            f"text checkpoint {text_model_name_or_path} does not match a {config.text_backbone} tower: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    return model
