"""AdamW parameter groups as the official `set_schedule` (microsoft/BridgeTower, meter_utils.py) builds them, by
parameter name:

- learning rate: x `cross_modal_lr_multiplier` for every parameter whose name says "cross_modal" (transforms,
  cross-modal layers, first-layer LayerNorms, link towers, poolers), x `head_lr_multiplier` for the model's heads
  (each model class declares them in `_head_modules`), the base rate for everything else: both towers, the
  token-type embeddings, the ITC temperature;
- weight decay on every parameter but those whose official name contains one of `NO_DECAY` (biases and
  LayerNorm / norm weights). The rule reads each parameter under its official name (`official_name`), so, exactly
  as officially, CLIP's `class_embedding`, position embeddings and `ln_*` LayerNorm weights are decayed, and so
  are the downstream heads' LayerNorm weights (officially `vqa_classifier.1.weight`: an index in an
  `nn.Sequential`, which no pattern matches).
"""

from __future__ import annotations

from torch import nn

from ..modeling.checkpoint_conversion import official_vision_name

NO_DECAY = (
    "bias",
    "LayerNorm.bias",
    "LayerNorm.weight",
    "norm.bias",
    "norm.weight",
    "norm1.bias",
    "norm1.weight",
    "norm2.bias",
    "norm2.weight",
)
ROLES = ("base", "cross_modal", "head")
# The downstream heads (BridgeTowerClassificationHead) are an nn.Sequential officially (bt_module.py: Linear,
# LayerNorm, GELU, Linear): our submodule names -> the official indices.
DOWNSTREAM_HEADS = ("vqa_classifier", "snli_classifier", "nlvr2_classifier")
OFFICIAL_HEAD_INDEX = {"dense": "0", "LayerNorm": "1", "classifier": "3"}


def parameter_role(model: nn.Module, name: str) -> str:
    """'base', 'cross_modal' or 'head' for parameter `name` of `model` (see the module doc). A parameter of a module
    the model class does not declare is an error, so a new head cannot fall into the base group unnoticed."""
    if "cross_modal" in name:
        return "cross_modal"
    top = name.split(".")[0]
    if model is model.base_model or top == model.base_model_prefix:
        return "base"
    if top in getattr(model, "_head_modules", ()):
        return "head"
    if top in getattr(model, "_base_rate_parameters", ()):
        return "base"
    raise ValueError(
        f"{type(model).__name__} does not say which learning rate '{name}' gets: add {top!r} to the class's "
        "_head_modules (head rate) or _base_rate_parameters (base rate)."
    )


def official_name(name: str) -> str:
    """A parameter's name in the official model: the vision tower in OpenAI-CLIP naming, the downstream heads'
    submodules as their nn.Sequential indices ("vqa_classifier.LayerNorm.weight" -> "vqa_classifier.1.weight");
    other names are the same there."""
    top, _, rest = name.partition(".")
    if top in DOWNSTREAM_HEADS:
        module, _, tail = rest.partition(".")
        return f"{top}.{OFFICIAL_HEAD_INDEX.get(module, module)}.{tail}"
    return official_vision_name(name)


def applies_weight_decay(name: str) -> bool:
    return not any(pattern in official_name(name) for pattern in NO_DECAY)


def freeze_towers(model: nn.Module, text: bool = False, vision: bool = False) -> None:
    base = model.base_model
    if text:
        base.text_model.requires_grad_(False)
    if vision:
        base.vision_model.requires_grad_(False)


def parameter_groups(
    model: nn.Module,
    learning_rate: float,
    weight_decay: float,
    cross_modal_lr_multiplier: float = 5.0,
    head_lr_multiplier: float = 5.0,
) -> list[dict]:
    """Groups of trainable parameters keyed by (role, decay); empty groups are left out (fused AdamW rejects them)."""
    multipliers = {"base": 1.0, "cross_modal": cross_modal_lr_multiplier, "head": head_lr_multiplier}
    groups: dict[tuple[str, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        role, decay = parameter_role(model, name), applies_weight_decay(name)
        group = groups.setdefault(
            (role, decay),
            {
                "params": [],
                "names": [],
                "lr": learning_rate * multipliers[role],
                "weight_decay": weight_decay if decay else 0.0,
            },
        )
        group["params"].append(parameter)
        group["names"].append(name)
    # base-rate group first: it is the one Trainer logs
    ordered = sorted(groups.items(), key=lambda item: (ROLES.index(item[0][0]), item[0][1]))
    return [dict(group, role=role) for (role, _), group in ordered]


def torch_param_groups(groups: list[dict]) -> list[dict]:
    """`parameter_groups` without its bookkeeping keys (names, role), as torch optimizers take them."""
    return [{k: v for k, v in g.items() if k not in ("names", "role")} for g in groups]
