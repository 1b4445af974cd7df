"""Reliability: flags that cannot work are refused before the model is built or anything is written, each with its
fix in the message; data flags without --dataset_format read the files they name."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from bridgetower_gaudi import BridgeTowerConfig
from bridgetower_gaudi.data import DataArguments, DataConfigError
from bridgetower_gaudi.data.synthetic import synthetic_tokenizer
from bridgetower_gaudi.training import finetune
from bridgetower_gaudi.training.arguments import ModelArguments
from bridgetower_gaudi.training.checks import (
    RunFlagError,
    deepspeed_problems,
    model_shape_problems,
    usable_text_positions,
)
from bridgetower_gaudi.training.pretrain import main
from tests.conftest import tiny_config
from tests.data_files import color_image, write_tar

SHORT = ["--max_seq_length", "16", "--per_device_train_batch_size", "8", "--synthetic_train_size", "64",
         "--report_to", "none", "--dataloader_num_workers", "0", "--save_strategy", "no"]  # fmt: skip


def _refused(tmp_path, *flags: str, match: str, run=main) -> RunFlagError:
    """Run with `flags` into a fresh output_dir: refused with `match` in the message, and nothing written."""
    output_dir = tmp_path / "out"
    with pytest.raises(RunFlagError, match=match) as caught:
        run(["--output_dir", str(output_dir), "--do_train", "--max_steps", "1", *SHORT, *flags])
    assert not output_dir.exists()
    return caught.value


# --- model shapes --------------------------------------------------------------------------------------------------
def test_image_size_not_a_multiple_of_the_patch_size_is_refused(tmp_path):
    _refused(
        tmp_path,
        "--image_size",
        "36",
        match=r"image size 36 .* patch size 8 \(the tiny preset\).*--image_size 32 or 40",
    )


def test_captions_longer_than_the_text_positions_are_refused(tmp_path):
    # The tiny preset: 64 RoBERTa positions, numbered from the pad id + 1 = 2.
    _refused(tmp_path, "--max_seq_length", "63", match=r"--max_seq_length 63 .* 62 positions.*--max_seq_length 62")


def test_shapes_are_read_from_a_checkpoint_config_without_its_weights(tmp_path):
    checkpoint = tmp_path / "ckpt"
    tiny_config(text_backbone="bert").save_pretrained(checkpoint)  # config.json only: no model can be built from it
    model_args = ModelArguments(model_name_or_path=str(checkpoint))
    assert model_shape_problems(model_args, DataArguments(max_seq_length=64)) == []  # BERT numbers from 0: all 64
    (problem,) = model_shape_problems(model_args, DataArguments(max_seq_length=65, image_size=40))
    assert f"checkpoint {checkpoint}" in problem and "--max_seq_length 64" in problem
    (size_problem,) = model_shape_problems(model_args, DataArguments(image_size=30))
    assert "--image_size 24 or 32" in size_problem
    assert usable_text_positions("roberta", 514, 1) == 512 and usable_text_positions("bert", 512, 0) == 512


def test_a_foreign_checkpoint_is_refused_naming_its_config(tmp_path):
    foreign = tmp_path / "bert"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 512}))
    _refused(
        tmp_path, "--model_name_or_path", str(foreign), match=r"holds a 'bert' model .*config.json.*not BridgeTower"
    )


# --- precision and DeepSpeed ---------------------------------------------------------------------------------------
def test_fp16_on_gaudi_is_refused_naming_bf16(tmp_path):
    _refused(tmp_path, "--use_habana", "--fp16", match=r"--fp16 with --use_habana.*pass --bf16")


def test_weights_are_saved_as_safetensors_only(tmp_path):
    _refused(tmp_path, "--save_safetensors", "False", match="--save_safetensors False.*drop the flag")


def _ds_args(**flags) -> SimpleNamespace:
    defaults = dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, max_grad_norm=0.0, bf16=False,
                    fp16=False, world_size=1)  # fmt: skip
    return SimpleNamespace(**{**defaults, **flags})


def test_a_deepspeed_json_that_contradicts_the_flags_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}, "train_micro_batch_size_per_gpu": 4,
                                "gradient_accumulation_steps": 2, "gradient_clipping": 1.0}))  # fmt: skip
    problems = deepspeed_problems(_ds_args(deepspeed=str(path)))
    assert len(problems) == 4, problems
    assert "enables bf16" in problems[0] and "add --bf16" in problems[0]
    assert "--per_device_train_batch_size is 8" in problems[1] and '"auto"' in problems[1]
    assert "--gradient_accumulation_steps is 1" in problems[2] and "--max_grad_norm is 0.0" in problems[3]
    agreeing = _ds_args(deepspeed=str(path), bf16=True, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                        max_grad_norm=1.0)  # fmt: skip
    assert deepspeed_problems(agreeing) == []
    shipped = _ds_args(deepspeed="run_scripts/ds_zero2.json", fp16=True)  # "auto" everywhere: follows any flags
    assert deepspeed_problems(shipped) == []
    fp16_off = _ds_args(deepspeed={"fp16": {"enabled": False}}, fp16=True)
    assert "drop --fp16" in deepspeed_problems(fp16_off)[0]


# --- data files ----------------------------------------------------------------------------------------------------
def test_every_missing_or_unreadable_data_file_is_named_before_the_model_is_built(tmp_path):
    (tmp_path / "folder.json").mkdir()
    error = _refused(
        tmp_path,
        "--train_file", str(tmp_path / "missing.jsonl"),
        "--validation_file", str(tmp_path / "folder.json"),
        "--image_root", str(tmp_path / "no_images"),
        "--tokenizer_name", "unused",
        match="cannot start",
    )  # fmt: skip
    message = str(error)
    assert f"--train_file {tmp_path / 'missing.jsonl'} does not exist" in message
    assert f"--validation_file {tmp_path / 'folder.json'} is a folder" in message
    assert f"--image_root {tmp_path / 'no_images'} is not a folder" in message


def test_downstream_annotation_and_vocabulary_files_are_checked(tmp_path):
    (tmp_path / "questions.json").write_text("{}")
    error = _refused(
        tmp_path,
        "--task", "vqa", "--train_file", str(tmp_path / "questions.json"),
        "--train_annotation_file", str(tmp_path / "annotations.json"),
        "--answer_vocabulary_file", str(tmp_path / "answers.json"),
        match="cannot start",
        run=finetune.main,
    )  # fmt: skip
    assert "--train_annotation_file" in str(error) and "--answer_vocabulary_file" in str(error)


# --- output folder -------------------------------------------------------------------------------------------------
def test_another_runs_checkpoints_are_not_trained_over_unless_asked(tmp_path):
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-3").mkdir(parents=True)
    before = sorted(p.name for p in output_dir.iterdir())
    flags = ["--output_dir", str(output_dir), "--do_train", "--max_steps", "1", *SHORT]
    with pytest.raises(
        RunFlagError, match=r"checkpoint-3.*--resume_from_checkpoint .*checkpoint-3.*--overwrite_output_dir"
    ):
        main(flags)
    assert sorted(p.name for p in output_dir.iterdir()) == before  # nothing written
    results = main([*flags, "--overwrite_output_dir"])  # the user said so
    assert math.isfinite(results["train_loss"])


# --- --dataset_format defaults -------------------------------------------------------------------------------------
def test_dataset_format_defaults_to_synthetic_without_data_and_auto_with_it(tmp_path):
    assert DataArguments().dataset_format == "synthetic"
    assert DataArguments(train_file=["x.tar"]).dataset_format == "auto"
    assert DataArguments(dataset_name="some/dataset").dataset_format == "auto"
    with pytest.raises(DataConfigError, match="--dataset_format synthetic makes its own data.*drop it"):
        DataArguments(dataset_format="synthetic", train_file=["x.tar"])


def test_tar_shards_train_without_dataset_format(tmp_path):
    write_tar(tmp_path / "shards.tar", 0, 16)
    tokenizer = tmp_path / "tokenizer"
    synthetic_tokenizer().save_pretrained(tokenizer)
    results = main(["--output_dir", str(tmp_path / "out"), "--do_train", "--max_steps", "1", *SHORT,
                    "--train_file", str(tmp_path / "shards.tar"), "--tokenizer_name", str(tokenizer)])  # fmt: skip
    assert math.isfinite(results["train_loss"])


def test_downstream_files_are_read_by_the_tasks_reader_without_dataset_format(tmp_path, task_tokenizer):
    images = tmp_path / "flickr"
    images.mkdir()
    rows = []
    for i in range(8):
        color_image(i).save(images / f"{i}.jpg", format="PNG")
        rows.append({"Flickr30K_ID": str(i), "sentence2": "a shape", "gold_label": "entailment", "pairID": f"p{i}"})
    (tmp_path / "snli_ve_train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    results = finetune.main(
        ["--task", "snli_ve", "--output_dir", str(tmp_path / "out"), "--do_train", "--max_steps", "1", *SHORT,
         "--per_device_train_batch_size", "4", "--train_file", str(tmp_path / "snli_ve_train.jsonl"),
         "--image_root", str(images), "--tokenizer_name", task_tokenizer, "--config_name", "tiny"]
    )  # fmt: skip
    assert math.isfinite(results["train_loss"])


def test_a_valid_config_passes_the_checks():
    assert model_shape_problems(ModelArguments(), DataArguments(max_seq_length=62, image_size=40)) == []
    assert BridgeTowerConfig().text_config.max_position_embeddings == 514  # base: RoBERTa's 512 usable positions
    assert model_shape_problems(ModelArguments(config_name="base"), DataArguments(max_seq_length=512)) == []
