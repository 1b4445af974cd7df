"""AdamW parameter groups as the paper trains: no weight decay on biases and LayerNorms, and learning-rate
multipliers for everything cross-modal and for the heads (the uni-modal towers keep the base rate)."""

from __future__ import annotations

from torch import nn

UNIMODAL_PREFIXES = ("bridgetower.text_model.", "bridgetower.vision_model.")
HEAD_PREFIXES = ("mlm_score.", "itm_score.", "itc_", "logit_scale", "vqa_", "snli_", "nlvr2_")


def parameter_role(name: str) -> str:
    """'unimodal', 'head' or 'cross_modal' (transforms, cross layers, bridges, poolers, type embeddings)."""
    if name.startswith(UNIMODAL_PREFIXES):
        return "unimodal"
    if name.startswith(HEAD_PREFIXES):
        return "head"
    return "cross_modal"


def no_weight_decay(name: str, parameter: nn.Parameter) -> bool:
    return parameter.ndim < 2 or "LayerNorm" in name or "layer_norm" in name or "layernorm" in name.lower()


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
    multipliers = {"unimodal": 1.0, "cross_modal": cross_modal_lr_multiplier, "head": head_lr_multiplier}
    groups: dict[tuple[str, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        role, decay = parameter_role(name), not no_weight_decay(name, parameter)
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
    order = {"unimodal": 0, "cross_modal": 1, "head": 2}  # base-rate group first: it is the one Trainer logs
    return [
        dict(g, role=role) for (role, _), g in sorted(groups.items(), key=lambda item: (order[item[0][0]], item[0][1]))
    ]


def torch_param_groups(groups: list[dict]) -> list[dict]:
    """`parameter_groups` without its bookkeeping keys (names, role), as torch optimizers take them."""
    return [{k: v for k, v in g.items() if k not in ("names", "role")} for g in groups]
