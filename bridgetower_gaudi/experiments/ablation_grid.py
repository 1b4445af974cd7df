"""The points of the paper's ablation grids (Design I-III, backbones): which models a grid trains, and the one each
is compared with."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

GRIDS = ("bridge_type", "num_cross_layers", "num_bridges", "backbones")
# The paper's Design I rows, in its order (a)-(i).
PAPER_BRIDGES = (
    "add", "multiply", "weighted_add", "gated", "linear", "mlp", "cross_attention", "cross_attention_ffn", "add_linear",
)  # fmt: skip


class AblationError(ValueError):
    """Flags that cannot make a grid; the message says what to do."""


@dataclass(frozen=True)
class Point:
    """One model of a grid: `name` is its folder, `label` its table row, `overrides` its config fields, `flags` extra
    run flags (backbones: the checkpoints), `reference` the point it is compared with (None: it is a reference)."""

    name: str
    label: str
    overrides: dict = field(default_factory=dict, hash=False)
    flags: tuple[str, ...] = ()
    reference: str | None = None


# --- the grids --------------------------------------------------------------------------------------------------------
def _bridge_type_points(values: list[str] | None, base_layers: int) -> list[Point]:
    from ..modeling.configuration import BRIDGE_VARIANTS

    chosen = values or list(PAPER_BRIDGES)
    unknown = [v for v in chosen if v not in BRIDGE_VARIANTS]
    if unknown:
        raise AblationError(f"--values {','.join(unknown)}: bridge types are {sorted(BRIDGE_VARIANTS)}.")
    points = []
    for variant in ["add"] + [v for v in dict.fromkeys(chosen) if v != "add"]:
        description = BRIDGE_VARIANTS[variant]  # "(d) LayerNorm(...)": the paper's row letter, if it has one
        letter = description.split(")")[0] + ") " if description.startswith("(") else ""
        reference = None if variant == "add" else "bridge_type=add"
        points.append(Point(f"bridge_type={variant}", letter + variant, {"link_tower_type": variant}, (), reference))
    return points


def _num_cross_layers_points(values: list[str] | None, base_layers: int) -> list[Point]:
    chosen = _integers(values, "num_cross_layers") if values else list(range(1, base_layers + 1))
    if min(chosen) < 1:
        raise AblationError("--values: a model needs at least 1 cross-modal layer.")
    points = []
    for layers in [base_layers] + [n for n in dict.fromkeys(chosen) if n != base_layers]:
        reference = None if layers == base_layers else f"num_cross_layers={base_layers}"
        overrides = {"num_hidden_layers": layers, "num_bridges": layers - 1}  # BridgeTower: every layer bridged
        points.append(Point(f"num_cross_layers={layers}", f"L_Z = {layers}", overrides, (), reference))
    return points


def _num_bridges_points(values: list[str] | None, base_layers: int) -> list[Point]:
    chosen = _integers(values, "num_bridges") if values else list(range(base_layers))
    bad = [n for n in chosen if not 0 <= n < base_layers]
    if bad:
        raise AblationError(f"--values {bad}: with L_Z = {base_layers} a model has 0..{base_layers - 1} bridges.")
    points = []
    for bridges in [0] + [n for n in dict.fromkeys(chosen) if n != 0]:
        kind = "METER (two-tower)" if bridges == 0 else "BridgeTower"
        label = f"{kind}: {bridges} bridges ({bridges + 1} internal, {base_layers - bridges - 1} external)"
        reference = None if bridges == 0 else "num_bridges=0"
        points.append(Point(f"num_bridges={bridges}", label, {"num_bridges": bridges}, (), reference))
    return points


def _backbones_points(values: list[str] | None, base_layers: int) -> list[Point]:
    if not values:
        raise AblationError(
            "--grid backbones needs --values VISION+TEXT[,VISION+TEXT...]: checkpoint folders (CLIP, ViT or DeiT "
            "+ RoBERTa or BERT), e.g. --values openai/clip-vit-base-patch16+roberta-base."
        )
    points = []
    for pair in values:
        vision, plus, text = pair.partition("+")
        if not (plus and vision and text):
            raise AblationError(f"--values {pair!r}: write each backbone pair as VISION+TEXT.")
        tag = f"{os.path.basename(vision.rstrip('/'))}+{os.path.basename(text.rstrip('/'))}"
        flags = ("--vision_model_name_or_path", vision, "--text_model_name_or_path", text)
        meter = Point(f"backbones={tag}/meter", f"{tag}: METER", {"num_bridges": 0}, flags)
        points += [meter, Point(f"backbones={tag}/bridgetower", f"{tag}: BridgeTower", {}, flags, meter.name)]
    return points


GRID_POINTS = {
    "bridge_type": _bridge_type_points,
    "num_cross_layers": _num_cross_layers_points,
    "num_bridges": _num_bridges_points,
    "backbones": _backbones_points,
}


def grid_points(grid: str, values: list[str] | None, base_layers: int) -> list[Point]:
    """The points of `grid` (reference first), from `values` (None: the grid's default) and the base model's L_Z."""
    if grid not in GRID_POINTS:
        raise AblationError(f"--grid {grid!r}: choose one of {GRIDS}.")
    return GRID_POINTS[grid](values, base_layers)


def _integers(values: list[str], grid: str) -> list[int]:
    try:
        return [int(v) for v in values]
    except ValueError:
        raise AblationError(f"--grid {grid} takes whole numbers: --values {','.join(values)}.") from None
