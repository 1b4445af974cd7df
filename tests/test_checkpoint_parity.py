"""transformers' BridgeTower checkpoints load here with identical outputs, and ours load back in transformers."""

import pytest
import torch
import transformers

import bridgetower_gaudi as btg
from tests.conftest import TRANSFORMERS_EPS, make_inputs, tiny_config, tiny_hf_config

HEADS = ["BridgeTowerForMaskedLM", "BridgeTowerForImageAndTextRetrieval", "BridgeTowerForContrastiveLearning"]
TOLERANCE = 1e-4


def _logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("link_tower_type", ["add", "scaled_add", "interpolate"])
def test_transformers_checkpoint_loads_with_same_logits(tmp_path, head, link_tower_type):
    reference = getattr(transformers, head)(tiny_hf_config(link_tower_type=link_tower_type))
    reference.save_pretrained(tmp_path / "hf")

    ours, info = getattr(btg, head).from_pretrained(tmp_path / "hf", output_loading_info=True)

    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    inputs = make_inputs(ours.config)
    assert (_logits(ours, inputs) - _logits(reference, inputs)).abs().max() <= TOLERANCE


@pytest.mark.parametrize("head", HEADS)
def test_our_checkpoint_loads_in_transformers_with_same_logits(tmp_path, head):
    ours = getattr(btg, head)(tiny_config(**TRANSFORMERS_EPS))
    ours.save_pretrained(tmp_path / "ours")

    reference, info = getattr(transformers, head).from_pretrained(tmp_path / "ours", output_loading_info=True)

    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    inputs = make_inputs(ours.config, seed=1)
    assert (_logits(ours, inputs) - _logits(reference, inputs)).abs().max() <= TOLERANCE


def test_round_trip_through_transformers_keeps_every_weight(tmp_path):
    ours = btg.BridgeTowerForMaskedLM(tiny_config())
    ours.save_pretrained(tmp_path / "a")
    transformers.BridgeTowerForMaskedLM.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    back = btg.BridgeTowerForMaskedLM.from_pretrained(tmp_path / "b")
    for (name, mine), (_, theirs) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(mine, theirs), name


def test_pixel_mask_and_token_type_ids_defaults_keep_parity(tmp_path):
    reference = transformers.BridgeTowerForImageAndTextRetrieval(tiny_hf_config())
    reference.save_pretrained(tmp_path)
    ours = btg.BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path)
    inputs = make_inputs(ours.config)
    size = ours.config.vision_config.image_size
    full = dict(
        inputs,
        pixel_mask=torch.ones(3, size, size, dtype=torch.long),
        token_type_ids=torch.zeros_like(inputs["input_ids"]),
    )
    assert (_logits(ours, full) - _logits(reference, inputs)).abs().max() <= TOLERANCE


UNREPRESENTABLE = [
    dict(link_tower_type="gated"),
    dict(share_link_tower_layers=True),
    dict(share_cross_modal_transformer_layers=False),
    dict(num_bridges=0),
    dict(vision_config={**tiny_config().vision_config.to_dict(), "share_layernorm": False}),
]


@pytest.mark.parametrize("overrides", UNREPRESENTABLE, ids=lambda o: next(iter(o)))
def test_unrepresentable_configs_save_in_our_layout_and_refuse_export(tmp_path, overrides):
    model = btg.BridgeTowerForMaskedLM(tiny_config(**overrides))
    with pytest.raises(ValueError, match="cannot be exported to transformers"):
        model.save_pretrained(tmp_path / "export", export_to_transformers=True)
    assert not (tmp_path / "export" / "model.safetensors").exists()

    model.save_pretrained(tmp_path / "ours")
    reloaded, info = btg.BridgeTowerForMaskedLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert reloaded.config.checkpoint_layout == "bridgetower_gaudi"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    inputs = make_inputs(model.config)
    assert torch.equal(_logits(model, inputs), _logits(reloaded, inputs))


def test_official_epsilons_export_with_a_warning_and_reload_exactly(tmp_path, caplog):
    ours = btg.BridgeTowerForMaskedLM(tiny_config())  # cross-modal / MLM-transform LayerNorm eps 1e-12
    ours.save_pretrained(tmp_path)
    assert "transformers will load it but compute with cross-modal LayerNorm eps 1e-12" in caplog.text

    reference = transformers.BridgeTowerForMaskedLM.from_pretrained(tmp_path)
    back = btg.BridgeTowerForMaskedLM.from_pretrained(tmp_path)
    inputs = make_inputs(ours.config, seed=1)
    assert torch.equal(_logits(ours, inputs), _logits(back, inputs))
    assert 0 < (_logits(ours, inputs) - _logits(reference, inputs)).abs().max() < 1e-2


def test_saving_does_not_change_the_in_memory_config(tmp_path):
    model = btg.BridgeTowerForMaskedLM(tiny_config(num_bridges=0))
    model.save_pretrained(tmp_path)
    assert model.config.checkpoint_layout == "transformers"
