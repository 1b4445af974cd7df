"""The paper's design space trains: every bridge variant, cross-modal depth and bridge count."""

import pytest
import torch

import bridgetower_gaudi as btg
from tests.conftest import make_inputs, tiny_config

NO_DROPOUT = dict(
    cross_modal_hidden_dropout_prob=0.0,
    cross_modal_attention_probs_dropout_prob=0.0,
    text_config={**btg.PRESETS["tiny"]["text_config"], "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
)


def pretraining_batch(config, batch=4, seed=0):
    inputs = make_inputs(config, batch=batch, seed=seed)
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2:4] = inputs["input_ids"][:, 2:4]
    inputs["input_ids"] = inputs["input_ids"].masked_fill(labels >= 0, 4)  # 4 stands in for <mask>
    itm_labels = torch.tensor([1, 0] * (batch // 2))
    own = torch.arange(batch)
    itm_image_index = torch.where(itm_labels.bool(), own, own.roll(1))
    return dict(inputs, labels=labels, itm_labels=itm_labels, itm_image_index=itm_image_index)


def assert_one_step_trains(config):
    model = btg.BridgeTowerForPreTraining(config).train()
    out = model(**pretraining_batch(config))
    assert torch.isfinite(out.loss) and torch.isfinite(out.mlm_loss) and torch.isfinite(out.itm_loss)
    out.loss.backward()
    without_grad = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert without_grad == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    return model, frozen


@pytest.mark.parametrize("variant", sorted(btg.BRIDGE_VARIANTS))
def test_each_bridge_variant_trains_one_step(variant):
    model, frozen = assert_one_step_trains(tiny_config(link_tower_type=variant))
    assert all(n.startswith("bridgetower.text_model.pooler.") for n in frozen)  # only the unused text pooler
    assert isinstance(model.bridgetower.cross_modal_text_link_tower[0], btg.modeling.bridges.BridgeLayer)


@pytest.mark.parametrize(("num_layers", "num_bridges"), [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)])
def test_cross_modal_depth_and_bridge_count_train_one_step(num_layers, num_bridges):
    config = tiny_config(num_hidden_layers=num_layers, num_bridges=num_bridges)
    model, _ = assert_one_step_trains(config)
    assert len(model.bridgetower.cross_modal_text_layers) == num_layers
    assert len(model.bridgetower.cross_modal_text_link_tower) == num_bridges


@pytest.mark.parametrize(
    "overrides",
    [
        dict(share_link_tower_layers=True),
        dict(share_cross_modal_transformer_layers=False),
        dict(vision_config={**btg.PRESETS["tiny"]["vision_config"], "share_layernorm": False}),
        dict(vision_config={**btg.PRESETS["tiny"]["vision_config"], "num_attention_heads": 4}),
    ],
    ids=["shared_link_towers", "per_layer_transforms", "separate_vision_layernorms", "vision_heads_from_config"],
)
def test_transformers_weak_spots_work(overrides):
    model, _ = assert_one_step_trains(tiny_config(**overrides))
    vision_attention = model.bridgetower.vision_model.encoder.layers[0].self_attn
    assert vision_attention.num_heads == model.config.vision_config.num_attention_heads


@pytest.mark.parametrize("num_bridges", [0, 1])
def test_only_the_documented_unimodal_layers_feed_the_cross_modal_encoder(num_bridges):
    """Layers below N - num_bridges never reach the cross-modal encoder; layer N - num_bridges does.
    num_bridges=0 is METER: only the last layers are fused."""
    config = tiny_config(num_hidden_layers=2, num_bridges=num_bridges)
    model = btg.BridgeTowerModel(config).eval()
    inputs = make_inputs(config)
    with torch.no_grad():
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        image = model.encode_image(inputs["pixel_values"])
        reference = model.fuse(text, image).pooler_output
        fed = num_bridges + 1

        def poison(tower, below):
            states = tuple(
                torch.full_like(h, float("nan")) if i < below else h for i, h in enumerate(tower.hidden_states)
            )
            return type(tower)(states, tower.mask)

        first_fed = len(text.hidden_states) - fed
        assert torch.equal(model.fuse(poison(text, first_fed), poison(image, first_fed)).pooler_output, reference)
        assert torch.isnan(model.fuse(poison(text, first_fed + 1), image).pooler_output).all()


def test_pixel_mask_hides_padded_patches():
    config = tiny_config()
    model = btg.BridgeTowerModel(config).eval()
    inputs = make_inputs(config)
    size = config.vision_config.image_size
    pixel_mask = torch.ones(3, size, size, dtype=torch.long)
    pixel_mask[:, :, size // 2 :] = 0  # right half is padding
    changed = inputs["pixel_values"].clone()
    changed[:, :, :, size // 2 :] = 5.0
    with torch.no_grad():
        masked_a = model(**inputs, pixel_mask=pixel_mask).pooler_output
        masked_b = model(**dict(inputs, pixel_values=changed), pixel_mask=pixel_mask).pooler_output
        unmasked_b = model(**dict(inputs, pixel_values=changed)).pooler_output
    torch.testing.assert_close(masked_a, masked_b, rtol=0, atol=1e-5)
    assert (masked_a - unmasked_b).abs().max() > 1e-2


def test_token_type_ids_reach_the_text_tower():
    config = tiny_config(text_config={**btg.PRESETS["tiny"]["text_config"], "type_vocab_size": 2})
    model = btg.BridgeTowerForMaskedLM(config).eval()
    inputs = make_inputs(config)
    types = torch.zeros_like(inputs["input_ids"])
    types[:, 5:] = 1
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits, model(**inputs, token_type_ids=types).logits)


def test_gradient_checkpointing_covers_every_layer_and_keeps_gradients():
    config = tiny_config(**NO_DROPOUT)
    batch = pretraining_batch(config)
    plain = btg.BridgeTowerForPreTraining(config).train()
    checkpointed = btg.BridgeTowerForPreTraining(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.gradient_checkpointing_enable()

    layers = [
        m for m in checkpointed.modules() if hasattr(m, "gradient_checkpointing") and type(m).__name__.endswith("Layer")
    ]
    kinds = {type(m).__name__ for m in layers}
    assert {"CrossModalLayer", "CLIPEncoderLayer", "RobertaLayer"} <= kinds
    assert all(m.gradient_checkpointing for m in layers)

    # Each checkpointed layer runs each of its forwards twice (once more in backward, recomputing what it did not
    # keep): twice as many calls as in the plain model (where the text tower runs for MLM and for ITM)
    calls = {"plain": {}, "checkpointed": {}}
    for model, counts in ((plain, calls["plain"]), (checkpointed, calls["checkpointed"])):
        for name, module in model.named_modules():
            if type(module).__name__ in kinds:
                module.register_forward_hook(
                    lambda *_, name=name, counts=counts: counts.update({name: counts.get(name, 0) + 1})
                )
    plain(**batch).loss.backward()
    checkpointed(**batch).loss.backward()
    assert calls["plain"].keys() == calls["checkpointed"].keys() and len(calls["plain"]) >= len(layers)
    assert all(calls["checkpointed"][name] == 2 * calls["plain"][name] for name in calls["plain"]), calls
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_in_batch_and_explicit_itm_images_agree():
    """itm_image_index reuses the vision tower's features; itm_pixel_values runs the tower again: same ITM logits."""
    config = tiny_config()
    model = btg.BridgeTowerForPreTraining(config).eval()
    batch = pretraining_batch(config)
    explicit = dict(batch, itm_pixel_values=batch["pixel_values"][batch["itm_image_index"]])
    del explicit["itm_image_index"]
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).itm_logits, model(**explicit).itm_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", [dict(link_tower_type="concat"), dict(num_bridges=5), dict(text_backbone="gpt2")])
def test_bad_design_choices_fail_with_a_clear_message(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        tiny_config(**bad)


def test_tiny_pretraining_model_overfits_eight_pairs():
    config = tiny_config(**NO_DROPOUT)
    model = btg.BridgeTowerForPreTraining(config).train()
    batch = pretraining_batch(config, batch=8, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(120):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]
