"""Named model shapes used by tests, benchmarks and the default run alike."""

from __future__ import annotations

from .configuration import BridgeTowerConfig

PRESETS = {
    # A few-MB model that trains in minutes on 2 CPU cores (vision hidden is a multiple of 64, as transformers needs).
    # No dropout: at this size it only slows learning.
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        cross_modal_hidden_dropout_prob=0.0,
        cross_modal_attention_probs_dropout_prob=0.0,
        text_config=dict(
            vocab_size=1000,
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        vision_config=dict(hidden_size=64, num_hidden_layers=3, patch_size=8, image_size=32),
    ),
    # The paper's BridgeTower-base (CLIP-ViT-B/16 at 288, RoBERTa-base, 6 cross-modal layers): 323M parameters.
    "base": dict(),
    # BridgeTower-large (CLIP-ViT-L/14 at 294, RoBERTa-large, 6 cross-modal layers of 1024).
    "large": dict(
        hidden_size=1024,
        num_attention_heads=16,
        text_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
        vision_config=dict(hidden_size=1024, num_hidden_layers=24, patch_size=14, image_size=294),
    ),
}


def preset_config(name: str, **overrides) -> BridgeTowerConfig:
    """The config of preset `name` ("tiny", "base", "large"), with top-level fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    fields = {**PRESETS[name], **overrides}
    return BridgeTowerConfig(**fields)
