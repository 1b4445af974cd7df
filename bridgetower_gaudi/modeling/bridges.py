"""Bridge layers ("link towers"): merge a uni-modal layer's output into the cross-modal encoder's input.

`forward(unimodal, cross_modal, attention_mask)` follows transformers' `BridgeTowerLinkTower`: `unimodal` is y in the
paper's notation (the projected uni-modal representation), `cross_modal` is x (the previous cross-modal layer's
output). Parameter names of the variants transformers has ("add", "scaled_add", "interpolate") match its layout.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration import BridgeTowerConfig
from .layers import CrossModalAttention, CrossModalFeedForward


class BridgeLayer(nn.Module):
    def __init__(self, config: BridgeTowerConfig):
        super().__init__()
        variant = config.link_tower_type
        hidden = config.hidden_size
        self.link_tower_type = variant
        if variant == "scaled_add":
            self.scaled_factor = nn.Parameter(torch.tensor(1.0))
        elif variant == "interpolate":
            self.beta = nn.Parameter(torch.tensor(0.5))
        elif variant == "weighted_add":
            self.alpha = nn.Parameter(torch.full((hidden,), 0.5))
        elif variant in ("gated", "linear", "add_linear"):
            self.dense = nn.Linear(2 * hidden, hidden)
        elif variant == "mlp":
            self.dense1 = nn.Linear(2 * hidden, 2 * hidden)
            self.activation = nn.GELU()
            self.dense2 = nn.Linear(2 * hidden, hidden)
        if variant in ("cross_attention", "cross_attention_ffn"):
            self.attention = CrossModalAttention(config)
            if variant == "cross_attention_ffn":
                self.feed_forward = CrossModalFeedForward(config)
        else:
            self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, unimodal: torch.Tensor, cross_modal: torch.Tensor, attention_mask: torch.Tensor | None):
        x, y = cross_modal, unimodal
        variant = self.link_tower_type
        if variant in ("cross_attention", "cross_attention_ffn"):
            merged = self.attention(x, y, attention_mask)
            return self.feed_forward(merged) if variant == "cross_attention_ffn" else merged
        if variant == "add":
            merged = x + y
        elif variant == "multiply":
            merged = x * y
        elif variant == "weighted_add":
            merged = self.alpha * x + (1 - self.alpha) * y
        elif variant == "gated":
            alpha = torch.sigmoid(self.dense(torch.cat([x, y], dim=-1)))
            merged = alpha * x + (1 - alpha) * y
        elif variant == "linear":
            merged = self.dense(torch.cat([x, y], dim=-1))
        elif variant == "mlp":
            merged = self.dense2(self.activation(self.dense1(torch.cat([x, y], dim=-1))))
        elif variant == "add_linear":
            merged = x + y + self.dense(torch.cat([x, y], dim=-1))
        elif variant == "scaled_add":
            merged = y * self.scaled_factor + x
        elif variant == "interpolate":
            merged = y * (1 - self.beta) + x * self.beta
        else:  # the config validates variants; this guards against a stale config object
            raise ValueError(f"unknown link_tower_type {variant!r}")
        return self.LayerNorm(merged)
