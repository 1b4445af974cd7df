"""ViT and DeiT vision towers (the paper's Table 4): built from tiny random checkpoints written here (no downloads),
the towers reproduce the source models exactly, and a BridgeTower on them saves and loads back unchanged."""

import pytest
import torch
import transformers
from transformers import DeiTConfig, DeiTModel, RobertaConfig, RobertaModel, ViTConfig, ViTModel

import bridgetower_gaudi as btg

VISION = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
)
TEXT = dict(
    vocab_size=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
    max_position_embeddings=40,
)  # fmt: skip
SOURCES = {"vit": (ViTModel, ViTConfig), "deit": (DeiTModel, DeiTConfig)}


@pytest.fixture(params=sorted(SOURCES))
def vision_dir(tmp_path, request):
    model_cls, config_cls = SOURCES[request.param]
    torch.manual_seed(0)
    model_cls(config_cls(**VISION)).save_pretrained(tmp_path / request.param)  # with its pooler, as released
    return tmp_path / request.param


@pytest.fixture
def text_dir(tmp_path):
    RobertaModel(RobertaConfig(**TEXT)).save_pretrained(tmp_path / "roberta")
    return tmp_path / "roberta"


def _batch(image_size=32):
    torch.manual_seed(1)
    input_ids = torch.randint(5, 300, (2, 9))
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                pixel_values=torch.randn(2, 3, image_size, image_size))  # fmt: skip


def test_vision_tower_equals_the_source_model(vision_dir, text_dir):
    model = btg.BridgeTowerForPreTraining.from_backbones(vision_dir, text_dir, image_size=32, num_hidden_layers=2)
    model.eval()
    source = transformers.AutoModel.from_pretrained(vision_dir).eval()
    pixel_values = _batch()["pixel_values"]
    with torch.no_grad():
        ours = model.bridgetower.encode_image(pixel_values).hidden_states
        ref = source(pixel_values, output_hidden_states=True).hidden_states
    assert model.config.vision_backbone == vision_dir.name
    assert type(model.bridgetower.vision_model).__name__ == type(source).__name__
    prefix = 2 if vision_dir.name == "deit" else 1  # DeiT: [CLS] and the distillation token
    assert ours[-1].shape == (2, prefix + 16, 64)
    assert len(ours) == len(ref) == 4
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
    # The fed states go through the tower's own final LayerNorm, as CLIP's through ln_post.
    assert model.bridgetower.vision_final_layernorm is model.bridgetower.vision_model.layernorm
    assert torch.equal(model.bridgetower.vision_final_layernorm.weight, source.layernorm.weight)


def test_save_load_round_trip_keeps_outputs(vision_dir, text_dir, tmp_path):
    model = btg.BridgeTowerForPreTraining.from_backbones(vision_dir, text_dir, image_size=32, num_hidden_layers=2)
    model.eval()
    batch = _batch()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 3] = batch["input_ids"][:, 3]
    batch.update(labels=labels, itm_labels=torch.tensor([1, 0]))
    with torch.no_grad():
        before = model(**batch)
    model.save_pretrained(tmp_path / "saved")
    again = btg.BridgeTowerForPreTraining.from_pretrained(tmp_path / "saved").eval()
    assert again.config.vision_backbone == vision_dir.name
    assert again.config.checkpoint_layout == "bridgetower_gaudi"  # transformers' BridgeTower has a CLIP tower
    with torch.no_grad():
        after = again(**batch)
    assert before.mlm_logits is not None and before.itm_logits is not None
    assert torch.equal(before.mlm_logits, after.mlm_logits)
    assert torch.equal(before.itm_logits, after.itm_logits)
    assert torch.equal(before.loss, after.loss)
    with pytest.raises(ValueError, match="vision_backbone"):
        model.save_pretrained(tmp_path / "export", export_to_transformers=True)


def test_fresh_tower_trains_and_takes_another_image_size(vision_dir, text_dir):
    config = btg.preset_config("tiny", vision_backbone=vision_dir.name)
    model = btg.BridgeTowerForPreTraining(config).train()
    embeddings = model.bridgetower.vision_model.embeddings
    # Every fresh weight uses the official std 0.02 (ViT's own init would draw [CLS] from N(0, 1) without it).
    assert embeddings.position_embeddings.std().item() < 0.05 and embeddings.cls_token.abs().max().item() < 0.2
    out = model(**_batch(), itm_labels=torch.tensor([1, 0]))
    out.loss.backward()
    assert embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0

    from bridgetower_gaudi.modeling.backbones import set_image_size

    model = btg.BridgeTowerForPreTraining.from_backbones(vision_dir, text_dir, image_size=32, num_hidden_layers=2)
    set_image_size(model, 48)
    assert model.config.vision_config.image_size == 48
    prefix = 2 if vision_dir.name == "deit" else 1
    assert model.bridgetower.vision_model.embeddings.position_embeddings.shape == (1, prefix + 36, 64)
    with torch.no_grad():
        assert model.bridgetower.encode_image(torch.randn(1, 3, 48, 48)).hidden_states[-1].shape == (1, prefix + 36, 64)


def test_padded_pixel_mask_and_unknown_checkpoints_are_refused(vision_dir, text_dir):
    model = btg.BridgeTowerModel.from_backbones(vision_dir, text_dir, image_size=32, num_hidden_layers=2)
    pixel_mask = torch.ones(2, 32, 32, dtype=torch.long)
    model.encode_image(torch.randn(2, 3, 32, 32), pixel_mask)  # no padding: fine
    pixel_mask[0, :, 16:] = 0
    with pytest.raises(ValueError, match="CLIP vision tower"):
        model.encode_image(torch.randn(2, 3, 32, 32), pixel_mask)
    with pytest.raises(ValueError, match="vision tower must be one of"):
        btg.BridgeTowerModel.from_backbones(text_dir, text_dir)
    with pytest.raises(ValueError, match="vision_backbone"):
        btg.BridgeTowerConfig(vision_backbone="resnet")
