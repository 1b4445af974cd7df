"""Reliability: flags that cannot work are refused before the model is built or anything is written, each with its
fix in the message; data flags without --dataset_format read the files they name; a checkpoint folder is complete
whenever it exists (a crash or a SIGKILL during a save leaves none half-written), and damaged or foreign checkpoints
are refused naming the file; optimizer steps with a non-finite loss or gradient are skipped, counted, and stop the run
past --max_nonfinite_steps."""

from __future__ import annotations

import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from bridgetower_gaudi import BridgeTowerConfig
from bridgetower_gaudi.data import DataArguments, DataConfigError
from bridgetower_gaudi.data.synthetic import synthetic_tokenizer
from bridgetower_gaudi.modeling import checkpoint_conversion
from bridgetower_gaudi.training import finetune
from bridgetower_gaudi.training.arguments import ModelArguments
from bridgetower_gaudi.training.checks import (
    RunFlagError,
    deepspeed_problems,
    model_shape_problems,
    safetensors_problem,
    usable_text_positions,
)
from bridgetower_gaudi.training.nonfinite import NonFiniteStepsError
from bridgetower_gaudi.training.pretrain import build_trainer, main, parse_args, run
from tests.conftest import tiny_config
from tests.data_files import color_image, write_tar
from tests.processes import failure_report, python_script, run_checked, run_killed_at, torchrun

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["--max_seq_length", "16", "--per_device_train_batch_size", "8", "--synthetic_train_size", "64",
        "--report_to", "none", "--dataloader_num_workers", "0"]  # fmt: skip
SHORT = [*BASE, "--save_strategy", "no"]
SAVING = [*BASE, "--save_steps", "1"]


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


@pytest.mark.parametrize("run", [main, finetune.main], ids=["pretrain", "finetune"])
def test_flags_without_a_step_to_run_are_refused(tmp_path, run):
    # Any flag replaces the embedded default run, so `--seed 4` alone used to build a model and write only `{}`.
    output_dir = tmp_path / "out"
    task = ["--task", "itm"] if run is finetune.main else []
    with pytest.raises(RunFlagError, match="none of --do_train, --do_eval, --do_predict"):
        run([*task, "--output_dir", str(output_dir), "--seed", "4", *SHORT])
    assert not output_dir.exists()


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


# --- atomic checkpoints --------------------------------------------------------------------------------------------
CHECKPOINT_FILES = ("config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
                    "trainer_state.json")  # fmt: skip


def _checkpoints(output_dir) -> list[str]:
    return sorted((p.name for p in output_dir.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))


def _assert_complete(checkpoint) -> int:
    """Every file of a checkpoint is there and loads; returns its step."""
    for name in CHECKPOINT_FILES:
        assert (checkpoint / name).is_file(), (checkpoint, name)
    assert safetensors_problem(str(checkpoint / "model.safetensors")) is None
    assert load_file(checkpoint / "model.safetensors")
    torch.load(checkpoint / "optimizer.pt", weights_only=True)
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


class SimulatedCrash(Exception):
    pass


def test_a_crash_during_a_save_leaves_no_checkpoint_folder_and_the_last_complete_one_resumes(tmp_path, monkeypatch):
    output_dir = tmp_path / "out"
    flags = ["--output_dir", str(output_dir), "--do_train", "--max_steps", "4", *SAVING]
    save_rng_state = Trainer._save_rng_state

    def crash_at_step_3(self, checkpoint_dir):  # called after the weights and the optimizer state are written
        if self.state.global_step == 3:
            raise SimulatedCrash(checkpoint_dir)
        save_rng_state(self, checkpoint_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", crash_at_step_3)
    with pytest.raises(SimulatedCrash):
        main(flags)
    assert _checkpoints(output_dir) == ["checkpoint-1", "checkpoint-2"]
    staged = output_dir / ".tmp-checkpoint-3" / "checkpoint-3"
    assert (staged / "model.safetensors").is_file() and not (staged / "trainer_state.json").exists()  # cut mid-save
    assert get_last_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-2")  # what resuming would pick
    assert [_assert_complete(output_dir / name) for name in _checkpoints(output_dir)] == [1, 2]

    monkeypatch.undo()
    resume = ["--resume_from_checkpoint", str(output_dir / "checkpoint-2"), "--save_total_limit", "2"]
    results = main([*flags, *resume])
    assert math.isfinite(results["train_loss"])
    assert _checkpoints(output_dir) == ["checkpoint-3", "checkpoint-4"]  # --save_total_limit 2 kept the last two
    assert [_assert_complete(output_dir / name) for name in _checkpoints(output_dir)] == [3, 4]
    assert not (output_dir / ".tmp-checkpoint-3").exists()  # the next save of step 3 replaced the remains


def test_best_model_checkpoint_names_the_final_folder(tmp_path):
    output_dir = tmp_path / "out"
    main(["--output_dir", str(output_dir), "--do_train", "--do_eval", "--max_steps", "2", "--eval_strategy", "steps",
          "--eval_steps", "1", "--load_best_model_at_end", "--metric_for_best_model", "loss",
          "--synthetic_eval_size", "16", "--per_device_eval_batch_size", "8", *SAVING])  # fmt: skip
    for name in _checkpoints(output_dir):
        best = json.loads((output_dir / name / "trainer_state.json").read_text())["best_model_checkpoint"]
        assert best is not None and ".tmp-" not in best and os.path.isdir(best), best


def _one_checkpoint(tmp_path) -> str:
    output_dir = tmp_path / "run"
    main(["--output_dir", str(output_dir), "--do_train", "--max_steps", "1", *SAVING])
    return str(output_dir / "checkpoint-1")


def test_truncated_incomplete_and_foreign_checkpoints_are_refused_naming_the_file(tmp_path):
    checkpoint = _one_checkpoint(tmp_path)
    cut = tmp_path / "cut"
    shutil.copytree(checkpoint, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for flag in ("--resume_from_checkpoint", "--model_name_or_path"):
        _refused(tmp_path, flag, str(cut), match=f"{flag}: {weights} is truncated .*copy it again")
    with pytest.raises(ValueError, match=f"cannot load {weights}"):  # Trainer's resume path names it too
        checkpoint_conversion.load_transformers_layout_state_dict(str(cut))

    # The other states a resume reads (optimizer, scheduler, RNG, trainer / data-reader state) are checked too.
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        damaged = tmp_path / f"cut-{name}"
        shutil.copytree(checkpoint, damaged)
        state = damaged / name
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        _refused(tmp_path, "--resume_from_checkpoint", str(damaged), match=f"{state} is truncated or damaged")

    incomplete = tmp_path / "incomplete"
    shutil.copytree(checkpoint, incomplete)
    (incomplete / "trainer_state.json").unlink()
    _refused(tmp_path, "--resume_from_checkpoint", str(incomplete), match="no trainer_state.json.*earlier checkpoint")

    foreign = tmp_path / "bert"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    _refused(tmp_path, "--resume_from_checkpoint", str(foreign), match=f"holds a 'bert' model \\({foreign}/config.json")
    _refused(tmp_path, "--resume_from_checkpoint", str(tmp_path / "nowhere"), match="is not a folder")


KILL_RUN = ["--do_train", "--max_steps", "5", "--save_total_limit", "2", "--resume_from_checkpoint", "auto", *SAVING]
# phase: (the step it is killed at, the checkpoints left, the hidden remains left beside them)
KILLS = {
    "mid_step": (4, [2, 3], []),
    "mid_save": (4, [2, 3], [".tmp-checkpoint-4"]),  # checkpoint-4 written in its staging folder, not renamed
    "mid_rotation": (4, [3, 4], [".deleting-checkpoint-2"]),  # renamed out of checkpoint-*, not yet deleted
    "mid_final_save": (5, [4, 5], [".tmp-model"]),  # some final files moved into place, config.json not yet
}


@pytest.fixture(scope="module")
def uninterrupted_weights(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "out"
    main(["--output_dir", str(output_dir), *KILL_RUN])
    return load_file(output_dir / "model.safetensors")


@pytest.mark.parametrize("phase", list(KILLS))
def test_a_sigkill_at_each_phase_leaves_only_complete_checkpoints_and_resumes_exactly(
    tmp_path, phase, uninterrupted_weights
):
    """A real SIGKILL at a named phase (BRIDGETOWER_KILL_AT, see training/kill_points.py) of a run saving every
    step with --save_total_limit 2: the kill lands where it was meant (its marker, and what it left), every
    checkpoint-N folder left is complete and loads, and the same command resumes to the uninterrupted run's weights,
    leaving only complete checkpoints and no remains."""
    output_dir = tmp_path / "out"
    flags = ["--output_dir", str(output_dir), *KILL_RUN]
    step, left, remains = KILLS[phase]
    run_killed_at(python_script("run_scripts/run_pretrain.py", *flags), phase, step)
    assert _checkpoints(output_dir) == [f"checkpoint-{n}" for n in left]
    assert [_assert_complete(output_dir / f"checkpoint-{n}") for n in left] == left
    assert sorted(p.name for p in output_dir.glob(".*")) == remains
    if phase == "mid_save":  # cut after the weights were written
        assert (output_dir / ".tmp-checkpoint-4" / "checkpoint-4" / "model.safetensors").is_file()
    if phase == "mid_final_save":
        assert not (output_dir / "config.json").exists() and (output_dir / ".tmp-model" / "config.json").is_file()

    main(flags)  # the same command: resumes from the newest checkpoint
    assert _checkpoints(output_dir) == ["checkpoint-4", "checkpoint-5"]
    assert [_assert_complete(output_dir / name) for name in _checkpoints(output_dir)] == [4, 5]
    assert sorted(p.name for p in output_dir.glob(".*")) == []  # the remains were cleared
    weights = load_file(output_dir / "model.safetensors")
    assert sorted(weights) == sorted(uninterrupted_weights)
    assert [name for name in weights if not weights[name].equal(uninterrupted_weights[name])] == []


def test_a_malformed_kill_point_is_refused_naming_the_phases(tmp_path, monkeypatch):
    monkeypatch.setenv("BRIDGETOWER_KILL_AT", "mid_svae:3")
    with pytest.raises(ValueError, match="BRIDGETOWER_KILL_AT='mid_svae:3'.*mid_step, mid_save, mid_rotation"):
        main(["--output_dir", str(tmp_path / "out"), "--do_train", "--max_steps", "1", *SHORT])


# --- non-finite steps ----------------------------------------------------------------------------------------------
def _trainer_with_nan_loss_at(tmp_path, nan_steps: set[int], *flags: str):
    """A trainer whose loss is NaN in the first micro-step of the optimizer steps `nan_steps` (1-based)."""
    flags = ["--output_dir", str(tmp_path / "out"), "--do_train", "--logging_steps", "1", *SHORT, *flags]
    trainer = build_trainer(*parse_args(["--warmup_ratio", "0", *flags]))  # no warmup: the first step's lr is > 0
    compute_loss, seen = trainer.compute_loss, set()

    def compute_loss_with_nan(model, inputs, *args, **kwargs):
        loss = compute_loss(model, inputs, *args, **kwargs)
        step = trainer.state.global_step + 1
        if step in nan_steps and step not in seen:
            seen.add(step)
            return loss * float("nan")  # NaN through the graph: every gradient NaN too
        return loss

    trainer.compute_loss = compute_loss_with_nan
    return trainer


class WeightsPerStep(TrainerCallback):
    """Every trainable weight after each optimizer step (and before the first)."""

    def __init__(self, model):
        self.model, self.after = model, {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.after[0] = self._weights()

    def on_step_end(self, args, state, control, **kwargs):
        self.after[state.global_step] = self._weights()

    def _weights(self):
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}


def _changed(before: dict, after: dict) -> list[str]:
    return [n for n in before if not torch.equal(before[n], after[n])]


def test_a_nan_loss_skips_its_step_under_gradient_accumulation_and_is_counted(tmp_path):
    trainer = _trainer_with_nan_loss_at(tmp_path, {2}, "--max_steps", "4", "--gradient_accumulation_steps", "2",
                                        "--per_device_train_batch_size", "4")  # fmt: skip
    weights = WeightsPerStep(trainer.model)
    trainer.add_callback(weights)
    results = run(trainer)
    assert trainer.state.global_step == 4 and trainer.nonfinite_steps == [2]
    assert _changed(weights.after[1], weights.after[2]) == []  # step 2 left every weight as it was
    assert _changed(weights.after[0], weights.after[1]) and _changed(weights.after[2], weights.after[3])
    # AdamW took 3 steps: the skipped one moved no moment either
    assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {3}
    assert results["nonfinite_steps"] == 1 and math.isfinite(results["train_loss"])
    saved = json.loads((tmp_path / "out" / "all_results.json").read_text())
    assert saved["nonfinite_steps"] == 1
    logged = [entry.get("nonfinite_steps", 0) for entry in trainer.state.log_history if "loss" in entry]
    assert logged == [0, 1, 1, 1]


def test_a_nonfinite_gradient_with_a_finite_loss_is_skipped_too(tmp_path):
    trainer = build_trainer(*parse_args(["--output_dir", str(tmp_path / "out"), "--do_train", "--max_steps", "3",
                                         "--warmup_ratio", "0", *SHORT]))  # fmt: skip
    weight = trainer.model.itm_score.fc.weight
    weight.register_hook(lambda grad: grad * float("inf") if trainer.state.global_step == 1 else grad)  # step 2
    weights = WeightsPerStep(trainer.model)
    trainer.add_callback(weights)
    result = trainer.train()
    assert trainer.nonfinite_steps == [2] and result.metrics["nonfinite_steps"] == 1
    assert _changed(weights.after[1], weights.after[2]) == [] and _changed(weights.after[2], weights.after[3])


def test_more_nonfinite_steps_than_allowed_stop_the_run_with_the_fix(tmp_path):
    trainer = _trainer_with_nan_loss_at(tmp_path, {2, 3}, "--max_steps", "5", "--max_nonfinite_steps", "1")
    with pytest.raises(NonFiniteStepsError, match=r"stopped at step 3: 2 optimizer steps .*\(steps 2, 3\), more "
                       r"than --max_nonfinite_steps 1 \(checked at logging steps\)\. Lower"):  # fmt: skip
        trainer.train()
    # The count is read at logging steps (every step here): the run stops at the logging step after step 3, whose
    # update the device-side guard had already skipped.
    assert trainer.state.global_step == 3


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_skips_nonfinite_steps_and_counts_them(tmp_path, zero_stage):
    """Under DeepSpeed (one torchrun process) a NaN loss (NaN gradients) and a NaN loss with finite gradients are
    both skipped by its ZeRO optimizer and counted; the weights stay finite (tests/deepspeed_nonfinite.py)."""
    ds_config = os.path.join(ROOT, "run_scripts", f"ds_zero{zero_stage}.json")
    command = torchrun(1, os.path.join(ROOT, "tests", "deepspeed_nonfinite.py"), ds_config, str(tmp_path / "out"))
    done = run_checked(command)
    assert "DEEPSPEED NONFINITE OK" in done.stdout, failure_report(done)


# --- the final model -----------------------------------------------------------------------------------------------
def test_a_crash_during_the_final_save_leaves_the_previous_model_whole(tmp_path, monkeypatch):
    output_dir = tmp_path / "out"
    flags = ["--output_dir", str(output_dir), "--do_train", "--max_steps", "1", *SHORT]
    main(flags)
    weights = output_dir / "model.safetensors"
    before = weights.read_bytes()
    assert sorted(p.name for p in output_dir.iterdir() if p.name.startswith(".tmp")) == []  # staging removed

    import transformers.modeling_utils

    save_file = transformers.modeling_utils.safe_save_file  # what save_pretrained writes the weights with

    def save_half_then_crash(tensors, filename, *args, **kwargs):
        save_file(tensors, filename, *args, **kwargs)
        with open(filename, "r+b") as f:  # the process died halfway through writing the weights
            f.truncate(os.path.getsize(filename) // 2)
        raise SimulatedCrash(filename)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_half_then_crash)
    with pytest.raises(SimulatedCrash) as crash:
        main([*flags, "--overwrite_output_dir", "--seed", "1"])
    assert ".tmp-model" in str(crash.value)  # the cut file was the staged one
    assert weights.read_bytes() == before and safetensors_problem(str(weights)) is None


# --- several ranks on streamed data --------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_on_uneven_shards_run_the_same_steps_and_evaluation_batches(tmp_path):
    """torchrun, 2 gloo processes (tests/streaming_ranks.py): training shards of 24 and 8 samples, validation shards
    of 12 and 4, batch 4. Both ranks run 2 steps a data epoch (the shorter rank's count) and 1 evaluation batch, and
    agree on the evaluation loss; without the common count the longer rank's extra collectives never complete."""
    data = tmp_path / "data"
    data.mkdir()
    for name, start, count in (("train-0", 0, 24), ("train-1", 24, 8), ("val-0", 40, 12), ("val-1", 60, 4)):
        write_tar(data / f"{name}.tar", start, count, caption_of=lambda i: "a red circle on the left")
    tokenizer = tmp_path / "tokenizer"
    synthetic_tokenizer().save_pretrained(tokenizer)
    command = torchrun(2, os.path.join(ROOT, "tests", "streaming_ranks.py"), str(data), str(tokenizer),
                       str(tmp_path / "out"))  # fmt: skip
    done = run_checked(command, timeout=300)
    lines = sorted(line.split(maxsplit=2)[2] for line in done.stdout.splitlines() if line.startswith("RANK "))
    assert len(lines) == 2 and lines[0] == lines[1], done.stdout
    assert lines[0].startswith("steps 6 epochs 2 eval_batches 1 "), lines  # 6 steps = 3 data epochs of 2 batches


def test_a_finished_multi_process_run_leaves_its_process_group(tmp_path):
    """The end of `main`: every rank leaves the default group (gloo's threads alive at interpreter exit can abort a
    finished rank, and torchrun then fails the run); nothing to do without a group."""
    import torch.distributed as dist

    from bridgetower_gaudi.device import leave_process_group

    leave_process_group()  # no group: nothing to leave, no error
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    assert dist.is_initialized()
    leave_process_group()
    assert not dist.is_initialized()
