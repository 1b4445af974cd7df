"""Fine-tuning: every task of `run_finetune.py` trains and its held-out metric moves the right way on the synthetic
stand-ins, the paper's recipe is the default and a user's flag always wins, heads save / load and take the head
learning rate, NLVR2 grows its second image type, resolutions change, and a transformers checkpoint fine-tunes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import transformers

import bridgetower_gaudi as btg
from bridgetower_gaudi.data.synthetic import ATTRIBUTE_WORDS, synthetic_tokenizer
from bridgetower_gaudi.modeling.backbones import set_image_size
from bridgetower_gaudi.modeling.checkpoint_conversion import from_transformers_layout
from bridgetower_gaudi.tasks import FINETUNING_TASKS, get_task
from bridgetower_gaudi.training import finetune, run
from bridgetower_gaudi.training.optimization import parameter_groups
from tests.conftest import make_inputs, tiny_config, tiny_hf_config, without_last_cross_modal_dropout

# The synthetic tasks hinge on colours, which RandAugment's colour operations (the recipes' blip_randaug_*)
# scramble: the tests train with the plain fine-tuning transform (SNLI-VE 0.62 -> 0.62 with RandAugment, 0.89 without).
SHORT = ["--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--max_seq_length", "16",
         "--report_to", "none", "--dataloader_num_workers", "0", "--save_strategy", "no", "--seed", "0",
         "--learning_rate", "5e-4", "--head_lr_multiplier", "5", "--warmup_ratio", "0.1",
         "--image_transform", "blip"]  # fmt: skip


def _finetune(task: str, output_dir, steps: int, *flags: str, train: bool = True) -> dict:
    sizes = ["--synthetic_train_size", str(max(64, 32 * steps)), "--synthetic_eval_size", "256"]
    todo = ["--do_train", "--max_steps", str(steps)] if train else []
    return finetune.main(["--task", task, *todo, "--do_eval", *SHORT, *sizes, "--output_dir", str(output_dir), *flags])


# Measured from the session's pre-trained checkpoint (seed 0, one thread): VQA score 0.05 -> 0.77 (2026-12-02;
# earlier 0.08 -> 0.47), SNLI-VE accuracy
# 0.62 -> 0.89 (a random head on pre-trained ITM features already splits matching from mismatching colours), NLVR2
# 0.57 -> 0.73, retrieval RSUM 71 -> 264 (ITC alone 26 -> 147, its heads start random). Chance: VQA ~0.25 knowing
# the question type, SNLI-VE 0.33, NLVR2 0.5.
@pytest.mark.slow
@pytest.mark.parametrize(
    "task, steps, metric, gain, trained_above",
    [
        ("vqa", 300, "eval_vqa_score", 0.2, 0.7),
        ("snli_ve", 300, "eval_accuracy", 0.15, 0.8),
        ("nlvr2", 300, "eval_accuracy", 0.1, 0.65),
        ("retrieval", 150, "eval_itc_rsum", 60, 100),
    ],
)
def test_each_task_learns_from_a_pretrained_checkpoint(
    tmp_path, pretrained_checkpoint, task_tokenizer, task, steps, metric, gain, trained_above
):
    # The tasks' questions / statements use words pre-training never saw: the tokenizer adds them, the model grows.
    start = ["--model_name_or_path", pretrained_checkpoint, "--tokenizer_name", task_tokenizer, "--retrieval_k", "16"]
    start = start if task == "retrieval" else start[:-2]
    before = _finetune(task, tmp_path / "before", 0, *start, train=False)
    after = _finetune(task, tmp_path / "after", steps, *start)
    assert after[metric] > max(trained_above, before[metric] + gain), (before[metric], after[metric])
    saved = json.loads((tmp_path / "after" / "all_results.json").read_text())
    assert saved[metric] == after[metric] and "train_samples_per_second" in saved
    if task == "retrieval":  # ITM re-ranking of the ITC top 16 on top
        assert after["eval_rsum"] > after["eval_itc_rsum"] and after["eval_num_captions"] == 256


def test_vqa_predict_writes_the_official_submission_file(tmp_path):
    flags = ["--task", "vqa", "--config_name", "tiny", "--do_train", "--max_steps", "2", "--do_predict", *SHORT,
             "--synthetic_train_size", "64", "--synthetic_eval_size", "70", "--output_dir", str(tmp_path)]  # fmt: skip
    results = finetune.main(flags)
    submission = json.loads((tmp_path / "vqa_submission.json").read_text())
    assert results["predict_questions"] == len(submission) == 70  # every question, though batches hold 64
    assert sorted(item["question_id"] for item in submission) == list(range(70))
    assert all(isinstance(item["question_id"], int) and item["answer"] in ATTRIBUTE_WORDS for item in submission)
    config = btg.BridgeTowerConfig.from_pretrained(tmp_path)
    assert [config.id2label[i] for i in range(config.num_labels)] == sorted(ATTRIBUTE_WORDS)  # the vocabulary


def test_paper_recipe_is_the_default_and_user_flags_win(tmp_path):
    task = get_task("vqa")
    _, data_args, task_args, args = run.parse_args(["--output_dir", str(tmp_path)], task)
    assert (args.learning_rate, args.warmup_ratio, args.weight_decay) == (1e-5, 0.06, 0.05)
    assert (task_args.head_lr_multiplier, data_args.image_transform, args.adam_beta2) == (50, "blip_randaug_wohf", 0.98)
    _, data_args, task_args, args = run.parse_args(
        ["--output_dir", str(tmp_path), "--learning_rate", "3e-5", "--head_lr_multiplier", "7",
         "--image_transform", "clip"], task,
    )  # fmt: skip
    assert (args.learning_rate, task_args.head_lr_multiplier, data_args.image_transform) == (3e-5, 7, "clip")
    # A JSON argument file gets the recipe as defaults too.
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path), "weight_decay": 0.2}))
    _, _, task_args, args = run.parse_args([str(path)], get_task("nlvr2"))
    assert (args.learning_rate, args.weight_decay, task_args.head_lr_multiplier) == (5e-6, 0.2, 10)


# The official totals (the scripts' EXP_BS) and per-GPU batches (EXP_PGB) of scripts/ftfpt_base_*.sh.
OFFICIAL_BATCHES = {"vqa": (512, 16), "snli_ve": (64, 8), "nlvr2": (64, 8), "flickr30k": (512, 8), "coco": (256, 16)}


def _retrieval_task(dataset: str):
    task = get_task("retrieval")
    task.choose_recipe(["--retrieval_dataset", dataset])
    return task


@pytest.mark.parametrize("name", sorted(OFFICIAL_BATCHES))
@pytest.mark.parametrize("devices", [1, 2, 8])
def test_each_recipe_reaches_the_official_total_batch_on_1_2_and_8_devices(tmp_path, name, devices, caplog):
    from types import SimpleNamespace

    task = _retrieval_task(name) if name in ("flickr30k", "coco") else get_task(name)
    total, per_gpu = OFFICIAL_BATCHES[name]
    _, data_args, _, args = run.parse_args(["--output_dir", str(tmp_path), "--train_file", "data.json"], task)
    assert (task.total_batch(data_args), args.per_device_train_batch_size) == (total, per_gpu)
    run_args = SimpleNamespace(per_device_train_batch_size=per_gpu, world_size=devices, gradient_accumulation_steps=1)
    with caplog.at_level("INFO", logger="bridgetower_gaudi"):
        task.resolve_batch(run_args, data_args)
    assert per_gpu * devices * run_args.gradient_accumulation_steps == total
    assert f"x {devices} devices x {run_args.gradient_accumulation_steps} accumulation steps = {total}" in caplog.text
    # A smaller per-device batch (memory) is made up by accumulation: the total stays.
    run_args = SimpleNamespace(per_device_train_batch_size=per_gpu // 2, world_size=devices,
                               gradient_accumulation_steps=1)  # fmt: skip
    task.resolve_batch(run_args, data_args)
    assert run_args.per_device_train_batch_size * devices * run_args.gradient_accumulation_steps == total


def test_flags_that_give_another_total_batch_are_run_and_warned_about(tmp_path):
    from types import SimpleNamespace

    task = get_task("vqa")
    task.user_flags = {"gradient_accumulation_steps"}
    data_args = run.parse_args(["--output_dir", str(tmp_path), "--train_file", "q.json"], task)[1]
    run_args = SimpleNamespace(per_device_train_batch_size=16, world_size=8, gradient_accumulation_steps=2)
    with pytest.warns(UserWarning, match="total batch of 256, not the official 512"):
        task.resolve_batch(run_args, data_args)
    assert run_args.gradient_accumulation_steps == 2  # the user's value is kept
    # A per-device batch that does not divide the total: the official floor division, and a warning.
    task.user_flags = set()
    run_args = SimpleNamespace(per_device_train_batch_size=24, world_size=1, gradient_accumulation_steps=1)
    with pytest.warns(UserWarning, match="total batch of 504, not the official 512"):
        task.resolve_batch(run_args, data_args)
    assert run_args.gradient_accumulation_steps == 21
    # The synthetic stand-ins (smoke tests) train at the flags' batch, no accumulation added.
    synthetic = run.parse_args(["--output_dir", str(tmp_path)], task)[1]
    run_args = SimpleNamespace(per_device_train_batch_size=16, world_size=1, gradient_accumulation_steps=1)
    task.resolve_batch(run_args, synthetic)
    assert task.total_batch(synthetic) is None and run_args.gradient_accumulation_steps == 1


def test_the_entry_point_records_which_flags_the_user_gave(tmp_path):
    assert finetune.given_flags(["--do_train", "--gradient-accumulation-steps", "2", "--seed=3"]) == {
        "do_train", "gradient_accumulation_steps", "seed"}  # fmt: skip
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": "x", "gradient_accumulation_steps": 4}))
    assert finetune.given_flags([str(path)]) == {"output_dir", "gradient_accumulation_steps"}


def test_coco_retrieval_runs_cocos_official_recipe(tmp_path):
    from bridgetower_gaudi.tasks.retrieval import retrieval_dataset

    assert retrieval_dataset(["--train_file", "karpathy/dataset_coco.json"]) == "coco"
    assert retrieval_dataset(["--train_file", "arrows/coco_caption_karpathy_train.arrow"]) == "coco"
    assert retrieval_dataset(["--train_file", "arrows/f30k_caption_karpathy_train.arrow"]) == "flickr30k"
    assert retrieval_dataset(["--train_file", "mine.json", "--retrieval_dataset", "coco"]) == "coco"
    assert retrieval_dataset([]) == "flickr30k"
    with pytest.raises(ValueError, match="--retrieval_dataset"):
        retrieval_dataset(["--train_file", "dataset_coco.json", "--validation_file", "dataset_flickr30k.json"])
    task = get_task("retrieval")
    argv = ["--output_dir", str(tmp_path), "--train_file", "dataset_coco.json"]
    task.choose_recipe(argv)
    _, data_args, task_args, args = run.parse_args(argv, task)
    assert (args.learning_rate, args.warmup_ratio, args.num_train_epochs) == (4.5e-6, 0.1, 30)
    assert (task_args.retrieval_k, args.per_device_train_batch_size, task.total_batch(data_args)) == ("256", 16, 256)
    assert (args.weight_decay, task_args.head_lr_multiplier, data_args.max_seq_length) == (0.01, 5, 40)
    # Flickr30K's differs; a user's flag still wins over either.
    task = get_task("retrieval")
    task.choose_recipe(["--train_file", "dataset_flickr30k.json"])
    _, data_args, task_args, args = run.parse_args([*argv, "--learning_rate", "1e-6"], task)
    assert (args.learning_rate, args.warmup_ratio, args.num_train_epochs, task_args.retrieval_k) == (
        1e-6, 0.05, 20, "128")  # fmt: skip
    assert task.total_batch(data_args) == 512


def test_config_overrides_beat_the_tasks_model_settings(tmp_path):
    flags = ["--task", "nlvr2", "--config_name", "tiny", "--do_train", "--max_steps", "1", *SHORT,
             "--synthetic_train_size", "64", "--output_dir", str(tmp_path),
             "--config_overrides", "classifier_hidden_scale=2,classifier_dropout_prob=0.0"]  # fmt: skip
    finetune.main(flags)
    config = btg.BridgeTowerConfig.from_pretrained(tmp_path)
    assert (config.classifier_hidden_scale, config.classifier_dropout_prob, config.num_image_token_types) == (2, 0, 2)


@pytest.mark.parametrize("task", FINETUNING_TASKS)
def test_every_task_trains_a_step_and_reports(tmp_path, task):
    results = _finetune(task, tmp_path, 1, "--config_name", "tiny", "--per_device_eval_batch_size", "32")
    # one step from a random head: finite, positive, and below what a far-off head would give (the largest, MLM's
    # cross-entropy over the tiny vocabulary, starts near log(vocabulary) < 7)
    assert math.isfinite(results["train_loss"]) and 0 < results["train_loss"] < 15, results["train_loss"]
    assert results["epoch"] > 0
    line = run.summary_line(results, get_task(task).summary_metrics)
    assert line.startswith("bridgetower_gaudi: ") and "samples/s" in line and " | " in line


def test_run_finetune_names_the_tasks_when_task_is_missing_or_wrong():
    with pytest.raises(SystemExit, match="needs --task"):
        finetune.main(["--do_train"])
    with pytest.raises(SystemExit, match="choose one of itm, mlm, retrieval, vqa, snli_ve, nlvr2"):
        finetune.main(["--task", "captioning"])


@pytest.mark.parametrize(
    "model_class, head",
    [
        (btg.BridgeTowerForVisualQuestionAnswering, "vqa_classifier"),
        (btg.BridgeTowerForVisualEntailment, "snli_classifier"),
        (btg.BridgeTowerForNLVR2, "nlvr2_classifier"),
    ],
)
def test_downstream_heads_save_load_and_take_the_head_rate(tmp_path, model_class, head):
    model = model_class(tiny_config(num_labels=5, num_image_token_types=2)).eval()
    inputs = make_inputs(model.config, batch=2)
    if model_class is btg.BridgeTowerForNLVR2:
        inputs["pixel_values_2"] = inputs["pixel_values"].flip(0)
    model.save_pretrained(tmp_path)
    reloaded = model_class.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    groups = parameter_groups(model, 1e-5, 0.01, cross_modal_lr_multiplier=5, head_lr_multiplier=50)
    rates = {name: group["lr"] for group in groups for name in group["names"]}
    assert {rates[n] for n in rates if n.startswith(head)} == {5e-4}
    assert rates[f"{head}.dense.weight"] and f"{head}.LayerNorm.weight" in rates


# The official set_schedule (meter_utils.py) on the official names: role by substring ("cross_modal" first, then the
# head names), no decay when a no-decay pattern (bias, LayerNorm / norm weights) is in the name. The downstream
# heads are nn.Sequential officially ("vqa_classifier.1.weight" is their LayerNorm): matched by no pattern, decayed.
# CLIP's LayerNorms are ln_pre / ln_1 / ln_2 / ln_post officially: decayed too. First matching row wins.
TASK_GROUP_TABLE = [
    (r"\.bias$", None, False),
    (r"cross_modal.*(LayerNorm|_layernorm)\.weight$", "cross_modal", False),
    (r"cross_modal", "cross_modal", True),
    (r"^(vqa|snli|nlvr2)_classifier\.(dense|LayerNorm|classifier)\.weight$", "head", True),
    (r"^mlm_score\.transform\.LayerNorm\.weight$", "head", False),
    (r"^(mlm_score|itm_score|itc_text_head|itc_image_head)\.", "head", True),
    (r"^bridgetower\.text_model\..*LayerNorm\.weight$", "base", False),
    (r"^bridgetower\.(text_model|vision_model|token_type_embeddings)\.", "base", True),
    (r"^(temperature|logit_scale)$", "base", True),
]
BIAS_ROLES = [(r"cross_modal", "cross_modal"), (r"^(vqa|snli|nlvr2)_classifier|^(mlm|itm)_score|^itc_", "head")]


@pytest.mark.parametrize(
    "model_class",
    [btg.BridgeTowerForPreTraining, btg.BridgeTowerForMaskedLM, btg.BridgeTowerForImageAndTextRetrieval,
     btg.BridgeTowerForContrastiveLearning, btg.BridgeTowerForVisualQuestionAnswering,
     btg.BridgeTowerForVisualEntailment, btg.BridgeTowerForNLVR2],
)  # fmt: skip
def test_every_task_models_parameters_fall_in_the_official_groups(model_class):
    pretraining = model_class is btg.BridgeTowerForPreTraining
    objectives = {"pretraining_objectives": ["mlm", "itm", "itc"]} if pretraining else {}
    model = model_class(tiny_config(num_labels=3, num_image_token_types=2, **objectives))
    groups = parameter_groups(model, 1e-5, 0.01, cross_modal_lr_multiplier=5, head_lr_multiplier=10)
    placed = {name: (group["role"], group["weight_decay"] > 0) for group in groups for name in group["names"]}
    assert sorted(placed) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    for name, (role, decay) in placed.items():
        expected_role, expected_decay = next((r, d) for pattern, r, d in TASK_GROUP_TABLE if re.search(pattern, name))
        if expected_role is None:  # a bias: the role of its module
            expected_role = next((r for pattern, r in BIAS_ROLES if re.search(pattern, name)), "base")
        assert (role, decay) == (expected_role, expected_decay), name
    head = getattr(model, "_head_modules", ())
    if head and head[0].endswith("_classifier"):
        assert placed[f"{head[0]}.LayerNorm.weight"] == ("head", True)  # decayed, as officially


def test_vqa_loss_is_binary_cross_entropy_times_the_vocabulary_size():
    model = btg.BridgeTowerForVisualQuestionAnswering(tiny_config(num_labels=4)).eval()
    inputs = make_inputs(model.config, batch=2)
    targets = torch.tensor([[0.0, 0.3, 1.0, 0.0], [0.6, 0.0, 0.0, 0.9]])
    out = model(**inputs, labels=targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, targets) * 4
    torch.testing.assert_close(out.loss, expected)


def test_nlvr2_grows_a_second_image_type_as_a_copy_of_the_first(tmp_path):
    pretrained = btg.BridgeTowerForPreTraining(tiny_config())
    pretrained.save_pretrained(tmp_path / "pretrained")
    model = btg.BridgeTowerForNLVR2.from_pretrained(tmp_path / "pretrained")
    with pytest.raises(ValueError, match="add_second_image_token_type"):
        model(**make_inputs(model.config, batch=2), pixel_values_2=make_inputs(model.config, batch=2)["pixel_values"])
    model.add_second_image_token_type()
    rows = model.bridgetower.token_type_embeddings.weight
    original = pretrained.bridgetower.token_type_embeddings.weight
    assert rows.shape[0] == 3 and torch.equal(rows[:2], original) and torch.equal(rows[2], original[1])
    model.save_pretrained(tmp_path / "nlvr2")
    assert btg.BridgeTowerForNLVR2.from_pretrained(tmp_path / "nlvr2").config.num_image_token_types == 2


def test_image_size_changes_interpolate_position_embeddings(tmp_path):
    model = btg.BridgeTowerForVisualEntailment(tiny_config(num_labels=3))
    old = model.bridgetower.vision_model.embeddings.position_embedding.weight.detach().clone()
    set_image_size(model, 48)
    new = model.bridgetower.vision_model.embeddings.position_embedding.weight
    grid = 48 // model.config.vision_config.patch_size
    assert new.shape[0] == 1 + grid * grid and torch.equal(new[0], old[0])  # [CLS] position kept
    logits = model(**make_inputs(model.config, batch=2)).logits  # 48 px inputs (make_inputs reads the config)
    model.save_pretrained(tmp_path)
    reloaded = btg.BridgeTowerForVisualEntailment.from_pretrained(tmp_path)
    assert reloaded.config.vision_config.image_size == 48 and logits.shape == (2, 3)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        set_image_size(model, 50)


def test_retrieval_itc_targets_are_soft_over_captions_of_the_same_image():
    model = btg.BridgeTowerForPreTraining(tiny_config(pretraining_objectives=["itm", "itc"]))
    inputs = make_inputs(model.config, batch=4)
    text = model.bridgetower.encode_text(inputs["input_ids"], inputs["attention_mask"])
    image = model.bridgetower.encode_image(inputs["pixel_values"])
    image_ids = torch.tensor([7, 7, 3, 5])  # captions 0 and 1 describe the same image
    loss, image_to_text, text_to_image = model._itc(text, image, image_ids)
    targets = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    expected = (
        torch.nn.functional.cross_entropy(image_to_text, targets)
        + torch.nn.functional.cross_entropy(text_to_image, targets)
    ) / 2
    torch.testing.assert_close(loss.detach(), expected)
    plain, _, _ = model._itc(text, image)
    assert not torch.allclose(plain, loss)


def test_a_transformers_checkpoint_fine_tunes(tmp_path):
    source = transformers.BridgeTowerForMaskedLM(tiny_hf_config())
    source.save_pretrained(tmp_path / "hf")
    synthetic_tokenizer(task_words=True).save_pretrained(tmp_path / "hf")
    # After 0 steps every weight of the shared model (towers, cross-modal layers, poolers) is the source's, converted
    # from transformers' layout
    task = get_task("snli_ve")
    flags = ["--model_name_or_path", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "zero"), "--do_train",
             "--max_steps", "1", *SHORT, "--synthetic_train_size", "64"]  # fmt: skip
    built = run.build_trainer(task, *run.parse_args(flags, task)).model.state_dict()
    expected = {k: v for k, v in from_transformers_layout(source.state_dict()).items() if k.startswith("bridgetower.")}
    assert len(expected) > 100 and expected.keys() <= built.keys(), sorted(expected.keys() - built.keys())[:5]
    assert [k for k in expected if not torch.equal(built[k], expected[k])] == []

    results = _finetune("snli_ve", tmp_path / "out", 2, "--model_name_or_path", str(tmp_path / "hf"))
    assert "eval_accuracy" in results
    tuned = btg.BridgeTowerForVisualEntailment.from_pretrained(tmp_path / "out")
    kept = tuned.bridgetower.text_model.embeddings.word_embeddings.weight
    assert kept.shape == source.bridgetower.text_model.embeddings.word_embeddings.weight.shape


def test_nlvr2_gives_each_image_its_own_text_pass_in_training_as_officially():
    """The official compute_nlvr2 runs the whole model once per image. Measured here: in training one shared text
    pass is not the same computation (the text tower's dropout would be drawn once for both images: the two
    images' text features would be equal, where officially they differ), so training runs two text passes, in the
    official order; in evaluation (no dropout) the second pass equals the first, so one is reused: the logits are
    the two-pass ones, with one text-tower call instead of two."""
    config = tiny_config(num_labels=2, num_image_token_types=2)
    config.text_config.hidden_dropout_prob = config.text_config.attention_probs_dropout_prob = 0.1
    model = btg.BridgeTowerForNLVR2(config)
    without_last_cross_modal_dropout(model)  # ours runs the last layer at [CLS] only: other draws there
    inputs = make_inputs(model.config, batch=2)
    inputs["pixel_values_2"] = inputs["pixel_values"].flip(0)
    texts = []
    model.bridgetower.text_model.encoder.register_forward_hook(lambda module, args, output: texts.append(output))

    def official(bridgetower):  # text, image 1, fuse 1; text, image 2, fuse 2: compute_nlvr2's two `infer` calls
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        first = bridgetower.fuse(bridgetower.encode_text(ids, mask), bridgetower.encode_image(inputs["pixel_values"]))
        second = bridgetower.fuse(bridgetower.encode_text(ids, mask),
                                  bridgetower.encode_image(inputs["pixel_values_2"]), 2)  # fmt: skip
        return model.nlvr2_classifier(torch.cat([first.pooler_output, second.pooler_output], dim=-1))

    model.train()
    torch.manual_seed(0)
    logits = model(**inputs).logits
    assert len(texts) == 2 and not torch.equal(texts[0].last_hidden_state, texts[1].last_hidden_state)
    torch.manual_seed(0)
    # the same random draws as the official order (other draws move the logits by about 1e-2); equal to rounding, as
    # ours runs the last cross-modal layer at [CLS] only
    torch.testing.assert_close(logits, official(model.bridgetower), rtol=1e-5, atol=1e-6)
    model.eval()
    texts.clear()
    with torch.no_grad():
        logits = model(**inputs).logits
        assert len(texts) == 1
        torch.testing.assert_close(logits, official(model.bridgetower), rtol=1e-5, atol=1e-6)
        assert len(texts) == 3


def test_the_large_vqa_model_runs_the_large_scripts_recipe(tmp_path):
    from types import SimpleNamespace

    from bridgetower_gaudi.modeling import PRESETS

    # scripts/ftfpt_large_vqa.sh: lr 4e-6, 4 per GPU, total 512 (base: 1e-5, 16 per GPU, 512).
    btg.BridgeTowerConfig(**PRESETS["large"]).save_pretrained(tmp_path / "large")
    for argv, learning_rate, per_device in (
        (["--model_name_or_path", str(tmp_path / "large")], 4e-6, 4),
        (["--config_name", "large"], 4e-6, 4),
        (["--config_name", "base"], 1e-5, 16),
        (["--config_name", "large", "--learning_rate", "2e-6"], 2e-6, 4),  # a user's flag still wins
    ):
        task = get_task("vqa")
        task.choose_recipe(argv)
        flags = [*argv, "--output_dir", str(tmp_path / "out"), "--train_file", "q.json"]
        _, data_args, _, args = run.parse_args(flags, task)
        assert (args.learning_rate, args.per_device_train_batch_size) == (learning_rate, per_device), argv
        plan = SimpleNamespace(per_device_train_batch_size=per_device, world_size=8, gradient_accumulation_steps=1)
        task.resolve_batch(plan, data_args)
        assert per_device * 8 * plan.gradient_accumulation_steps == 512


def test_the_accumulation_a_recipe_sets_reaches_deepspeeds_config(tmp_path):
    # TrainingArguments fills DeepSpeed's "auto" batch values when it is built, before the recipe sets the
    # accumulation: they are filled again, or DeepSpeed would accumulate 1 step where the Trainer expects 32.
    from bridgetower_gaudi.training.checks import deepspeed_problems

    task = get_task("vqa")
    config_file = Path(__file__).parents[1] / "run_scripts" / "ds_zero2.json"
    flags = ["--output_dir", str(tmp_path), "--train_file", "q.json", "--deepspeed", str(config_file)]
    _, data_args, _, args = run.parse_args(flags, task)
    assert args.hf_deepspeed_config.config["gradient_accumulation_steps"] == 1
    task.resolve_batch(args, data_args)
    config = args.hf_deepspeed_config.config
    assert (config["gradient_accumulation_steps"], config["train_batch_size"]) == (32, 512)
    assert args.deepspeed_plugin.gradient_accumulation_steps == 32 and deepspeed_problems(args) == []
