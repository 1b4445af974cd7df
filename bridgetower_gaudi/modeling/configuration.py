# Copyright 2026 The bridgetower-gaudi authors. Licensed under the Apache License, Version 2.0.
"""BridgeTower configuration: transformers' `BridgeTowerConfig` plus the paper's design space.

A config written by `transformers.BridgeTowerConfig` loads here unchanged, and ours loads in transformers
(extra fields are kept as plain attributes there). What transformers infers implicitly (vision heads = hidden // 64,
cross-modal layers shaped like the text tower) we store explicitly, resolved at construction.
"""

from __future__ import annotations

from typing import Any

from transformers import BridgeTowerConfig as HFBridgeTowerConfig
from transformers import BridgeTowerTextConfig as HFBridgeTowerTextConfig
from transformers import BridgeTowerVisionConfig as HFBridgeTowerVisionConfig
from transformers import PretrainedConfig

# Bridge ("link tower") variants. Letters are the rows of the paper's Design I table; x is the previous
# cross-modal layer's output, y the uni-modal representation brought in by the bridge.
BRIDGE_VARIANTS = {
    "add": "(a) LayerNorm(x + y): the paper's and the released checkpoints' choice",
    "multiply": "(b) LayerNorm(x * y)",
    "weighted_add": "(c) LayerNorm(a * x + (1 - a) * y), a a learned vector",
    "gated": "(d) LayerNorm(a * x + (1 - a) * y), a = sigmoid(W[x; y])",
    "linear": "(e) LayerNorm(W[x; y])",
    "mlp": "(f) LayerNorm(W2 GELU(W1[x; y]))",
    "cross_attention": "(g) MCA(x, y): x attends to y (residual + LayerNorm inside)",
    "cross_attention_ffn": "(h) FFN(MCA(x, y))",
    "add_linear": "(i) LayerNorm(x + y + W[x; y])",
    "scaled_add": "transformers: LayerNorm(s * y + x), s a learned scalar",
    "interpolate": "transformers: LayerNorm((1 - b) * y + b * x), b a learned scalar",
}
TEXT_BACKBONES = ("roberta", "bert")
# Vision towers (the paper's Table 4): transformers' CLIPVisionTransformer (default), ViTModel, DeiTModel (DeiT adds a
# distillation token after [CLS]; BridgeTower reads [CLS], token 0, as with the others).
VISION_BACKBONES = ("clip", "vit", "deit")


def usable_text_positions(backbone: str, max_position_embeddings: int, pad_token_id: int | None) -> int:
    """RoBERTa numbers positions from pad_token_id + 1 (max_position_embeddings - 2 with its pad id 1); BERT from
    0."""
    if backbone == "roberta":
        return max_position_embeddings - (1 if pad_token_id is None else pad_token_id) - 1
    return max_position_embeddings


# The official init_weights: every freshly initialised weight ~ N(0, 0.02 * initializer_factor), towers included.
INITIALIZER_RANGE = 0.02
# The official cross-modal layers and MLM transform are BERT layers built from a RoBERTa-style BertConfig whose
# layer_norm_eps is BERT's default 1e-12; link towers and the first cross-modal LayerNorms use 1e-5.
OFFICIAL_CROSS_MODAL_LAYER_NORM_EPS = 1e-12


class BridgeTowerTextConfig(HFBridgeTowerTextConfig):
    """The text tower (RoBERTa or BERT layout; which one is `BridgeTowerConfig.text_backbone`).

    `tie_word_embeddings` defaults to False: the official MLM decoder is trained from scratch, never tied to the word
    embeddings. (transformers' text config defaults to True, and its BridgeTowerForMaskedLM ties by it; a config file
    that does not say is read with transformers' default, see `BridgeTowerConfig.from_dict`.)
    """

    def __init__(self, tie_word_embeddings: bool = False, **kwargs):
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class BridgeTowerVisionConfig(HFBridgeTowerVisionConfig):
    """The vision tower (CLIP-ViT, ViT or DeiT; which one is `BridgeTowerConfig.vision_backbone`). Adds what
    transformers hard-codes: heads, FFN size and activation. ViT / DeiT towers also read `qkv_bias` (True) and
    `hidden_dropout_prob` (0.0) when set; `attention_dropout` is their attention dropout."""

    def __init__(
        self,
        num_attention_heads: int | None = None,
        intermediate_size: int | None = None,
        hidden_act: str = "quick_gelu",
        attention_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # transformers' BridgeTower builds nn.MultiheadAttention(hidden, hidden // 64) and a 4x MLP.
        self.num_attention_heads = num_attention_heads or max(1, self.hidden_size // 64)
        self.intermediate_size = intermediate_size or 4 * self.hidden_size
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}: pick a head count that divides it."
            )
        self.hidden_act = hidden_act
        self.attention_dropout = attention_dropout


def _as_dict(sub_config: Any) -> dict:
    if sub_config is None:
        return {}
    if isinstance(sub_config, PretrainedConfig):
        return sub_config.to_dict()
    return dict(sub_config)


class BridgeTowerConfig(HFBridgeTowerConfig):
    r"""
    Configuration of a BridgeTower: a vision tower, a text tower and a cross-modal encoder of `num_hidden_layers`
    (L_Z) layers fed by bridges.

    Our fields, beyond transformers' (`share_cross_modal_transformer_layers`, `share_link_tower_layers`,
    `link_tower_type`, `hidden_size`, `num_hidden_layers`, `layer_norm_eps`, `text_config`, `vision_config`, ...):

    Args:
        link_tower_type: the bridge variant, a key of `BRIDGE_VARIANTS` (default "add", as the paper).
        num_bridges: how many cross-modal layers receive a bridge, 0..L_Z-1 (default L_Z-1, the full BridgeTower;
            0 is the METER two-tower model). See `BridgeTowerModel` for the layer mapping.
        text_backbone: "roberta" (default, as transformers) or "bert": which transformers encoder the text tower is.
        vision_backbone: "clip" (default, as transformers), "vit" or "deit": which transformers encoder the vision
            tower is (ViT / DeiT checkpoints are saved in our layout: transformers' BridgeTower has a CLIP tower).
        cross_modal_num_attention_heads / cross_modal_intermediate_size: the cross-modal layers' shape. Default: the
            text tower's, which is what transformers uses (it ignores the top-level `num_attention_heads`).
        cross_modal_layer_norm_eps: LayerNorm epsilon inside the cross-modal layers (default 1e-12, the official
            value; transformers uses `text_config.layer_norm_eps` there, which is what a transformers config loads as).
        mlm_head_layer_norm_eps: LayerNorm epsilon of the MLM transform (default 1e-12, official; transformers uses
            `layer_norm_eps`). `layer_norm_eps` (1e-5) is the link towers' and first cross-modal LayerNorms'.
        contrastive_hidden_size / logit_scale_init_value: the ITC heads: projection size 256 and temperature 0.07
            (logit scale ln(1/0.07)), the official values (the released ITC checkpoint says 512 in its config).
        pretraining_objectives: which objectives `BridgeTowerForPreTraining` trains ("itc" adds its heads).
        mlm_probability: the share of tokens MLM data masks (0.15, official). It sizes the static number of
            positions `BridgeTowerForPreTraining` decodes per batch (`mlm_decoder_capacity`).
        classifier_hidden_scale / classifier_dropout_prob: the downstream heads (VQA, SNLI-VE, NLVR2): Linear(in,
            2h x scale) -> LayerNorm -> GELU -> Linear(., num_labels) (the official two-layer head,
            `head_hidden_scale`: 2 for VQA / SNLI-VE, 1.5 for NLVR2), and dropout before it (NLVR2: 0.1).
        num_image_token_types: modality-type rows for images (1; NLVR2 2: its second image gets its own row).
        checkpoint_layout: set by `save_pretrained`: "transformers" when the weights are in transformers'
            layout, "bridgetower_gaudi" when the configuration cannot be represented there.
    """

    sub_configs = {"text_config": BridgeTowerTextConfig, "vision_config": BridgeTowerVisionConfig}

    def __init__(
        self,
        text_config: dict | PretrainedConfig | None = None,
        vision_config: dict | PretrainedConfig | None = None,
        link_tower_type: str = "add",
        num_bridges: int | None = None,
        text_backbone: str = "roberta",
        vision_backbone: str = "clip",
        cross_modal_num_attention_heads: int | None = None,
        cross_modal_intermediate_size: int | None = None,
        cross_modal_hidden_dropout_prob: float | None = None,
        cross_modal_attention_probs_dropout_prob: float | None = None,
        cross_modal_layer_norm_eps: float = OFFICIAL_CROSS_MODAL_LAYER_NORM_EPS,
        mlm_head_layer_norm_eps: float = OFFICIAL_CROSS_MODAL_LAYER_NORM_EPS,
        contrastive_hidden_size: int = 256,
        logit_scale_init_value: float = 2.6592,
        pretraining_objectives: tuple[str, ...] | list[str] = ("mlm", "itm"),
        mlm_probability: float = 0.15,
        classifier_hidden_scale: float = 2.0,
        classifier_dropout_prob: float = 0.0,
        num_image_token_types: int = 1,
        checkpoint_layout: str = "transformers",
        **kwargs,
    ):
        super().__init__(text_config=_as_dict(text_config), vision_config=_as_dict(vision_config), **kwargs)
        self.text_config = BridgeTowerTextConfig(**_as_dict(text_config))
        self.vision_config = BridgeTowerVisionConfig(**_as_dict(vision_config))
        text = self.text_config

        if link_tower_type not in BRIDGE_VARIANTS:
            raise ValueError(
                f"link_tower_type={link_tower_type!r} is not a bridge variant; choose one of {sorted(BRIDGE_VARIANTS)}."
            )
        if text_backbone not in TEXT_BACKBONES:
            raise ValueError(f"text_backbone={text_backbone!r} is not supported; choose one of {TEXT_BACKBONES}.")
        if vision_backbone not in VISION_BACKBONES:
            raise ValueError(f"vision_backbone={vision_backbone!r} is not supported; choose one of {VISION_BACKBONES}.")
        self.link_tower_type = link_tower_type
        self.text_backbone = text_backbone
        self.vision_backbone = vision_backbone
        self.cross_modal_num_attention_heads = cross_modal_num_attention_heads or text.num_attention_heads
        self.cross_modal_intermediate_size = cross_modal_intermediate_size or text.intermediate_size
        self.cross_modal_hidden_dropout_prob = (
            text.hidden_dropout_prob if cross_modal_hidden_dropout_prob is None else cross_modal_hidden_dropout_prob
        )
        self.cross_modal_attention_probs_dropout_prob = (
            text.attention_probs_dropout_prob
            if cross_modal_attention_probs_dropout_prob is None
            else cross_modal_attention_probs_dropout_prob
        )
        self.cross_modal_layer_norm_eps = cross_modal_layer_norm_eps
        self.mlm_head_layer_norm_eps = mlm_head_layer_norm_eps
        self.contrastive_hidden_size = contrastive_hidden_size
        self.logit_scale_init_value = logit_scale_init_value
        self.checkpoint_layout = checkpoint_layout
        self.classifier_hidden_scale = classifier_hidden_scale
        self.classifier_dropout_prob = classifier_dropout_prob
        if num_image_token_types < 1:
            raise ValueError(f"num_image_token_types={num_image_token_types}: at least 1.")
        self.num_image_token_types = num_image_token_types
        unknown = set(pretraining_objectives) - {"mlm", "itm", "itc"}
        if unknown:
            raise ValueError(f"pretraining_objectives {sorted(unknown)} unknown: choose from mlm, itm, itc.")
        self.pretraining_objectives = list(pretraining_objectives)
        if not 0 < mlm_probability <= 1:
            raise ValueError(f"mlm_probability={mlm_probability}: a share of the tokens, in (0, 1].")
        self.mlm_probability = mlm_probability

        max_bridges = self.num_hidden_layers - 1
        self.num_bridges = max_bridges if num_bridges is None else num_bridges
        if not 0 <= self.num_bridges <= max_bridges:
            raise ValueError(
                f"num_bridges={num_bridges} is out of range: with num_hidden_layers={self.num_hidden_layers} "
                f"cross-modal layers it must lie in [0, {max_bridges}] (0 = METER, {max_bridges} = BridgeTower)."
            )
        unimodal_layers = min(text.num_hidden_layers, self.num_vision_layers)
        if self.num_bridges + 1 > unimodal_layers:
            raise ValueError(
                f"{self.num_bridges} bridges need at least {self.num_bridges + 1} layers in each uni-modal tower, "
                f"the towers have {text.num_hidden_layers} (text) and {self.num_vision_layers} (vision): "
                "lower num_bridges or num_hidden_layers."
            )

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """Read a config file. Fields a file does not state get the value transformers' BridgeTower would use for it,
        so a checkpoint written by transformers computes here exactly as there: a tied MLM decoder, and the
        cross-modal / MLM-transform LayerNorm epsilons of `text_config.layer_norm_eps` / `layer_norm_eps`."""
        config_dict = dict(config_dict)
        text = dict(config_dict.get("text_config") or {})
        text.setdefault("tie_word_embeddings", True)
        config_dict["text_config"] = text
        config_dict.setdefault("cross_modal_layer_norm_eps", text.get("layer_norm_eps", 1e-5))
        config_dict.setdefault("mlm_head_layer_norm_eps", config_dict.get("layer_norm_eps", 1e-5))
        return super().from_dict(config_dict, **kwargs)

    def to_diff_dict(self) -> dict:
        # Always state tying: left out, a reader (transformers included) would fall back to its own default.
        diff = super().to_diff_dict()
        diff.setdefault("text_config", {})["tie_word_embeddings"] = self.text_config.tie_word_embeddings
        return diff

    @property
    def num_vision_layers(self) -> int:
        """Vision layers actually built (`remove_last_layer` drops CLIP's last one)."""
        return self.vision_config.num_hidden_layers - int(self.vision_config.remove_last_layer)

    @property
    def text_positions(self) -> int:
        """The longest text, in tokens ([CLS] and [SEP] included), the text tower can number."""
        text = self.text_config
        return usable_text_positions(self.text_backbone, text.max_position_embeddings, text.pad_token_id)

    @property
    def num_cross_modal_transforms(self) -> int:
        """Uni-modal -> cross-modal input projections per modality: one shared, or one per fed layer."""
        return 1 if self.share_cross_modal_transformer_layers else self.num_bridges + 1
