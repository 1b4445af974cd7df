"""Start a BridgeTower from uni-modal checkpoints (how the paper begins pre-training): a vision checkpoint (CLIP:
CLIPModel or CLIPVisionModel; ViT; DeiT: the paper's Table 4) and a RoBERTa or BERT checkpoint. Tower weights are
copied exactly; position embeddings are resized by bicubic interpolation when the image size changes (224 -> 288)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, CLIPVisionModel, DeiTModel, ViTModel

from .configuration import TEXT_BACKBONES, VISION_BACKBONES, BridgeTowerConfig

# tie_word_embeddings too: BERT / RoBERTa configs say True, the official MLM decoder is never tied.
_DROP_KEYS = ("model_type", "architectures", "_name_or_path", "transformers_version", "auto_map", "tie_word_embeddings")
# A vision checkpoint's model_type -> (our vision_backbone, transformers' class loading its tower).
_VISION_CHECKPOINTS = {
    "clip": ("clip", CLIPVisionModel),  # a whole CLIPModel: its vision half
    "clip_vision_model": ("clip", CLIPVisionModel),
    "vit": ("vit", ViTModel),
    "deit": ("deit", DeiTModel),
}
# Tokens before the patches in the position embeddings: [CLS] (DeiT: [CLS] and its distillation token).
_PREFIX_TOKENS = {"clip": 1, "vit": 1, "deit": 2}


def vision_backbone_of(vision_config) -> str:
    """Our `vision_backbone` for a transformers vision config (CLIP, CLIP vision, ViT or DeiT); else a clear error."""
    if vision_config.model_type not in _VISION_CHECKPOINTS:
        raise ValueError(
            f"vision checkpoint is a {vision_config.model_type!r} model; BridgeTower's vision tower must be one of "
            f"{VISION_BACKBONES} (a CLIP, CLIP vision, ViT or DeiT checkpoint)."
        )
    return _VISION_CHECKPOINTS[vision_config.model_type][0]


def config_from_backbones(
    vision_config, text_config, image_size: int | None = None, **config_kwargs
) -> BridgeTowerConfig:
    """A BridgeTowerConfig whose towers have the shapes of the given vision (CLIP vision, ViT, DeiT) and RoBERTa /
    BERT configs."""
    vision_backbone = vision_backbone_of(vision_config)
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
    if vision_backbone != "clip":  # ViT / DeiT fields CLIP does not have
        vision.update(
            qkv_bias=vision_config.qkv_bias,
            hidden_dropout_prob=vision_config.hidden_dropout_prob,
            attention_dropout=vision_config.attention_probs_dropout_prob,
        )
    config_kwargs.setdefault("hidden_size", text_config.hidden_size)
    return BridgeTowerConfig(
        text_config=text,
        vision_config=vision,
        text_backbone=text_backbone,
        vision_backbone=vision_backbone,
        **config_kwargs,
    )


def resize_position_embedding(
    weight: torch.Tensor, patch_size: int, image_size: int, prefix_tokens: int = 1
) -> torch.Tensor:
    """(prefix + g*g, D) position embeddings -> the grid of `image_size`, as CLIP's `interpolate_pos_encoding`; the
    `prefix_tokens` rows ([CLS], DeiT's distillation token) are kept as they are."""
    new_grid = image_size // patch_size
    old_grid = int(math.isqrt(weight.shape[0] - prefix_tokens))
    if old_grid == new_grid:
        return weight
    cls_position, patch_positions = weight[:prefix_tokens], weight[prefix_tokens:]
    dim = weight.shape[-1]
    grid = patch_positions.reshape(1, old_grid, old_grid, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return torch.cat([cls_position, grid.permute(0, 2, 3, 1).reshape(-1, dim)], dim=0)


@torch.no_grad()
def set_image_size(model, image_size: int) -> None:
    """Let a loaded model take `image_size` images (fine-tuning at another resolution than pre-training, 288 -> 384
    or 576 in the paper): position embeddings interpolated, the config updated so checkpoints reload."""
    vision = model.base_model.vision_model.embeddings
    config = model.config.vision_config
    if image_size % config.patch_size:
        raise ValueError(f"--image_size {image_size} is not a multiple of the patch size {config.patch_size}.")
    if image_size == config.image_size:
        return
    backbone = model.config.vision_backbone
    if backbone != "clip":  # ViT / DeiT: a (1, prefix + patches, D) parameter, and the patch embedding checks sizes
        prefix = _PREFIX_TOKENS[backbone]
        weight = resize_position_embedding(vision.position_embeddings[0], config.patch_size, image_size, prefix)
        vision.position_embeddings = torch.nn.Parameter(weight[None])
        vision.patch_embeddings.image_size = (image_size, image_size)
        vision.patch_embeddings.num_patches = (image_size // config.patch_size) ** 2
        config.image_size = image_size
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
    vision_config = AutoConfig.from_pretrained(vision_model_name_or_path)
    vision_backbone_of(vision_config)  # a clear error for any other kind of checkpoint
    backbone, vision_cls = _VISION_CHECKPOINTS[vision_config.model_type]
    if backbone == "clip":
        vision = vision_cls.from_pretrained(vision_model_name_or_path)
    else:  # BridgeTower pools in the cross-modal encoder: the checkpoint's pooler (if any) is left behind
        vision = vision_cls.from_pretrained(vision_model_name_or_path, add_pooling_layer=False)
    text = AutoModel.from_pretrained(text_model_name_or_path)
    config = config_from_backbones(vision.config, text.config, image_size=image_size, **config_kwargs)
    model = model_cls(config)
    bridgetower = model.base_model

    patch, size = config.vision_config.patch_size, config.vision_config.image_size
    if backbone == "clip":
        vision_state = vision.vision_model.state_dict()
        key = "embeddings.position_embedding.weight"
        vision_state[key] = resize_position_embedding(vision_state[key], patch, size)
    else:
        vision_state = vision.state_dict()
        key = "embeddings.position_embeddings"
        vision_state[key] = resize_position_embedding(vision_state[key][0], patch, size, _PREFIX_TOKENS[backbone])[None]
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
