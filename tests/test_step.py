"""The pre-training step (issue 19): one vision pass per image with the official step's loss and gradients, the MLM
decoder at masked positions only, no host reads in model forwards, cross-modal attention through the registry."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

import bridgetower_gaudi as btg
from bridgetower_gaudi.data import DataArguments, PretrainingCollator, build_dataset, synthetic_tokenizer
from bridgetower_gaudi.device.attention import register_tower_attention
from bridgetower_gaudi.device.host_syncs import HostSyncCounter
from bridgetower_gaudi.modeling.layers import CrossModalSelfAttention
from bridgetower_gaudi.modeling.modeling_bridgetower import mlm_decoder_capacity
from bridgetower_gaudi.tasks.pretrain import CappedMasking, PretrainingMetrics
from tests.conftest import make_inputs, tiny_config, without_last_cross_modal_dropout

DROPOUT = dict(
    cross_modal_hidden_dropout_prob=0.1,
    cross_modal_attention_probs_dropout_prob=0.1,
    text_config=dict(
        vocab_size=1000, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    ),
)  # fmt: skip


def pretraining_batch(itm_negatives: str, size: int = 8) -> dict:
    tokenizer = synthetic_tokenizer()
    data = DataArguments(synthetic_train_size=size, max_seq_length=16, itm_negatives=itm_negatives)
    dataset = build_dataset(data, tokenizer, 32)
    collator = PretrainingCollator(tokenizer, itm_negatives=itm_negatives, seed=1)
    return collator([dataset[i] for i in range(size)])


def official_two_passes(model, batch: dict) -> torch.Tensor:
    """The official step written out: two full BridgeTowerModel passes, every ITM image through the vision tower
    again, the MLM decoder over every position. ITM first, then MLM: the order our step runs them in (see
    BridgeTowerForPreTraining.forward), so both draw the same dropout masks."""
    bridgetower, labels = model.bridgetower, batch["labels"]
    clean_ids = torch.where(labels >= 0, labels, batch["input_ids"])
    pool = torch.cat([batch["pixel_values"], batch.get("itm_pixel_values", batch["pixel_values"][:0])])
    itm_images = pool[batch["itm_image_index"]]
    itm = bridgetower(clean_ids, batch["attention_mask"], pixel_values=itm_images)
    itm_loss = F.cross_entropy(model.itm_score(itm.pooler_output), batch["itm_labels"])
    mlm = bridgetower(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"])
    logits = model.mlm_score(mlm.text_features)
    mlm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    return mlm_loss + itm_loss


def loss_and_gradients(model, step, seed: int = 7):
    model.zero_grad()
    torch.manual_seed(seed)
    loss = step()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("itm_negatives", ["dataset", "in_batch"])
def test_one_vision_pass_gives_the_official_two_pass_loss_and_gradients(itm_negatives):
    """fp32, dropout on (but in the last cross-modal layer: `without_last_cross_modal_dropout`), same batch,
    negatives and seed: the same loss, every gradient within 1e-5 of its norm."""
    batch = pretraining_batch(itm_negatives)
    if itm_negatives == "dataset":  # only the data-set negatives are sent (and encoded) a second time
        assert len(batch["itm_pixel_values"]) == int((batch["itm_labels"] == 0).sum())
    else:
        assert "itm_pixel_values" not in batch
    model = btg.BridgeTowerForPreTraining(tiny_config(**DROPOUT)).train()
    without_last_cross_modal_dropout(model)
    ours_loss, ours = loss_and_gradients(model, lambda: model(**batch).loss)
    official_loss, official = loss_and_gradients(model, lambda: official_two_passes(model, batch))
    other_seed_loss, _ = loss_and_gradients(model, lambda: model(**batch).loss, seed=8)
    assert not torch.allclose(other_seed_loss, official_loss)  # dropout is on: the seed matters
    torch.testing.assert_close(ours_loss, official_loss, rtol=1e-6, atol=1e-6)
    assert ours.keys() == official.keys()
    for name, expected in official.items():
        difference = (ours[name] - expected).abs().max().item()
        if name.endswith(("key.bias", "k_proj.bias")):  # softmax is shift-invariant: exactly 0 in exact arithmetic
            assert difference < 1e-6 and expected.abs().max().item() < 1e-6, name
        else:
            assert difference <= 1e-5 * expected.norm().item(), (name, difference, expected.norm().item())


def test_the_mlm_pass_skips_the_last_image_layer_and_the_poolers():
    model = btg.BridgeTowerForPreTraining(tiny_config(pretraining_objectives=["mlm"])).eval()
    bridgetower = model.bridgetower
    calls = []
    for module in (bridgetower.cross_modal_image_layers[-1], bridgetower.cross_modal_text_pooler,
                   bridgetower.cross_modal_image_pooler, bridgetower.cross_modal_image_layers[0]):  # fmt: skip
        module.register_forward_hook(lambda m, *_: calls.append(m))
    inputs = make_inputs(model.config, batch=4)
    labels = torch.where(torch.rand(inputs["input_ids"].shape) < 0.3, inputs["input_ids"], -100)
    with torch.no_grad():
        model(**inputs, labels=labels)
    assert calls == [bridgetower.cross_modal_image_layers[0]]  # the first image layer feeds the text stream


def test_the_mlm_decoder_at_masked_positions_gives_the_full_loss_and_metrics():
    model = btg.BridgeTowerForPreTraining(tiny_config()).eval()
    inputs = make_inputs(model.config, batch=4, seq=16)
    labels = torch.where(torch.rand(inputs["input_ids"].shape) < 0.15, inputs["input_ids"], -100)
    labels[0, 1] = inputs["input_ids"][0, 1]
    with torch.no_grad():
        out = model(**inputs, labels=labels)
        full = model.mlm_score(
            model.bridgetower(inputs["input_ids"], inputs["attention_mask"], pixel_values=inputs["pixel_values"])
            .text_features
        )  # fmt: skip
    capacity = mlm_decoder_capacity(labels.numel(), 0.15)
    assert out.mlm_logits.shape == (capacity, 1000) and capacity < labels.numel()
    assert int(out.mlm_tokens_over_cap) == 0
    full_loss = F.cross_entropy(full.reshape(-1, 1000), labels.reshape(-1))
    torch.testing.assert_close(out.mlm_loss, full_loss, rtol=1e-6, atol=1e-6)
    # evaluation: predictions at every masked position equal the full decoder's
    metrics = PretrainingMetrics(["mlm"])
    outputs = (out.mlm_loss, out.mlm_logits, out.mlm_positions, out.mlm_tokens_over_cap)
    _, predictions = metrics.preprocess(outputs, labels)
    masked = labels != -100
    assert torch.equal(predictions[masked], full.argmax(-1)[masked])


def test_masked_tokens_above_the_capacity_are_counted_by_the_model_and_unmasked_by_the_collator(caplog):
    assert mlm_decoder_capacity(3200, 0.15) < 3200 * 0.2 and mlm_decoder_capacity(10, 0.15) == 10
    model = btg.BridgeTowerForPreTraining(tiny_config(pretraining_objectives=["mlm"], mlm_probability=0.01)).eval()
    inputs = make_inputs(model.config, batch=4, seq=16, pad_from=None)
    labels = inputs["input_ids"].clone()  # every token masked: 64 > the capacity for a 1% share
    capacity = mlm_decoder_capacity(64, 0.01)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    assert int(out.mlm_tokens_over_cap) == 64 - capacity

    batch = pretraining_batch("in_batch")
    real = batch["attention_mask"].bool()
    batch["labels"] = torch.where(real, batch["input_ids"], -100)  # a collator that masked every real token
    batch["input_ids"] = torch.where(real, synthetic_tokenizer().mask_token_id, batch["input_ids"])
    capped = CappedMasking(lambda examples: {k: v.clone() for k, v in batch.items()}, 0.001)
    with caplog.at_level(logging.WARNING):
        sent = capped([])
    capacity = mlm_decoder_capacity(batch["labels"].numel(), 0.001)
    masked = int((batch["labels"] != -100).sum())
    assert masked > capacity and int((sent["labels"] != -100).sum()) == capacity
    unmasked = (batch["labels"] != -100) & (sent["labels"] == -100)
    assert torch.equal(sent["input_ids"][unmasked], batch["labels"][unmasked])  # the original ids are back
    assert f"{masked - capacity} tokens unmasked" in caplog.text


def _pooled_heads():
    """(name, model, inputs) for every head that reads only the pooled output."""
    config = tiny_config()
    inputs = make_inputs(config, batch=4)
    yield "itm", btg.BridgeTowerForImageAndTextRetrieval(config), inputs
    yield "vqa", btg.BridgeTowerForVisualQuestionAnswering(tiny_config(num_labels=5)), inputs
    yield "snli_ve", btg.BridgeTowerForVisualEntailment(tiny_config(num_labels=3)), inputs
    nlvr2 = btg.BridgeTowerForNLVR2(tiny_config(num_image_token_types=2, num_labels=2))
    yield "nlvr2", nlvr2, dict(inputs, pixel_values_2=inputs["pixel_values"].flip(0))
    yield "contrastive", btg.BridgeTowerForContrastiveLearning(config), inputs


@pytest.mark.parametrize(
    ("name", "model", "inputs"), list(_pooled_heads()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_pooled_heads_run_the_last_cross_modal_layer_at_cls_only_with_the_full_layers_output(name, model, inputs):
    """Asking for hidden states runs the last layer at every position (they are returned): the reference."""
    model.eval()
    query_rows = []
    for layer in (model.bridgetower.cross_modal_text_layers[-1], model.bridgetower.cross_modal_image_layers[-1]):
        layer.intermediate.register_forward_hook(lambda module, args, out: query_rows.append(args[0].shape[1]))
    with torch.no_grad():
        pooled = model(**inputs)
        passes = len(query_rows)
        full = model(**inputs, output_hidden_states=True)
    # NLVR2 returns the first image's states: its second image's pass stays pooled-only
    assert set(query_rows[:passes]) == {1} and max(query_rows[passes:]) > 1, query_rows
    for key in ("logits", "cross_embeds"):
        if key in full:
            torch.testing.assert_close(pooled[key], full[key], rtol=1e-5, atol=1e-6)


def test_the_itm_pass_runs_the_last_cross_modal_layer_at_cls_only():
    model = btg.BridgeTowerForPreTraining(tiny_config()).eval()
    batch = pretraining_batch("dataset")
    query_rows = []
    model.bridgetower.cross_modal_image_layers[-1].intermediate.register_forward_hook(
        lambda module, args, out: query_rows.append(args[0].shape[1])
    )
    with torch.no_grad():
        itm_logits = model(**batch).itm_logits
        clean_ids = torch.where(batch["labels"] >= 0, batch["labels"], batch["input_ids"])
        pool = torch.cat([batch["pixel_values"], batch["itm_pixel_values"]])[batch["itm_image_index"]]
        full = model.itm_score(model.bridgetower(clean_ids, batch["attention_mask"], pixel_values=pool).pooler_output)
    assert query_rows == [1, 1 + (32 // model.config.vision_config.patch_size) ** 2]  # ours, then the reference
    torch.testing.assert_close(itm_logits, full, rtol=1e-5, atol=1e-6)


def test_fuse_refuses_two_exclusive_skips():
    model = btg.BridgeTowerModel(tiny_config())
    inputs = make_inputs(model.config)
    text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    image = model.encode_image(inputs["pixel_values"])
    with pytest.raises(ValueError, match="text_features_only and pooled_only exclude each other"):
        model.fuse(text, image, text_features_only=True, pooled_only=True)


# --- no host reads in model forwards: an HPU graph captures them once and a device never waits ------------------
def _forwards():
    config = tiny_config()
    inputs = make_inputs(config, batch=4)
    inputs["pixel_mask"] = torch.ones(4, 32, 32, dtype=torch.long)
    labels = torch.where(torch.rand(inputs["input_ids"].shape) < 0.3, inputs["input_ids"], -100)
    pretraining = btg.BridgeTowerForPreTraining(tiny_config(pretraining_objectives=["mlm", "itm", "itc"])).train()
    batch = pretraining_batch("dataset")
    contrastive = btg.BridgeTowerForContrastiveLearning(config)
    nlvr2 = btg.BridgeTowerForNLVR2(tiny_config(num_image_token_types=2, num_labels=2))
    yield "pretraining, data-set negatives", lambda: btg.BridgeTowerForPreTraining(config).train()(**batch).loss
    itc_hard = dict(inputs, labels=labels, itm_negative_mask=~torch.eye(4, dtype=torch.bool))
    yield "pretraining, itc_hard", lambda: pretraining(**itc_hard).loss
    in_batch = dict(
        inputs, labels=labels, itm_labels=torch.tensor([1, 0, 1, 0]), itm_image_index=torch.tensor([0, 2, 2, 0])
    )
    yield "pretraining, in_batch", lambda: btg.BridgeTowerForPreTraining(config)(**in_batch).loss
    yield "vqa", lambda: btg.BridgeTowerForVisualQuestionAnswering(tiny_config(num_labels=5))(
        **inputs, labels=torch.rand(4, 5)).loss  # fmt: skip
    yield "snli_ve", lambda: btg.BridgeTowerForVisualEntailment(tiny_config(num_labels=3))(
        **inputs, labels=torch.tensor([0, 1, 2, 0])).loss  # fmt: skip
    yield (
        "nlvr2",
        lambda: nlvr2(**inputs, pixel_values_2=inputs["pixel_values"], labels=torch.tensor([0, 1, 1, 0])).loss,
    )
    yield (
        "itm",
        lambda: btg.BridgeTowerForImageAndTextRetrieval(config)(**inputs, labels=torch.tensor([0, 1, 1, 0])).loss,
    )
    yield "mlm", lambda: btg.BridgeTowerForMaskedLM(config)(**inputs, labels=labels).loss
    yield "contrastive", lambda: contrastive(**inputs, return_loss=True).loss
    tower_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    yield "text tower", lambda: contrastive.get_text_features(**tower_inputs).sum()
    yield "image tower", lambda: contrastive.get_image_features(inputs["pixel_values"], inputs["pixel_mask"]).sum()
    text = pretraining.bridgetower.encode_text(**tower_inputs)
    image = pretraining.bridgetower.encode_image(inputs["pixel_values"])
    yield (
        "itc embeddings",
        lambda: pretraining.itc_text_embeddings(text).sum() + pretraining.itc_image_embeddings(image).sum(),
    )


@pytest.mark.parametrize(("name", "forward"), list(_forwards()), ids=lambda x: x if isinstance(x, str) else "")
def test_model_forwards_and_backwards_read_nothing_on_the_host(name, forward):
    with HostSyncCounter(record_stacks=True) as counter:
        loss = forward()
        if loss.requires_grad:
            loss.backward()
    assert counter.total_ops > 100 and counter.syncs == 0, counter.report()


def test_the_text_towers_mask_padding_as_transformers_does():
    """Our (batch, 1, keys) mask gives what transformers' own 2-D mask path gives, padded rows included."""
    for backbone in ("roberta", "bert"):
        model = btg.BridgeTowerModel(tiny_config(text_backbone=backbone)).eval()
        inputs = make_inputs(model.config, batch=3, pad_from=5)
        with torch.no_grad():
            ours = model.encode_text(inputs["input_ids"], inputs["attention_mask"]).hidden_states[-1]
            theirs = model.text_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        torch.testing.assert_close(ours, theirs.last_hidden_state, rtol=1e-5, atol=1e-5)


# --- cross-modal attention through the registry ----------------------------------------------------------------
def test_the_registered_attention_function_serves_the_cross_modal_layers():
    calls = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        calls.append((type(module), kwargs["scaling"], attention_mask is not None))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    register_tower_attention("test_cross_modal_recording", recording)
    reference = btg.BridgeTowerModel(tiny_config()).eval()
    registered = btg.BridgeTowerModel(tiny_config(attn_implementation="test_cross_modal_recording")).eval()
    registered.load_state_dict(reference.state_dict())
    inputs = make_inputs(reference.config)
    with torch.no_grad():
        expected, got = reference(**inputs), registered(**inputs)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, rtol=1e-5, atol=1e-5)
    cross_modal = [c for c in calls if c[0] is CrossModalSelfAttention]
    # each of the L layers: self- and cross-attention, in the text and the image stream
    assert len(cross_modal) == 4 * reference.config.num_hidden_layers
    head_dim = reference.config.hidden_size // reference.config.cross_modal_num_attention_heads
    assert all(scale == pytest.approx(head_dim**-0.5) for _, scale, _ in cross_modal)
    assert any(masked for _, _, masked in cross_modal)  # the caption padding reaches the kernel
