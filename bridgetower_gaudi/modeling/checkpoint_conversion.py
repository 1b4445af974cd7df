"""The one place that knows transformers' BridgeTower checkpoint layout.

Only the vision tower differs: transformers keeps the OpenAI-CLIP layout (`visual.transformer.resblocks.i.attn`
with a fused `in_proj`), we use transformers' `CLIPVisionTransformer` (`encoder.layers.i.self_attn.{q,k,v}_proj`).
Text tower, cross-modal layers, bridges and heads already share transformers' names.
"""

from __future__ import annotations

import json
import os
import re

import torch

# (ours, transformers') names after "vision_model."; {i} is a layer index, {p} weight or bias.
_VISION_NAMES = [
    ("embeddings.class_embedding", "visual.embeddings.class_embedding"),
    ("embeddings.patch_embedding.weight", "visual.embeddings.patch_embedding.weight"),
    ("embeddings.position_embedding.weight", "visual.embeddings.position_embedding.weight"),
    ("pre_layrnorm.{p}", "visual.ln_pre.{p}"),
    ("post_layernorm.{p}", "visual.ln_post.{p}"),
    ("encoder.layers.{i}.self_attn.out_proj.{p}", "visual.transformer.resblocks.{i}.attn.out_proj.{p}"),
    ("encoder.layers.{i}.layer_norm1.{p}", "visual.transformer.resblocks.{i}.ln_1.{p}"),
    ("encoder.layers.{i}.layer_norm2.{p}", "visual.transformer.resblocks.{i}.ln_2.{p}"),
    ("encoder.layers.{i}.mlp.fc1.{p}", "visual.transformer.resblocks.{i}.mlp.c_fc.{p}"),
    ("encoder.layers.{i}.mlp.fc2.{p}", "visual.transformer.resblocks.{i}.mlp.c_proj.{p}"),
]


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern)


_TO_THEIRS = [(_template_regex(ours), theirs) for ours, theirs in _VISION_NAMES]
_TO_OURS = [(_template_regex(theirs), ours) for ours, theirs in _VISION_NAMES]
_OURS_QKV = re.compile(r"^(.*)vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_THEIRS_IN_PROJ = re.compile(r"^(.*)vision_model\.visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")
_OURS_LN_SEPARATE = re.compile(r"^(.*)vision_ln_separate\.(\d+\.(?:weight|bias))$")
_THEIRS_LN_SEPARATE = re.compile(r"^(.*)vision_model\.visual\.ln_separate\.(\d+\.(?:weight|bias))$")
THEIRS_VISION_MARKER = "vision_model.visual."


def transformers_incompatibilities(config) -> list[str]:
    """Why transformers' BridgeTower classes cannot represent `config` (empty when they can)."""
    text, vision = config.text_config, config.vision_config
    reasons = []
    checks = [
        (
            config.text_backbone == "roberta",
            f"text_backbone={config.text_backbone!r} (transformers' text tower is RoBERTa)",
        ),
        (
            config.vision_backbone == "clip",
            f"vision_backbone={config.vision_backbone!r} (transformers' vision tower is CLIP)",
        ),
        (config.link_tower_type in ("add", "scaled_add", "interpolate"), f"link_tower_type={config.link_tower_type!r}"),
        (not config.share_link_tower_layers, "share_link_tower_layers=True (transformers crashes on it)"),
        (
            config.share_cross_modal_transformer_layers,
            "share_cross_modal_transformer_layers=False (transformers crashes on it)",
        ),
        (
            config.num_bridges == config.num_hidden_layers - 1,
            f"num_bridges={config.num_bridges} (transformers bridges every cross layer)",
        ),
        (vision.share_layernorm, "share_layernorm=False (transformers ignores the per-layer LayerNorms)"),
        (not vision.remove_last_layer, "remove_last_layer=True (transformers crashes on it)"),
        (config.num_vision_layers == text.num_hidden_layers, "vision and text towers of different depths"),
        (vision.num_attention_heads == vision.hidden_size // 64, "vision heads != vision hidden_size // 64"),
        (vision.intermediate_size == 4 * vision.hidden_size, "vision intermediate_size != 4 * hidden_size"),
        (vision.hidden_act == "quick_gelu", f"vision hidden_act={vision.hidden_act!r}"),
        (config.hidden_size == text.hidden_size, "cross-modal hidden_size != text hidden_size"),
        (config.cross_modal_num_attention_heads == text.num_attention_heads, "cross-modal heads != text heads"),
        (config.cross_modal_intermediate_size == text.intermediate_size, "cross-modal intermediate_size != text's"),
        (config.hidden_act == text.hidden_act, "cross-modal hidden_act != text hidden_act"),
        (config.num_image_token_types == 1, "a second image token type (NLVR2; transformers has two rows)"),
    ]
    for ok, reason in checks:
        if not ok:
            reasons.append(reason)
    return reasons


def transformers_numerical_differences(config) -> list[str]:
    """What transformers' BridgeTower computes differently from ours on the same weights (LayerNorm epsilons it
    cannot represent): the checkpoint still loads there, its outputs differ slightly."""
    differences = []
    if config.cross_modal_layer_norm_eps != config.text_config.layer_norm_eps:
        differences.append(
            f"cross-modal LayerNorm eps {config.cross_modal_layer_norm_eps:g} (transformers uses text_config."
            f"layer_norm_eps {config.text_config.layer_norm_eps:g})"
        )
    if config.mlm_head_layer_norm_eps != config.layer_norm_eps:
        differences.append(
            f"MLM transform LayerNorm eps {config.mlm_head_layer_norm_eps:g} (transformers uses layer_norm_eps "
            f"{config.layer_norm_eps:g})"
        )
    return differences


def to_transformers_layout(state_dict: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Our state dict -> transformers' BridgeTower state dict (same tensors; q/k/v concatenated)."""
    converted, qkv = {}, {}
    for key, tensor in state_dict.items():
        if match := _OURS_QKV.match(key):
            prefix, layer, which, kind = match.groups()
            qkv.setdefault((prefix, layer, kind), {})[which] = tensor
            continue
        if match := _OURS_LN_SEPARATE.match(key):
            converted[f"{match[1]}vision_model.visual.ln_separate.{match[2]}"] = tensor
            continue
        converted[_rename_vision(key, to_theirs=True)] = tensor
    for (prefix, layer, kind), parts in qkv.items():
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        converted[f"{prefix}vision_model.visual.transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
    return converted


def from_transformers_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' BridgeTower state dict -> ours."""
    converted = {}
    for key, tensor in state_dict.items():
        if match := _THEIRS_IN_PROJ.match(key):
            prefix, layer, kind = match.groups()
            for which, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                converted[f"{prefix}vision_model.encoder.layers.{layer}.self_attn.{which}_proj.{kind}"] = part.clone()
            continue
        if match := _THEIRS_LN_SEPARATE.match(key):
            converted[f"{match[1]}vision_ln_separate.{match[2]}"] = tensor
            continue
        converted[_rename_vision(key, to_theirs=False)] = tensor
    return converted


def official_vision_name(key: str) -> str:
    """A parameter name with the vision tower's part in the official / transformers (OpenAI-CLIP) naming; other
    names unchanged. (q, k and v projections, fused there, keep our names.)"""
    if match := _OURS_LN_SEPARATE.match(key):
        return f"{match[1]}vision_model.visual.ln_separate.{match[2]}"
    return _rename_vision(key, to_theirs=True)


def _rename_vision(key: str, to_theirs: bool) -> str:
    head, sep, tail = key.partition("vision_model.")
    if not sep:
        return key
    for pattern, template in _TO_THEIRS if to_theirs else _TO_OURS:
        if match := pattern.fullmatch(tail):
            return head + sep + template.format(**match.groupdict())
    return key


# --- reading checkpoints ---------------------------------------------------------------------------------------
_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder")


def _resolve(path, filename: str, **kwargs) -> str | None:
    if os.path.isdir(path):
        full = os.path.join(path, kwargs.get("subfolder") or "", filename)
        return full if os.path.isfile(full) else None
    from transformers.utils import cached_file

    hub = {k: v for k, v in kwargs.items() if k in _HUB_KWARGS}
    return cached_file(
        path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **hub,
    )


def _load_safetensors(file: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(file)
    except SafetensorError as error:  # safetensors' message does not say which file
        raise ValueError(f"cannot load {file}: {error} (a save or copy cut short, or a damaged file).") from None


def _read_weights(path, **kwargs) -> dict[str, torch.Tensor] | None:
    if single := _resolve(path, "model.safetensors", **kwargs):
        return _load_safetensors(single)
    if index := _resolve(path, "model.safetensors.index.json", **kwargs):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_load_safetensors(_resolve(path, shard, **kwargs)))
        return state
    if legacy := _resolve(path, "pytorch_model.bin", **kwargs):
        return torch.load(legacy, map_location="cpu", weights_only=True)
    return None


def load_transformers_layout_state_dict(path, **kwargs) -> dict[str, torch.Tensor] | None:
    """The converted state dict if `path` holds a checkpoint in transformers' layout, else None."""
    config_file = _resolve(path, "config.json", **kwargs)
    if config_file is None:
        return None
    with open(config_file) as f:
        if json.load(f).get("checkpoint_layout") == "bridgetower_gaudi":
            return None
    state = _read_weights(path, **kwargs)
    if state is None or not any(THEIRS_VISION_MARKER in key for key in state):
        return None
    return from_transformers_layout(state)
