"""Cross-modal encoder layers. Attention goes through transformers' attention-function registry
(`ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`, torch's SDPA by default), as the towers' does, so a kernel
registered for the towers (Habana's fused SDPA under `--use_flash_attention`) serves the cross-modal layers too.

Module and parameter names follow transformers' BridgeTower (`attention.self.query`, `crossattention.output.dense`,
`intermediate.dense`, ...), so cross-modal weights load and save in its layout without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration import BridgeTowerConfig


def attention_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, keys) 1/0 mask -> (batch, 1, 1, keys) additive fp32 mask (0 = attend, the dtype's minimum = masked),
    the form the towers hand the registered kernels; None stays None. Built once per cross-modal pass."""
    if mask is None:
        return None
    return (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min


class CrossModalSelfAttention(nn.Module):
    """Multi-head attention of `hidden_states` over `context` (itself for self-attention)."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.cross_modal_num_attention_heads
        if hidden % self.num_heads:  # checked here, not in the config: transformers' config accepts any size
            raise ValueError(
                f"hidden_size {hidden} is not divisible by cross_modal_num_attention_heads {self.num_heads}: "
                "pick a head count that divides it."
            )
        self.head_dim = hidden // self.num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout_p = config.cross_modal_attention_probs_dropout_prob
        self.config = config  # read at call time: `_attn_implementation` names the registered kernel

    def attention_function(self):
        """The registered function of `config._attn_implementation`; torch's SDPA for "sdpa", which the registry
        lacks (transformers keeps it per model; "eager" never reaches here)."""
        return ALL_ATTENTION_FUNCTIONS.get(self.config._attn_implementation) or sdpa_attention_forward

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states, context, mask, output_attentions: bool = False):
        query, key, value = (
            self._heads(self.query(hidden_states)),
            self._heads(self.key(context)),
            self._heads(self.value(context)),
        )
        dropout_p = self.dropout_p if self.training else 0.0
        probs = None
        # Explicit matmuls when the weights are asked for (SDPA does not return them) or under "eager", as the towers'
        # eager attention: under CPU bf16 autocast these stay bf16 matmuls, where SDPA with dropout falls back to
        # fp32 math (docs/reference/performance.md).
        if output_attentions or self.config._attn_implementation == "eager":
            scores = query @ key.transpose(-1, -2) / self.head_dim**0.5
            if mask is not None:
                scores = scores + mask.to(scores.dtype)
            probs = scores.softmax(dim=-1)
            out = F.dropout(probs, dropout_p, self.training) @ value
            out = out.transpose(1, 2)
        else:
            mask = None if mask is None else mask.to(query.dtype)  # SDPA wants the compute dtype (bf16 on Gaudi)
            out, _ = self.attention_function()(
                self, query, key, value, mask, dropout=dropout_p, scaling=self.head_dim**-0.5, is_causal=False
            )
        out = out.reshape(hidden_states.shape[0], hidden_states.shape[1], -1)
        return out, probs


class ResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): BERT's SelfOutput / Output."""

    def __init__(self, in_features: int, config: BridgeTowerConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.cross_modal_layer_norm_eps)
        self.dropout = nn.Dropout(config.cross_modal_hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + residual)


class CrossModalAttention(nn.Module):
    """Attention block with its residual output: `self` (q, k, v) and `output` (dense, LayerNorm)."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__()
        self.self = CrossModalSelfAttention(config)
        self.output = ResidualOutput(config.hidden_size, config)

    def forward(self, hidden_states, context, mask, output_attentions: bool = False):
        attended, probs = self.self(hidden_states, context, mask, output_attentions)
        out = self.output(attended, hidden_states)
        return (out, probs) if output_attentions else out


class Intermediate(nn.Module):
    def __init__(self, config: BridgeTowerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.cross_modal_intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class CrossModalFeedForward(nn.Module):
    """FFN block: `intermediate` then `output` (with residual), as in BERT."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__()
        self.intermediate = Intermediate(config)
        self.output = ResidualOutput(config.cross_modal_intermediate_size, config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output(self.intermediate(hidden_states), hidden_states)


class CrossModalLayer(GradientCheckpointingLayer):
    """One stream of a cross-modal layer: self-attention, cross-attention to the other modality, FFN."""

    def __init__(self, config: BridgeTowerConfig):
        super().__init__()
        self.attention = CrossModalAttention(config)
        self.crossattention = CrossModalAttention(config)
        self.intermediate = Intermediate(config)
        self.output = ResidualOutput(config.cross_modal_intermediate_size, config)

    def forward(
        self, hidden_states, other_modality, self_mask=None, other_mask=None, output_attentions=False,
        first_token_only=False,
    ):  # fmt: skip
        """`first_token_only`: the output at position 0 ([CLS]) alone, (batch, 1, hidden). Every position still
        serves as a key and value; only the queries, the FFN and the outputs shrink to one position, which is all
        a pooler reads (the last cross-modal layer of a pooled head)."""
        attentions = ()
        queries = hidden_states[:, :1] if first_token_only else hidden_states
        hidden_states = self.attention(queries, hidden_states, self_mask, output_attentions)
        if output_attentions:
            hidden_states, probs = hidden_states
            attentions += (probs,)
        hidden_states = self.crossattention(hidden_states, other_modality, other_mask, output_attentions)
        if output_attentions:
            hidden_states, probs = hidden_states
            attentions += (probs,)
        hidden_states = self.output(self.intermediate(hidden_states), hidden_states)
        return hidden_states, attentions
