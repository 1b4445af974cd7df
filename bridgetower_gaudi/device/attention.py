"""Attention kernels for the towers through transformers' attention-function registry.

CLIP (transformers 4.55) already calls `ALL_ATTENTION_FUNCTIONS[config._attn_implementation]` with its own scale.
BERT and RoBERTa in 4.55 still pick a self-attention class per implementation name (eager / sdpa) instead of using
the registry, so `register_tower_attention` also adds, for that name, a self-attention class that calls the
registered function with the 1/sqrt(head_dim) scale. Device-free: `device.gaudi` registers Habana's fused SDPA as
`gaudi_fused_sdpa`; the tests register a recording wrapper around torch's SDPA.
"""

from __future__ import annotations

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert import modeling_bert
from transformers.models.roberta import modeling_roberta


class RegistrySelfAttention:
    """Encoder self-attention through `ALL_ATTENTION_FUNCTIONS[attention_name]`; mixed into transformers' SDPA
    self-attention classes, whose own forward (eager fallback) still serves what the towers never use here
    (cross-attention, caches, head masks, attention weights, relative positions)."""

    attention_name: str = ""

    def forward(self, hidden_states, attention_mask=None, head_mask=None, encoder_hidden_states=None,
                past_key_value=None, output_attentions=False, cache_position=None):  # fmt: skip
        if (
            encoder_hidden_states is not None
            or past_key_value is not None
            or output_attentions
            or head_mask is not None
            or self.position_embedding_type != "absolute"
        ):
            return super().forward(
                hidden_states, attention_mask, head_mask, encoder_hidden_states, past_key_value, output_attentions,
                cache_position,
            )  # fmt: skip
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_attention_heads, self.attention_head_size)
        query, key, value = (
            proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.query, self.key, self.value)
        )
        if attention_mask is not None and torch.is_floating_point(attention_mask):
            attention_mask = attention_mask.to(query.dtype)  # additive mask in the autocast dtype (bf16 on Gaudi)
        output, _ = ALL_ATTENTION_FUNCTIONS[self.attention_name](
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout_prob if self.training else 0.0,
            scaling=self.attention_head_size**-0.5,
            is_causal=False,
        )
        return output.reshape(batch, length, self.all_head_size), None


def register_tower_attention(name: str, function) -> None:
    """Make `attn_implementation=name` work for every tower: CLIP through the registry, BERT / RoBERTa through a
    self-attention class that calls it. `function` has the registry's signature (module, q, k, v, mask, dropout=,
    scaling=, is_causal=) and returns ((batch, length, heads, head_dim) output, weights)."""
    ALL_ATTENTION_FUNCTIONS.register(name, function)
    for table, base in (
        (modeling_roberta.ROBERTA_SELF_ATTENTION_CLASSES, modeling_roberta.RobertaSdpaSelfAttention),
        (modeling_bert.BERT_SELF_ATTENTION_CLASSES, modeling_bert.BertSdpaSelfAttention),
    ):
        table[name] = type(f"{base.__name__}Registry", (RegistrySelfAttention, base), {"attention_name": name})
