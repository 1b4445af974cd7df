"""BridgeTower: a CLIP-ViT (or ViT / DeiT) vision tower and a RoBERTa / BERT text tower (transformers' own encoders)
whose top layers feed, through bridge layers, every layer of a cross-modal encoder (ours, on SDPA).

Public classes mirror transformers' BridgeTower classes (same forward arguments, outputs and checkpoint layout) and
add `BridgeTowerForPreTraining` (MLM + ITM). Model code holds no device or parallelism logic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    CLIPVisionConfig,
    DeiTConfig,
    DeiTModel,
    PreTrainedModel,
    RobertaConfig,
    RobertaModel,
    ViTConfig,
    ViTModel,
)
from transformers.activations import ACT2FN
from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask
from transformers.modeling_outputs import MaskedLMOutput, ModelOutput, SequenceClassifierOutput
from transformers.models.bert.modeling_bert import BERT_SELF_ATTENTION_CLASSES
from transformers.models.clip.modeling_clip import CLIPVisionTransformer
from transformers.models.roberta.modeling_roberta import ROBERTA_SELF_ATTENTION_CLASSES
from transformers.utils import logging

from ..data.images import normalize_pixels
from . import checkpoint_conversion
from .bridges import BridgeLayer
from .configuration import INITIALIZER_RANGE, BridgeTowerConfig
from .layers import CrossModalLayer, attention_bias

logger = logging.get_logger(__name__)


@dataclass
class BridgeTowerModelOutput(ModelOutput):
    """As transformers': `hidden_states` = (text tower states, vision tower states, cross-modal (text, image) pairs);
    the vision tower's states are (sequence, batch, hidden) there, as transformers returns them."""

    text_features: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@dataclass
class BridgeTowerContrastiveOutput(ModelOutput):
    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    cross_embeds: torch.FloatTensor | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@dataclass
class BridgeTowerForPreTrainingOutput(ModelOutput):
    """`loss` = `mlm_loss` + `itm_loss` (+ `itc_loss`), each present when its objective ran.

    The MLM decoder runs at `mlm_positions` only: `mlm_logits` is (capacity, vocab), row k scoring flat position
    `mlm_positions[k]` of the (batch, length) captions; the masked positions come first, then unmasked ones as
    padding (their labels are -100). `mlm_tokens_over_cap` counts masked tokens beyond the capacity, left out of
    `mlm_loss` (see `mlm_decoder_capacity`; the pre-training collator never sends more).
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    itc_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    mlm_positions: torch.LongTensor | None = None
    mlm_tokens_over_cap: torch.LongTensor | None = None


@dataclass
class TowerOutput:
    """A uni-modal tower's per-layer hidden states (index 0 = embeddings, k = layer k) and its token mask."""

    hidden_states: tuple[torch.Tensor, ...]
    mask: torch.Tensor | None

    def index_select(self, index: torch.Tensor, num_top_layers: int) -> TowerOutput:
        """Rows `index` of the top `num_top_layers` states: another batch's images without re-running the tower."""
        states = tuple(h.index_select(0, index) for h in self.hidden_states[-num_top_layers:])
        mask = None if self.mask is None else self.mask.index_select(0, index)
        return TowerOutput(states, mask)

    @staticmethod
    def concat(first: TowerOutput, second: TowerOutput, num_top_layers: int) -> TowerOutput:
        """The top `num_top_layers` states of two batches, one after the other."""
        states = tuple(
            torch.cat([a, b])
            for a, b in zip(first.hidden_states[-num_top_layers:], second.hidden_states[-num_top_layers:], strict=True)
        )
        if first.mask is None and second.mask is None:
            return TowerOutput(states, None)
        masks = [
            m if m is not None else torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
            for m, h in ((first.mask, first.hidden_states[-1]), (second.mask, second.hidden_states[-1]))
        ]
        return TowerOutput(states, torch.cat(masks))


def patch_mask_from_pixel_mask(pixel_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, H, W) pixel mask -> (B, 1 + patches) token mask: a patch is kept if any of its pixels is real; CLS always."""
    patches = F.max_pool2d(pixel_mask[:, None].float(), kernel_size=patch_size, stride=patch_size).flatten(1)
    cls = torch.ones_like(patches[:, :1])
    return torch.cat([cls, patches], dim=1).to(pixel_mask.dtype)


def _text_tower_config(config: BridgeTowerConfig, attn_implementation: str):
    tower_cls = RobertaConfig if config.text_backbone == "roberta" else BertConfig
    fields = {k: v for k, v in config.text_config.to_dict().items() if k not in ("model_type", "architectures")}
    # One initialisation rule for every part (RoBERTa / BERT would otherwise use their own 0.02, blind to the factor).
    fields["initializer_range"] = INITIALIZER_RANGE * config.text_config.initializer_factor
    tower = tower_cls(**fields)
    tower._attn_implementation = attn_implementation
    return tower


def _vision_tower(config: BridgeTowerConfig, attn_implementation: str) -> nn.Module:
    """transformers' encoder of `config.vision_backbone`: CLIPVisionTransformer, or ViTModel / DeiTModel (without
    their poolers: BridgeTower pools in the cross-modal encoder)."""
    if config.vision_backbone == "clip":
        return CLIPVisionTransformer(_vision_tower_config(config, attn_implementation))
    v = config.vision_config
    tower_cls, config_cls = (ViTModel, ViTConfig) if config.vision_backbone == "vit" else (DeiTModel, DeiTConfig)
    tower_config = config_cls(
        hidden_size=v.hidden_size,
        num_hidden_layers=config.num_vision_layers,
        num_attention_heads=v.num_attention_heads,
        intermediate_size=v.intermediate_size,
        hidden_act=v.hidden_act,
        hidden_dropout_prob=getattr(v, "hidden_dropout_prob", 0.0),
        attention_probs_dropout_prob=v.attention_dropout,
        layer_norm_eps=v.layer_norm_eps,
        image_size=v.image_size,
        patch_size=v.patch_size,
        num_channels=v.num_channels,
        qkv_bias=getattr(v, "qkv_bias", True),
        # ViT / DeiT initialise themselves (truncated normal): with the official std, as every other part.
        initializer_range=INITIALIZER_RANGE * v.initializer_factor,
    )
    tower_config._attn_implementation = attn_implementation
    return tower_cls(tower_config, add_pooling_layer=False)


def _vision_tower_config(config: BridgeTowerConfig, attn_implementation: str) -> CLIPVisionConfig:
    v = config.vision_config
    tower = CLIPVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=config.num_vision_layers,
        num_attention_heads=v.num_attention_heads,
        num_channels=v.num_channels,
        image_size=v.image_size,
        patch_size=v.patch_size,
        hidden_act=v.hidden_act,
        layer_norm_eps=v.layer_norm_eps,
        attention_dropout=v.attention_dropout,
    )
    tower._attn_implementation = attn_implementation
    return tower


# from_pretrained arguments meant for the model loader, not the config.
_LOADER_KWARGS = ("torch_dtype", "attn_implementation", "device_map", "low_cpu_mem_usage", "output_loading_info")


class BridgeTowerPreTrainedModel(PreTrainedModel):
    """The base of every BridgeTower class: its config class, weight initialisation (the official std 0.02 times
    `config.initializer_factor` for new modules), `from_pretrained` / `save_pretrained` (transformers' BridgeTower
    layout read, and written where the configuration allows it), and what the model supports (gradient
    checkpointing, attention implementations). Not used on its own."""

    config_class = BridgeTowerConfig
    # Learning-rate roles of the modules beside `bridgetower` (training.optimization.parameter_role).
    _head_modules: tuple[str, ...] = ()
    _base_rate_parameters: tuple[str, ...] = ()
    base_model_prefix = "bridgetower"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["CrossModalLayer", "CLIPEncoderLayer", "ViTLayer", "DeiTLayer", "RobertaLayer", "BertLayer"]

    def _init_weights(self, module: nn.Module):
        std = INITIALIZER_RANGE * self.config.initializer_factor  # the official init_weights
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight.data.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()
        elif isinstance(module, BridgeTowerMLMHead):
            module.bias.data.zero_()
        elif isinstance(module, BridgeTowerForContrastiveLearning):
            module.logit_scale.data.fill_(self.config.logit_scale_init_value)
        elif isinstance(module, BridgeTowerForPreTraining) and module.use_itc:
            module.temperature.data.fill_(math.exp(-self.config.logit_scale_init_value))
        elif type(module).__name__ == "CLIPVisionEmbeddings":
            module.class_embedding.data.normal_(mean=0.0, std=std)

    # Checkpoints: read and written in transformers' BridgeTower layout (see checkpoint_conversion).
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        if kwargs.get("state_dict") is not None or pretrained_model_name_or_path is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        state_dict = checkpoint_conversion.load_transformers_layout_state_dict(pretrained_model_name_or_path, **kwargs)
        if state_dict is None:  # our own layout: transformers' loader reads it as is
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        # transformers refuses a path together with a state dict: load the config here, pass both.
        config = kwargs.pop("config", None)
        if config is None:
            loader_kwargs = {k: kwargs.pop(k) for k in _LOADER_KWARGS if k in kwargs}
            config, kwargs = cls.config_class.from_pretrained(
                pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
            kwargs.update(loader_kwargs)
        return super().from_pretrained(None, *model_args, config=config, state_dict=state_dict, **kwargs)

    def save_pretrained(self, save_directory, *args, export_to_transformers: bool = False, **kwargs):
        """Write transformers' layout when the configuration allows it, else ours (and say why).

        `export_to_transformers=True` turns "cannot be represented in transformers" into an error instead.
        """
        reasons = checkpoint_conversion.transformers_incompatibilities(self.config)
        if reasons and export_to_transformers:
            raise ValueError(
                "this model cannot be exported to transformers' BridgeTower: "
                + "; ".join(reasons)
                + ". Save without export_to_transformers to keep it in bridgetower_gaudi's layout."
            )
        if not reasons:  # also a state dict handed in (e.g. gathered from DeepSpeed ZeRO-3 shards)
            state_dict = kwargs.get("state_dict")
            state_dict = self.state_dict() if state_dict is None else state_dict
            kwargs["state_dict"] = checkpoint_conversion.to_transformers_layout(state_dict, self.config)
        layout = "bridgetower_gaudi" if reasons else "transformers"
        if not reasons and (differences := checkpoint_conversion.transformers_numerical_differences(self.config)):
            logger.warning(
                "saving in transformers' BridgeTower layout; transformers will load it but compute with "
                "%s. bridgetower_gaudi loads it exactly.",
                "; ".join(differences),
            )
        previous, self.config.checkpoint_layout = self.config.checkpoint_layout, layout
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            self.config.checkpoint_layout = previous

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        """transformers' resize, plus the MLM head's separate output bias (new words start at 0)."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        head = getattr(self, "mlm_score", None)
        if head is not None and head.bias.shape[0] != embeddings.num_embeddings:
            grown = head.bias.data.new_zeros(embeddings.num_embeddings)
            grown[: head.bias.shape[0]] = head.bias.data[: embeddings.num_embeddings]
            head.bias = nn.Parameter(grown, requires_grad=head.bias.requires_grad)
        return embeddings

    def _classifier_output(self, loss, logits, outputs: BridgeTowerModelOutput, return_dict: bool | None):
        """The heads' common ending: a SequenceClassifierOutput with the encoder's hidden states / attentions, as
        a tuple when `return_dict` (or the config) says so."""
        result = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    @classmethod
    def from_backbones(cls, vision_model_name_or_path, text_model_name_or_path, **config_kwargs):
        """A BridgeTower whose towers start from a CLIP checkpoint and a RoBERTa / BERT checkpoint (the paper's
        pre-training start); the cross-modal part is freshly initialised. See `modeling.backbones`."""
        from .backbones import build_from_backbones

        return build_from_backbones(cls, vision_model_name_or_path, text_model_name_or_path, **config_kwargs)


class BridgeTowerPooler(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


def _one_or_many(make, count: int, shared: bool):
    return make() if shared else nn.ModuleList([make() for _ in range(count)])


class BridgeTowerModel(BridgeTowerPreTrainedModel):
    r"""The BridgeTower encoder.

    Layer mapping. With N_T text layers, N_V vision layers, L = `num_hidden_layers` cross-modal layers and
    B = `num_bridges` (0 <= B <= L - 1), layers counted from 1 and cross-modal layers from 0:

    - cross-modal layer 0 takes text layer N_T - B and vision layer N_V - B (each projected by the cross-modal
      transform, plus the modality-type embedding, then LayerNorm);
    - for j = 1..B, the bridge j merges text layer N_T - B + j (vision layer N_V - B + j) into the output of
      cross-modal layer j - 1, and the result is cross-modal layer j's input;
    - cross-modal layers B + 1 .. L - 1 take the previous layer's output unchanged.

    B = L - 1 is BridgeTower (base: 12 - 6 + 1 = layer 7 feeds cross layer 0, layers 8..12 feed bridges 1..5:
    transformers' `split_index`). B = 0 is the METER two-tower model: only the last uni-modal layers are fused. The
    paper's Design III table counts "internal" layers B + 1 (6, 4, 3, 2) and "external" layers L - B - 1. Vision
    features pass through CLIP's final LayerNorm (`ln_post`, shared) or one per layer (`share_layernorm=False`).

    Differences from transformers (none for its default inputs): `token_type_ids` reach the text embeddings;
    `pixel_mask` masks padded patches in the vision tower and in the cross-modal attention; vision heads come from
    the config; shared link towers, per-layer cross-modal transforms and `share_layernorm=False` work.
    """

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        attn = config._attn_implementation or "sdpa"
        if attn not in ROBERTA_SELF_ATTENTION_CLASSES or attn not in BERT_SELF_ATTENTION_CLASSES:
            attn = "sdpa"  # eager, sdpa, or a kernel device.attention registered for every tower (gaudi_fused_sdpa)
        hidden = config.hidden_size
        text_hidden, vision_hidden = config.text_config.hidden_size, config.vision_config.hidden_size

        self.vision_model = _vision_tower(config, attn)
        tower_cls = RobertaModel if config.text_backbone == "roberta" else BertModel
        self.text_model = tower_cls(_text_tower_config(config, attn), add_pooling_layer=True)
        if not config.vision_config.share_layernorm:
            self.vision_ln_separate = nn.ModuleList(
                [
                    nn.LayerNorm(vision_hidden, eps=config.vision_config.layer_norm_eps)
                    for _ in range(config.num_vision_layers)
                ]
            )

        shared = config.share_cross_modal_transformer_layers
        count = config.num_cross_modal_transforms
        self.cross_modal_text_transform = _one_or_many(lambda: nn.Linear(text_hidden, hidden), count, shared)
        self.cross_modal_image_transform = _one_or_many(lambda: nn.Linear(vision_hidden, hidden), count, shared)
        self.token_type_embeddings = nn.Embedding(1 + config.num_image_token_types, hidden)  # row 0: text
        self.cross_modal_text_layernorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.cross_modal_image_layernorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.cross_modal_text_layers = nn.ModuleList([CrossModalLayer(config) for _ in range(config.num_hidden_layers)])
        self.cross_modal_image_layers = nn.ModuleList(
            [CrossModalLayer(config) for _ in range(config.num_hidden_layers)]
        )
        link_shared, links = config.share_link_tower_layers, config.num_bridges
        self.cross_modal_text_link_tower = _one_or_many(lambda: BridgeLayer(config), links, link_shared and links > 0)
        self.cross_modal_image_link_tower = _one_or_many(lambda: BridgeLayer(config), links, link_shared and links > 0)
        self.cross_modal_text_pooler = BridgeTowerPooler(hidden)
        self.cross_modal_image_pooler = BridgeTowerPooler(hidden)
        self.post_init()
        self._freeze_unused_parameters()

    def post_init(self):
        super().post_init()
        config = self.config
        if not config.vision_config.share_layernorm and config.init_layernorm_from_vision_encoder:
            for layer_norm in self.vision_ln_separate:
                layer_norm.load_state_dict(self.vision_final_layernorm.state_dict())

    def _freeze_unused_parameters(self):
        """Weights kept only so checkpoints round-trip with transformers; freezing them keeps DDP free of
        find_unused_parameters and optimizers free of dead state."""
        self.text_model.pooler.requires_grad_(False)  # BridgeTower never uses the text tower's pooler
        if not self.config.vision_config.share_layernorm:
            self.vision_final_layernorm.requires_grad_(False)
            first_fed = self.config.num_vision_layers - self.config.num_bridges  # 1-based; lower ones never used
            for layer_norm in self.vision_ln_separate[: first_fed - 1]:
                layer_norm.requires_grad_(False)

    def get_input_embeddings(self):
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.text_model.set_input_embeddings(value)

    # --- uni-modal towers -------------------------------------------------------------------------------------
    def encode_text(self, input_ids, attention_mask=None, token_type_ids=None) -> TowerOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # The tower's embeddings and encoder, not its forward: that would also run the pooler BridgeTower never reads,
        # and its SDPA mask helper tests `torch.all(mask == 1)`, a device read and a branch an HPU graph would freeze.
        tower = self.text_model
        embeddings = tower.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        extended_mask = tower.get_extended_attention_mask(attention_mask, input_ids.shape)  # (batch, 1, 1, keys)
        out = tower.encoder(embeddings, attention_mask=extended_mask, output_hidden_states=True, return_dict=True)
        return TowerOutput(out.hidden_states, attention_mask)

    @property
    def vision_final_layernorm(self) -> nn.LayerNorm:
        """The vision tower's final LayerNorm (CLIP's `ln_post`, ViT / DeiT's `layernorm`): applied to every fed
        vision state (`share_layernorm`), as the paper feeds CLIP's states."""
        tower = self.vision_model
        return tower.post_layernorm if self.config.vision_backbone == "clip" else tower.layernorm

    def encode_image(self, pixel_values, pixel_mask=None, interpolate_pos_encoding=False) -> TowerOutput:
        pixel_values = normalize_pixels(pixel_values)  # the data loaders send uint8: normalised here, on the device
        tower = self.vision_model
        if self.config.vision_backbone != "clip":
            # ViT / DeiT encoders take no attention mask, so padded pixels cannot be masked out of them.
            if pixel_mask is not None and not bool(pixel_mask.all()):
                raise ValueError(
                    f"a pixel_mask with padded pixels needs a CLIP vision tower ({self.config.vision_backbone} "
                    "towers have no attention mask): resize images to the model's size instead of padding."
                )
            hidden = tower.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
            out = tower.encoder(hidden, output_hidden_states=True)
            return TowerOutput(out.hidden_states, None)
        hidden = tower.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        hidden = tower.pre_layrnorm(hidden)
        token_mask = None
        encoder_mask = None
        if pixel_mask is not None:
            token_mask = patch_mask_from_pixel_mask(pixel_mask, self.config.vision_config.patch_size)
            encoder_mask = _prepare_4d_attention_mask(token_mask, hidden.dtype)
        out = tower.encoder(inputs_embeds=hidden, attention_mask=encoder_mask, output_hidden_states=True)
        return TowerOutput(out.hidden_states, token_mask)

    def _vision_layernorm(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        if self.config.vision_config.share_layernorm:
            return self.vision_final_layernorm(hidden)
        return self.vision_ln_separate[layer - 1](hidden)

    def _transform(self, transforms, index: int):
        return transforms if isinstance(transforms, nn.Linear) else transforms[index]

    def _link(self, towers, index: int):
        return towers if isinstance(towers, BridgeLayer) else towers[index]

    def fed_state(self, tower: TowerOutput, fed_index: int) -> torch.Tensor:
        """The tower state feeding cross layer `fed_index` (0 = the first; see the layer mapping above)."""
        return tower.hidden_states[len(tower.hidden_states) - (self.config.num_bridges + 1) + fed_index]

    def project_image(self, hidden: torch.Tensor, fed_index: int, image_token_type_idx: int = 1) -> torch.Tensor:
        """A fed vision state in the cross-modal space: LayerNorm, transform, modality-type embedding."""
        layer = self.config.num_vision_layers - self.config.num_bridges + fed_index
        hidden = self._vision_layernorm(hidden, layer)
        transform = self._transform(self.cross_modal_image_transform, fed_index)
        return transform(hidden) + self.token_type_embeddings.weight[image_token_type_idx]

    def project_text(self, hidden: torch.Tensor, fed_index: int) -> torch.Tensor:
        transform = self._transform(self.cross_modal_text_transform, fed_index)
        return transform(hidden) + self.token_type_embeddings.weight[0]

    # --- cross-modal encoder ----------------------------------------------------------------------------------
    def fuse(
        self,
        text: TowerOutput,
        image: TowerOutput,
        image_token_type_idx: int = 1,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        text_features_only: bool = False,
        pooled_only: bool = False,
    ) -> BridgeTowerModelOutput:
        """The cross-modal encoder over the two towers' outputs. Two ways to skip what the caller never reads:

        - `text_features_only` (the MLM pass): no image stream in the last layer, no poolers (`image_features` and
          `pooler_output` are then None);
        - `pooled_only` (pooled heads: ITM, VQA, SNLI-VE, NLVR2, the cross-modal ITC embedding): the last layer
          computes the [CLS] position of each stream alone, the only one the poolers read (`text_features` and
          `image_features` are then (batch, 1, hidden)). The same `pooler_output`; at base size the image stream's
          last layer shrinks from 325 query positions to one. Ignored when attentions or hidden states are asked for
          (they are returned for every position).
        """
        if text_features_only and pooled_only:
            raise ValueError("fuse: text_features_only and pooled_only exclude each other; pass one.")
        pooled_only = pooled_only and not (output_attentions or output_hidden_states)
        last = self.config.num_hidden_layers - 1
        text_mask, image_mask = attention_bias(text.mask), attention_bias(image.mask)
        x_text = self.cross_modal_text_layernorm(self.project_text(self.fed_state(text, 0), 0))
        x_image = self.cross_modal_image_layernorm(
            self.project_image(self.fed_state(image, 0), 0, image_token_type_idx)
        )
        cross_states, attentions = (), ()
        for index in range(self.config.num_hidden_layers):
            if 1 <= index <= self.config.num_bridges:
                bridge = index - 1
                x_text = self._link(self.cross_modal_text_link_tower, bridge)(
                    self.project_text(self.fed_state(text, index), index), x_text, text_mask
                )
                x_image = self._link(self.cross_modal_image_link_tower, bridge)(
                    self.project_image(self.fed_state(image, index), index, image_token_type_idx), x_image, image_mask
                )
            first_token_only = pooled_only and index == last
            new_text, text_attn = self.cross_modal_text_layers[index](
                x_text, x_image, text_mask, image_mask, output_attentions, first_token_only
            )
            if text_features_only and index == last:
                x_text, x_image, image_attn = new_text, None, None
            else:
                new_image, image_attn = self.cross_modal_image_layers[index](
                    x_image, x_text, image_mask, text_mask, output_attentions, first_token_only
                )
                x_text, x_image = new_text, new_image
            if output_hidden_states:
                cross_states += ((x_text, x_image),)
            if output_attentions:
                attentions += ((text_attn, image_attn),)
        pooled = None
        if not text_features_only:
            pooled = torch.cat([self.cross_modal_text_pooler(x_text), self.cross_modal_image_pooler(x_image)], dim=-1)
        # transformers returns the vision tower's states sequence-first (its OpenAI-CLIP blocks run that way).
        vision_states = tuple(h.transpose(0, 1) for h in image.hidden_states) if output_hidden_states else None
        return BridgeTowerModelOutput(
            text_features=x_text,
            image_features=x_image,
            pooler_output=pooled,
            hidden_states=(text.hidden_states, vision_states, cross_states) if output_hidden_states else None,
            attentions=attentions if output_attentions else None,
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        head_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        image_token_type_idx: int | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        pooled_only: bool = False,
    ):
        r"""Both towers, then the cross-modal encoder (see the class doc for the layer mapping).

        Args:
            input_ids: (batch, length) caption token ids (`BridgeTowerProcessor`).
            attention_mask: (batch, length) 1 for real tokens, 0 for padding (default: all ones).
            token_type_ids: (batch, length) segment ids for the text tower's embeddings (default: zeros).
            pixel_values: (batch, 3, size, size) normalised images.
            pixel_mask: (batch, size, size) 1 for real pixels, 0 for padding (default: all real).
            image_token_type_idx: the images' modality-type row (1; NLVR2's second image: 2).
            output_attentions / output_hidden_states: also return the attention weights / hidden states.
            return_dict: a `BridgeTowerModelOutput` (default, `config.use_return_dict`) or a tuple.
            interpolate_pos_encoding: interpolate the vision position embeddings to another image size.
            pooled_only: compute the last cross-modal layer at the [CLS] positions only, all `pooler_output` reads
                (the same `pooler_output`, less work; `text_features` / `image_features` are then (batch, 1,
                hidden)). Ignored when hidden states or attentions are asked for.
            head_mask, inputs_embeds, image_embeds, labels: transformers' arguments; the first three are refused
                (unsupported), `labels` is accepted and ignored, as in transformers.

        Returns:
            `BridgeTowerModelOutput`: `text_features` (batch, length, hidden) and `image_features` (batch, 1 +
            patches, hidden), the last cross-modal layer's streams; `pooler_output` (batch, 2 x hidden), the two
            poolers' [CLS] outputs concatenated; `hidden_states` = (text tower states, vision tower states
            sequence-first, cross-modal (text, image) pairs) and `attentions` when asked for.
        """
        _reject_unsupported(head_mask=head_mask, inputs_embeds=inputs_embeds, image_embeds=image_embeds)
        if input_ids is None or pixel_values is None:
            raise ValueError("BridgeTowerModel needs both input_ids and pixel_values (use BridgeTowerProcessor).")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        text = self.encode_text(input_ids, attention_mask, token_type_ids)
        image = self.encode_image(pixel_values, pixel_mask, interpolate_pos_encoding)
        outputs = self.fuse(
            text, image, image_token_type_idx or 1, output_attentions, output_hidden_states, pooled_only=pooled_only
        )
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        return outputs if return_dict else outputs.to_tuple()


def _reject_unsupported(**kwargs):
    given = [name for name, value in kwargs.items() if value is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} is not supported by bridgetower_gaudi's BridgeTower; pass input_ids and pixel_values."
        )


# --- heads ----------------------------------------------------------------------------------------------------
class BridgeTowerPredictionHeadTransform(nn.Module):
    def __init__(self, config: BridgeTowerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.mlm_head_layer_norm_eps)

    def forward(self, hidden_states):
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class BridgeTowerMLMHead(nn.Module):
    def __init__(self, config: BridgeTowerConfig):
        super().__init__()
        self.transform = BridgeTowerPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.text_config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.text_config.vocab_size))

    def forward(self, hidden_states):
        return self.decoder(self.transform(hidden_states)) + self.bias


class BridgeTowerITMHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 2)

    def forward(self, pooled):
        return self.fc(pooled)


class BridgeTowerContrastiveHead(nn.Module):
    def __init__(self, hidden_size: int, embed_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, embed_size)

    def forward(self, x):
        return self.fc(x)


def mlm_decoder_capacity(num_positions: int, mlm_probability: float) -> int:
    """How many positions the pre-training MLM decoder scores in a batch of `num_positions` caption tokens: a
    static number (one graph on HPU), from the shape alone. The expected masked count plus 6 standard deviations of
    the binomial draw plus 8, rounded up to a multiple of 8, at most every position: masking each token with
    `mlm_probability` exceeds it with probability below 1e-9 (padding is never masked, so real batches stay further
    below). Above it, the extra masked tokens are left out of the loss and counted (`mlm_tokens_over_cap`);
    the pre-training collator unmasks them instead, with a warning (`tasks.pretrain.CappedMasking`)."""
    mean = num_positions * mlm_probability
    spread = 6 * math.sqrt(num_positions * mlm_probability * (1 - mlm_probability))
    return min(num_positions, 8 * math.ceil((mean + spread + 8) / 8))


def masked_positions(labels: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(capacity,) flat indices into `labels`, masked positions (label != -100) first and in order, unmasked ones
    after as padding; and the number of masked positions that did not fit (0-dim). Static shapes, no host read."""
    flat = labels.reshape(-1)
    masked = flat != -100
    # Distinct scores, masked ones above all others and earlier positions above later ones: top-k (a static shape,
    # supported by every backend) picks the masked positions first, in order. float32 is exact below 2**23 tokens.
    order = torch.arange(flat.numel(), 0, -1, device=flat.device, dtype=torch.float32)
    positions = torch.topk(order + masked.to(torch.float32) * flat.numel(), capacity).indices
    over_cap = (masked.sum() - capacity).clamp(min=0)
    return positions, over_cap


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1).to(logits.device))


class _PairHead(BridgeTowerPreTrainedModel):
    """A head over one encoded image-text pair. Every such head (MLM, ITM, VQA, SNLI-VE) shares this forward, with
    transformers' BridgeTower signature; each says what it reads from the encoder's output (`head_output`)."""

    reads_pooled_only = False  # True: the head reads `pooler_output` alone (see BridgeTowerModel.fuse)

    def head_output(self, outputs: BridgeTowerModelOutput, labels: torch.Tensor | None) -> ModelOutput:
        raise NotImplementedError

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        head_mask: None = None,
        inputs_embeds: None = None,
        image_embeds: None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        labels: torch.Tensor | None = None,
    ):
        r"""Encode the pair (`BridgeTowerModel`), then the head.

        Args:
            input_ids: (batch, length) caption token ids (`BridgeTowerProcessor`).
            attention_mask: (batch, length) 1 for real tokens, 0 for padding (default: all ones).
            token_type_ids: (batch, length) segment ids for the text tower's embeddings (default: zeros).
            pixel_values: (batch, 3, size, size) normalised images.
            pixel_mask: (batch, size, size) 1 for real pixels, 0 for padding (default: all real).
            head_mask, inputs_embeds, image_embeds: transformers' arguments this BridgeTower does not support; an
                error when given.
            output_attentions / output_hidden_states: return the encoder's attention weights / hidden states
                (`BridgeTowerModelOutput`'s layout).
            return_dict: a `ModelOutput` (default, `config.use_return_dict`) or a tuple.
            labels: the task's targets, see the class; the loss is returned when given.

        Returns:
            The head's output (`MaskedLMOutput` or `SequenceClassifierOutput`): `loss` (with labels), `logits`,
            `hidden_states`, `attentions`.
        """
        outputs = self.bridgetower(
            input_ids,
            attention_mask,
            token_type_ids,
            pixel_values,
            pixel_mask,
            head_mask=head_mask,
            inputs_embeds=inputs_embeds,
            image_embeds=image_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            pooled_only=self.reads_pooled_only,
        )
        result = self.head_output(outputs, labels)
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()


class BridgeTowerForMaskedLM(_PairHead):
    """Masked language modelling over the cross-modal text stream: `logits` (batch, length, vocab) at every
    position, as transformers' class; `labels` (batch, length) hold the original ids at masked positions and -100
    elsewhere (cross-entropy over the masked ones)."""

    _tied_weights_keys = ["mlm_score.decoder.weight"]
    _head_modules = ("mlm_score",)

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self.bridgetower = BridgeTowerModel(config)
        self.mlm_score = BridgeTowerMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.mlm_score.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_score.decoder = new_embeddings

    def head_output(self, outputs: BridgeTowerModelOutput, labels: torch.Tensor | None) -> MaskedLMOutput:
        logits = self.mlm_score(outputs.text_features)
        loss = _mlm_loss(logits, labels) if labels is not None else None
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)  # fmt: skip


class _PooledClassifier(_PairHead):
    """The pooled [text; image] output (2h) through the task's head (`head`), its loss (`loss`)."""

    reads_pooled_only = True

    def head(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def head_output(self, outputs: BridgeTowerModelOutput, labels: torch.Tensor | None) -> SequenceClassifierOutput:
        logits = self.head()(outputs.pooler_output)
        loss = self.loss(logits, labels.to(logits.device)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)  # fmt: skip


class BridgeTowerForImageAndTextRetrieval(_PooledClassifier):
    """Image-text matching (ITM): `logits` (batch, 2), `logits[:, 1]` scoring "this text describes this image";
    `labels` (batch,) 1 for a match, 0 otherwise (cross-entropy)."""

    _head_modules = ("itm_score",)

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self.bridgetower = BridgeTowerModel(config)
        self.itm_score = BridgeTowerITMHead(config.hidden_size * 2)
        self.post_init()

    def head(self) -> nn.Module:
        return self.itm_score

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)


class BridgeTowerForContrastiveLearning(BridgeTowerPreTrainedModel):
    """Image-text contrastive learning (ITC) between the text tower's [CLS], the vision tower's [CLS] (projected
    into the cross-modal space) and the cross-modal pooled output, as transformers' class. Hidden states are
    returned only when asked for."""

    _head_modules = ("itc_text_head", "itc_image_head")  # itc_cross_modal_head: cross-modal rate, by its name
    _base_rate_parameters = ("logit_scale",)

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self.bridgetower = BridgeTowerModel(config)
        embed = config.contrastive_hidden_size
        self.itc_text_head = BridgeTowerContrastiveHead(config.text_config.hidden_size, embed)
        self.itc_image_head = BridgeTowerContrastiveHead(config.hidden_size, embed)
        self.itc_cross_modal_head = BridgeTowerContrastiveHead(config.hidden_size * 2, embed)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    def text_embeddings(self, text: TowerOutput) -> torch.Tensor:
        """(batch, contrastive_hidden_size) normalised embeddings of the text tower's last [CLS] (as transformers'
        ForContrastiveLearning)."""
        return F.normalize(self.itc_text_head(text.hidden_states[-1][:, 0]), dim=-1)

    def image_embeddings(self, image: TowerOutput) -> torch.Tensor:
        """(batch, contrastive_hidden_size) normalised embeddings of the vision tower's last [CLS] projected into the
        cross-modal space (LayerNorm, cross-modal transform, modality-type embedding), as transformers'
        ForContrastiveLearning. Not `BridgeTowerForPreTraining.itc_image_embeddings` (the official ITC: `ln_post`
        only)."""
        bridgetower = self.bridgetower
        last_cls = image.hidden_states[-1][:, :1]  # only [CLS] is needed: skip projecting the patches
        projected = bridgetower.project_image(last_cls, bridgetower.config.num_bridges)
        return F.normalize(self.itc_image_head(projected[:, 0]), dim=-1)

    def get_text_features(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Normalised ITC text embeddings from the text tower alone (for retrieval indexes)."""
        return self.text_embeddings(self.bridgetower.encode_text(input_ids, attention_mask, token_type_ids))

    def get_image_features(self, pixel_values, pixel_mask=None) -> torch.Tensor:
        """Normalised ITC image embeddings from the vision tower alone."""
        return self.image_embeddings(self.bridgetower.encode_image(pixel_values, pixel_mask))

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        pixel_values=None,
        pixel_mask=None,
        head_mask=None,
        inputs_embeds=None,
        image_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        return_loss=None,
    ):
        r"""Arguments as `BridgeTowerModel.forward`; `return_loss=True` adds the loss: the mean of the three
        pairwise cross-entropies (text-image, text-cross, image-cross) over the batch, scaled by
        `exp(logit_scale)`, matching pairs on the diagonal.

        Returns:
            `BridgeTowerContrastiveOutput`: `text_embeds`, `image_embeds`, `cross_embeds` (batch, embed) normalised;
            `logits` (batch, 3, embed), the three stacked; `loss` when asked; `hidden_states` / `attentions` when
            asked.
        """
        _reject_unsupported(head_mask=head_mask, inputs_embeds=inputs_embeds, image_embeds=image_embeds)
        bridgetower = self.bridgetower
        text = bridgetower.encode_text(input_ids, attention_mask, token_type_ids)
        image = bridgetower.encode_image(pixel_values, pixel_mask)
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        outputs = bridgetower.fuse(text, image, 1, output_attentions, output_hidden_states, pooled_only=True)
        text_embeds = self.text_embeddings(text)
        image_embeds = self.image_embeddings(image)
        cross_embeds = F.normalize(self.itc_cross_modal_head(outputs.pooler_output), dim=-1)
        logits = torch.stack([text_embeds, image_embeds, cross_embeds], dim=-2)
        loss = None
        if return_loss:
            scale = self.logit_scale.exp()
            labels = torch.arange(len(logits), device=logits.device)
            pairs = [(text_embeds, image_embeds), (text_embeds, cross_embeds), (image_embeds, cross_embeds)]
            loss = sum(F.cross_entropy((a @ b.t()).float() * scale, labels) for a, b in pairs) / 3.0
        result = BridgeTowerContrastiveOutput(
            loss=loss,
            logits=logits,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            cross_embeds=cross_embeds,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows of every rank concatenated, this rank's index), gradients flowing back to each rank's own rows (as the
    official `all_gather(..., sync_grads=True)`); the tensor itself and 0 outside distributed runs."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor, 0
    if torch.distributed.get_world_size() == 1:
        return tensor, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0), torch.distributed.get_rank()


class BridgeTowerForPreTraining(BridgeTowerPreTrainedModel):
    """The paper's pre-training objectives in one forward: MLM + ITM (summed 1:1), optionally + ITC.

    - MLM: `input_ids` are the masked captions paired with their own images, `labels` the original tokens at
      masked positions (-100 elsewhere).
    - ITM: the unmasked captions (recovered from `input_ids` and `labels`) paired with the images that
      `itm_image_index` picks from the pool [the batch's own images; `itm_pixel_values`]: `itm_labels` says which
      pairs match. Rows < batch size reuse the MLM pass's image features (the vision tower has no dropout, so they
      equal a second pass); `itm_pixel_values` are encoded here (negatives drawn from the data set, or every ITM
      image for the official two-pass step). Without `itm_image_index`, ITM pairs caption i with `itm_pixel_values[i]`.
    - ITC (when `config.pretraining_objectives` has "itc"): the official contrastive loss between the text tower's
      last [CLS] and the vision tower's last [CLS] after `ln_post`, each through its ITC head, features gathered
      across ranks; temperature initialised at 0.07 and clamped to [0.001, 0.5]. With `itm_negative_mask` (True
      where image j is a valid negative for caption i), ITM runs on ITC-sampled hard negatives instead: for each
      pair one negative image for its text and one negative text for its image, drawn from softmax(similarity) of
      the local batch, so ITM sees positives : negatives = 1 : 2 (ALBEF, the official `compute_itm_itc`).
      `itc_image_ids` (one integer per caption's image) make the ITC targets soft over the captions of the same
      image, as retrieval fine-tuning does.
    """

    _tied_weights_keys = ["mlm_score.decoder.weight"]
    # Learning-rate roles (training.optimization.parameter_role), as the official `set_schedule`.
    _head_modules = ("mlm_score", "itm_score", "itc_text_head", "itc_image_head")
    _base_rate_parameters = ("temperature",)

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self.bridgetower = BridgeTowerModel(config)
        self.mlm_score = BridgeTowerMLMHead(config)
        self.itm_score = BridgeTowerITMHead(config.hidden_size * 2)
        self.use_itc = "itc" in config.pretraining_objectives
        if self.use_itc:
            embed = config.contrastive_hidden_size
            self.itc_text_head = BridgeTowerContrastiveHead(config.text_config.hidden_size, embed)
            self.itc_image_head = BridgeTowerContrastiveHead(config.vision_config.hidden_size, embed)
            self.temperature = nn.Parameter(torch.tensor(math.exp(-config.logit_scale_init_value)))
        self.post_init()
        for name in self.parameters_unused_by_objectives():
            self.get_parameter(name).requires_grad_(False)

    def parameters_unused_by_objectives(self) -> list[str]:
        """Parameters no loss of `config.pretraining_objectives` reaches. They are frozen at construction, so DDP
        needs no `find_unused_parameters` (GaudiTrainingArguments defaults it to False) and AdamW keeps no state."""
        objectives = set(self.config.pretraining_objectives)
        unused = []
        if "mlm" not in objectives:
            unused.append("mlm_score.")
        if "itm" not in objectives:  # MLM reads the last layer's text stream: the last image stream feeds only ITM
            last = self.config.num_hidden_layers - 1
            unused += [
                "itm_score.",
                "bridgetower.cross_modal_text_pooler.",
                "bridgetower.cross_modal_image_pooler.",
                f"bridgetower.cross_modal_image_layers.{last}.",
            ]
        return [name for name, _ in self.named_parameters() if name.startswith(tuple(unused))]

    def get_output_embeddings(self):
        return self.mlm_score.decoder

    def set_output_embeddings(self, new_embeddings):
        self.mlm_score.decoder = new_embeddings

    def itc_text_embeddings(self, text: TowerOutput) -> torch.Tensor:
        """Normalised ITC embeddings of the text tower's last [CLS] (the official `itc_text_head` input)."""
        return F.normalize(self.itc_text_head(text.hidden_states[-1][:, 0]), dim=-1)

    def itc_image_embeddings(self, image: TowerOutput) -> torch.Tensor:
        """Normalised ITC embeddings of the vision tower's last [CLS] after its final LayerNorm (`ln_post`)."""
        last_cls = self.bridgetower._vision_layernorm(image.hidden_states[-1][:, 0], self.config.num_vision_layers)
        return F.normalize(self.itc_image_head(last_cls), dim=-1)

    def _itc(self, text: TowerOutput, image: TowerOutput, image_ids: torch.Tensor | None = None):
        """ITC loss and the local (batch x batch) temperature-scaled similarities (image rows, text columns).
        Targets: the diagonal (pre-training), or with `image_ids` soft over every gathered caption of the same
        image (retrieval fine-tuning, the official `compute_itm_itc(pretrain=False)`)."""
        text_embeds = self.itc_text_embeddings(text)
        image_embeds = self.itc_image_embeddings(image)
        with torch.no_grad():
            self.temperature.clamp_(0.001, 0.5)
        all_text, rank = gather_with_grad(text_embeds)
        all_image, _ = gather_with_grad(image_embeds)
        batch = text_embeds.shape[0]
        image_to_text = (image_embeds @ all_text.t()).float() / self.temperature
        text_to_image = (text_embeds @ all_image.t()).float() / self.temperature
        if image_ids is None:
            targets = torch.arange(batch, device=image_to_text.device) + batch * rank
        else:
            image_ids = image_ids.to(image_to_text.device)
            with torch.no_grad():
                all_ids, _ = gather_with_grad(image_ids.float())  # ids are < 2**24: exact as float
            same_image = (image_ids.float()[:, None] == all_ids[None, :]).float()
            targets = same_image / same_image.sum(dim=1, keepdim=True)
        loss = (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2
        local = slice(batch * rank, batch * (rank + 1))
        return loss, image_to_text[:, local].detach(), text_to_image[:, local].detach()

    @staticmethod
    def _draw_hard_negatives(similarity: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """One column per row, drawn from softmax(similarity) over the valid columns (any column if none is)."""
        weights = similarity.softmax(dim=-1) * valid.to(similarity.dtype)
        weights = weights.masked_fill(~(weights.sum(dim=-1, keepdim=True) > 0), 1.0)
        return torch.multinomial(weights, 1).squeeze(-1)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        pixel_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        itm_labels: torch.LongTensor | None = None,
        itm_image_index: torch.LongTensor | None = None,
        itm_pixel_values: torch.FloatTensor | None = None,
        itm_pixel_mask: torch.LongTensor | None = None,
        itm_negative_mask: torch.BoolTensor | None = None,
        itc_image_ids: torch.LongTensor | None = None,
        return_dict: bool | None = None,
    ) -> BridgeTowerForPreTrainingOutput:
        r"""One pre-training step's forward (see the class doc for how ITM pairs and ITC are made).

        Args:
            input_ids / attention_mask / token_type_ids: (batch, length) masked captions (as the collator sends).
            pixel_values / pixel_mask: (batch, 3, size, size) / (batch, size, size): each caption's own image.
            labels: (batch, length) original ids at masked positions, -100 elsewhere: runs MLM.
            itm_labels: (batch,) 1 = the ITM pair matches: runs ITM.
            itm_image_index: (batch,) each ITM pair's image, a row of [pixel_values; itm_pixel_values].
            itm_pixel_values / itm_pixel_mask: (negatives, 3, size, size) / (negatives, size, size): images that are
                not the batch's own (data-set negatives); the only ones encoded a second time.
            itm_negative_mask: (batch, batch) True where image j may be caption i's negative: ITC-sampled hard
                negatives instead of `itm_labels` (needs "itc" in `config.pretraining_objectives`).
            itc_image_ids: (batch,) an integer per caption's image: soft ITC targets over captions of one image.
            return_dict: a `BridgeTowerForPreTrainingOutput` (default, `config.use_return_dict`) or a tuple.

        Returns:
            `BridgeTowerForPreTrainingOutput`: `loss` (the sum of those present), `mlm_loss`, `itm_loss`,
            `itc_loss`; `mlm_logits` (capacity, vocab) at `mlm_positions` (capacity,) and `mlm_tokens_over_cap`
            (see `mlm_decoder_capacity`); `itm_logits` (pairs, 2).
        """
        bridgetower = self.bridgetower
        top_layers = self.config.num_bridges + 1
        image = bridgetower.encode_image(pixel_values, pixel_mask)  # the one vision pass over the batch's images

        # The ITM (+ ITC) pass runs before the MLM pass: the MLM pass skips the image stream's last layer, so
        # running it last keeps every other dropout draw where two full passes in this order make it
        # (tests/test_step.py compares the loss and every gradient with that).
        itc_loss = itm_loss = itm_logits = None
        if itm_labels is not None or self.use_itc:
            clean_ids = input_ids if labels is None else torch.where(labels >= 0, labels, input_ids)
            text = bridgetower.encode_text(clean_ids, attention_mask, token_type_ids)
            if self.use_itc:
                itc_loss, image_to_text, text_to_image = self._itc(text, image, itc_image_ids)
            if self.use_itc and itm_negative_mask is not None:  # ITC-sampled hard negatives
                batch = clean_ids.shape[0]
                own = torch.arange(batch, device=clean_ids.device)
                negative_image = self._draw_hard_negatives(text_to_image, itm_negative_mask)
                negative_text = self._draw_hard_negatives(image_to_text, itm_negative_mask.t())
                text_rows = torch.cat([own, own, negative_text])
                image_rows = torch.cat([own, negative_image, own])
                itm_text = text.index_select(text_rows, top_layers)
                itm_image = image.index_select(image_rows, top_layers)
                itm_labels = torch.cat([torch.ones_like(own), torch.zeros_like(own), torch.zeros_like(own)])
            elif itm_labels is not None:
                itm_text = text
                itm_image = self._itm_images(image, itm_image_index, itm_pixel_values, itm_pixel_mask)
            if itm_labels is not None:
                itm_logits = self.itm_score(bridgetower.fuse(itm_text, itm_image, pooled_only=True).pooler_output)
                itm_loss = F.cross_entropy(itm_logits.float(), itm_labels.to(itm_logits.device))

        mlm_loss = mlm_logits = mlm_positions = mlm_tokens_over_cap = None
        if labels is not None:
            masked_text = bridgetower.encode_text(input_ids, attention_mask, token_type_ids)
            features = bridgetower.fuse(masked_text, image, text_features_only=True).text_features
            labels = labels.to(features.device)
            capacity = mlm_decoder_capacity(labels.numel(), self.config.mlm_probability)
            mlm_positions, mlm_tokens_over_cap = masked_positions(labels, capacity)
            # The decoder (hidden x vocabulary) only where a label is: about mlm_probability of the positions.
            mlm_logits = self.mlm_score(features.flatten(0, 1).index_select(0, mlm_positions))
            mlm_loss = _mlm_loss(mlm_logits, labels.reshape(-1).index_select(0, mlm_positions))

        losses = [part for part in (mlm_loss, itm_loss, itc_loss) if part is not None]
        loss = sum(losses) if losses else None
        result = BridgeTowerForPreTrainingOutput(
            loss, mlm_loss, itm_loss, itc_loss, mlm_logits, itm_logits, mlm_positions, mlm_tokens_over_cap
        )
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        return result if return_dict else result.to_tuple()

    def _itm_images(self, image: TowerOutput, index, extra_pixel_values, extra_pixel_mask) -> TowerOutput:
        """The ITM pass's images: rows `index` of [the batch's images; `extra_pixel_values`] (see the class doc)."""
        top_layers = self.config.num_bridges + 1
        if extra_pixel_values is None:
            return image if index is None else image.index_select(index, top_layers)
        extra = self.bridgetower.encode_image(extra_pixel_values, extra_pixel_mask)
        if index is None:
            return extra
        return TowerOutput.concat(image, extra, top_layers).index_select(index, top_layers)


# --- downstream heads (no transformers counterpart) -------------------------------------------------------------
class BridgeTowerClassificationHead(nn.Module):
    """The official two-layer downstream head (`task_head_layers=2`): Linear -> LayerNorm -> GELU -> Linear, with
    dropout on its input (NLVR2's `nlvr2_drop_rate`)."""

    def __init__(self, in_size: int, hidden_size: int, num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(in_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size)  # torch's default eps 1e-5, as the official head
        self.activation = nn.GELU()
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.activation(self.LayerNorm(self.dense(self.dropout(features)))))


def _classification_head(config: BridgeTowerConfig, in_size: int, num_labels: int) -> BridgeTowerClassificationHead:
    hidden = int(config.hidden_size * 2 * config.classifier_hidden_scale)
    return BridgeTowerClassificationHead(in_size, hidden, num_labels, config.classifier_dropout_prob)


class BridgeTowerForVisualQuestionAnswering(_PooledClassifier):
    """VQAv2 as the paper: the pooled output through the two-layer head over the answer vocabulary
    (`config.num_labels`, `config.id2label`); `labels` are soft scores (batch, num_labels) and the loss is
    binary cross-entropy (mean) x num_labels, the official `compute_vqa`."""

    _head_modules = ("vqa_classifier",)

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self.bridgetower = BridgeTowerModel(config)
        self.vqa_classifier = _classification_head(config, config.hidden_size * 2, config.num_labels)
        self.post_init()

    def head(self) -> nn.Module:
        return self.vqa_classifier

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float()) * labels.shape[1]


class BridgeTowerForVisualEntailment(_PooledClassifier):
    """SNLI-VE: does the image entail the hypothesis? The pooled output through the two-layer head -> 3 classes
    (contradiction 0, neutral 1, entailment 2); cross-entropy, the official `compute_snli`."""

    _head_modules = ("snli_classifier",)

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self.bridgetower = BridgeTowerModel(config)
        self.snli_classifier = _classification_head(config, config.hidden_size * 2, config.num_labels)
        self.post_init()

    def head(self) -> nn.Module:
        return self.snli_classifier

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)


class BridgeTowerForNLVR2(BridgeTowerPreTrainedModel):
    """NLVR2: is the sentence true of the image pair? Two full passes of the caption, with image 1 (modality type
    1) and image 2 (modality type 2, `num_image_token_types=2`); the two pooled outputs concatenated (4h) ->
    dropout -> two-layer head -> 2 classes, cross-entropy (the official `compute_nlvr2`). In evaluation the text
    tower runs once for both (no dropout: the same result).

    A model started from a pre-trained checkpoint (two modality-type rows) grows the third row as a copy of the
    image row with `add_second_image_token_type()`, as the official code does when it builds the NLVR2 head."""

    _head_modules = ("nlvr2_classifier",)

    def __init__(self, config: BridgeTowerConfig):
        super().__init__(config)
        self.bridgetower = BridgeTowerModel(config)
        self.nlvr2_classifier = _classification_head(config, config.hidden_size * 4, config.num_labels)
        self.post_init()

    @torch.no_grad()
    def add_second_image_token_type(self) -> None:
        """Modality-type rows [text, image] -> [text, image, image copy] (a no-op when the third row exists)."""
        if self.config.num_image_token_types >= 2:
            return
        old = self.bridgetower.token_type_embeddings
        new = nn.Embedding(3, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        new.weight.copy_(torch.cat([old.weight, old.weight[1:2]]))
        self.bridgetower.token_type_embeddings = new
        self.config.num_image_token_types = 2

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, pixel_values=None, pixel_mask=None,
                pixel_values_2=None, pixel_mask_2=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):  # fmt: skip
        r"""Arguments as `BridgeTowerModel.forward`, plus `pixel_values_2` / `pixel_mask_2`: the pair's second
        image, and `labels` (batch,) 0 / 1 (cross-entropy). Attentions and hidden states are the first image's pass.

        Returns:
            `SequenceClassifierOutput`: `logits` (batch, 2), `loss` with labels, `hidden_states` / `attentions`.
        """
        if pixel_values_2 is None:
            raise ValueError("BridgeTowerForNLVR2 needs both images: pixel_values and pixel_values_2.")
        if self.config.num_image_token_types < 2:
            raise ValueError(
                "this model has one image modality type: call add_second_image_token_type() after loading a "
                "pre-trained checkpoint (run_finetune.py --task nlvr2 does)."
            )
        bridgetower = self.bridgetower
        text = bridgetower.encode_text(input_ids, attention_mask, token_type_ids)
        first = bridgetower.fuse(text, bridgetower.encode_image(pixel_values, pixel_mask), 1,
                                 output_attentions, output_hidden_states, pooled_only=True)  # fmt: skip
        # Officially each image gets its own pass of the sentence (compute_nlvr2 runs `infer` twice): in training
        # the text tower draws new dropout masks for the second image. Without dropout (evaluation) that pass is
        # the first one again, so it is reused (tests/test_finetune.py checks both).
        if self.training:
            text = bridgetower.encode_text(input_ids, attention_mask, token_type_ids)
        second = bridgetower.fuse(text, bridgetower.encode_image(pixel_values_2, pixel_mask_2), 2, pooled_only=True)
        logits = self.nlvr2_classifier(torch.cat([first.pooler_output, second.pooler_output], dim=-1))
        loss = F.cross_entropy(logits.float(), labels.to(logits.device)) if labels is not None else None
        return self._classifier_output(loss, logits, first, return_dict)
