"""Exact resume: a pre-training run SIGKILLed at a named phase (mid-step, or mid-save) and restarted with
`--resume_from_checkpoint auto` ends at the same step with bit-identical weights and the same skip counts as the run
that was never interrupted (CPU, one torch thread): map-style data (random augmentation, ITC hard negatives drawn by
the model, masking, data-loader workers) and a streamed tar source (resumed mid-shard)."""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file

from bridgetower_gaudi.data import synthetic_tokenizer
from bridgetower_gaudi.data.synthetic import POSITIONS, SHAPES
from bridgetower_gaudi.training.pretrain import main
from tests.data_files import color_image, write_tar
from tests.processes import ROOT, python_script, run_checked, run_killed_at, torchrun

MAX_STEPS = 12


def _caption(i: int) -> str:
    return f"a {SHAPES[i % 3]} on the {POSITIONS[i % 4]}"  # words of the synthetic tokenizer


def _jsonl_data(folder) -> list[str]:
    """20 images with 2 captions each, 2 of them unreadable (4 records)."""
    images = folder / "imgs"
    images.mkdir(parents=True)
    rows = []
    for i in range(20):
        name = f"img{i}.png"
        if i in (5, 13):
            (images / name).write_bytes(b"not an image")
        else:
            color_image(i, (40 + i, 30)).save(images / name)
        rows.append({"image": f"imgs/{name}", "caption": [_caption(i), f"the {SHAPES[i % 3]}"]})
    (folder / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return ["--train_file", str(folder / "data.jsonl"), "--image_transform", "blip_randaug_wc",
            "--objectives", "mlm,itm,itc", "--dataloader_num_workers", "2"]  # fmt: skip


def _tar_shards(folder) -> list[str]:
    """Three shards of 9, 8 and 7 samples (one with an unreadable image), read by 2 data-loader workers (4 and 2
    batches an epoch: their order matters on resume); shards in a new order each epoch, records shuffled in blocks
    of 3."""
    folder.mkdir(parents=True)
    for number, (start, count) in enumerate(((0, 9), (9, 8), (17, 7))):
        extra = {"sample09999.png": b"not an image", "sample09999.txt": b"broken"} if number == 1 else None
        write_tar(folder / f"shard-{number}.tar", start, count, extra=extra, caption_of=_caption)
    return ["--train_file", str(folder / "shard-{0..2}.tar"), "--stream_shuffle_block", "3",
            "--dataloader_num_workers", "2"]  # fmt: skip


def _tar_data(folder) -> list[str]:
    """ITC hard negatives: drawn by the model from the process's random state."""
    return [*_tar_shards(folder), "--objectives", "mlm,itm,itc"]


def _tar_data_with_dataset_negatives(folder) -> list[str]:
    """ITM negatives drawn from the data set (a random other record of the reader's current shuffle block)."""
    return [*_tar_shards(folder), "--itm_negatives", "dataset"]


def _flags(tmp_path, data_flags, output_dir) -> list[str]:
    tokenizer = tmp_path / "tokenizer"
    if not tokenizer.exists():
        synthetic_tokenizer().save_pretrained(tokenizer)
    return ["--output_dir", str(output_dir), "--do_train", "--max_steps", str(MAX_STEPS), "--save_steps", "3",
            "--per_device_train_batch_size", "4", "--max_seq_length", "16", "--learning_rate", "1e-3",
            "--logging_steps", "1", "--report_to", "none", "--seed", "3", "--tokenizer_name", str(tokenizer),
            "--resume_from_checkpoint", "auto", *data_flags]  # fmt: skip


# Where each case is killed (BRIDGETOWER_KILL_AT, see training/kill_points.py): mid-step 8 (checkpoints 3 and 6
# complete) or mid-save of checkpoint-6 (checkpoint-3 complete, checkpoint-6 staged).
KILLS = {"step": ("mid_step", 8, ["checkpoint-3", "checkpoint-6"]), "save": ("mid_save", 6, ["checkpoint-3"])}


def _kill_during(flags, output_dir, moment: str) -> list[str]:
    """Run the same command as a subprocess that SIGKILLs itself at the named phase; the checkpoints left."""
    phase, step, left = KILLS[moment]
    run_killed_at(python_script("run_scripts/run_pretrain.py", *flags), phase, step)
    names = sorted(n for n in os.listdir(output_dir) if n.startswith("checkpoint-"))
    assert names == left, names
    return names


def _final(output_dir) -> tuple[int, dict, dict]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    results = json.loads((output_dir / "all_results.json").read_text())
    skips = {k: v for k, v in results.items() if k.startswith("skip") and k != "skipped_examples"}
    return state["global_step"], load_file(output_dir / "model.safetensors"), skips


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, moment",
    [(_jsonl_data, "step"), (_tar_data, "save"), (_tar_data_with_dataset_negatives, "step")],
    ids=["map-style", "tar", "tar-dataset-negatives"],
)
def test_a_killed_run_resumes_to_bit_identical_weights(tmp_path, data, moment):
    data_flags = data(tmp_path / "data")
    results = main(_flags(tmp_path, data_flags, tmp_path / "whole"))  # "auto" without a checkpoint: a fresh start
    assert results["nonfinite_steps"] == 0 and results["train_loss"] > 0, results
    step, weights, skips = _final(tmp_path / "whole")
    assert step == MAX_STEPS and skips["skipped_total"] > 0, skips

    killed = tmp_path / "killed"
    left = _kill_during(_flags(tmp_path, data_flags, killed), killed, moment)
    assert left and f"checkpoint-{MAX_STEPS}" not in left, left  # killed before the end
    if data is not _jsonl_data:  # checkpoint-3 (3 batches of 4): both readers resume inside a shard, past its start
        (state,) = [json.loads(p.read_text()) for p in (killed / "checkpoint-3").glob("data_state.rank*.json")]
        assert sorted(r["block_start"][1] > 0 for r in state["readers"].values()) == [True, True], state
    main(_flags(tmp_path, data_flags, killed))  # the same command: resumes from the newest checkpoint
    resumed_step, resumed_weights, resumed_skips = _final(killed)
    assert resumed_step == step and resumed_skips == skips
    assert sorted(resumed_weights) == sorted(weights)
    different = [name for name in weights if not resumed_weights[name].equal(weights[name])]
    assert different == [], different[:5]


def test_map_style_training_items_know_their_epoch_through_the_trainers_loader(tmp_path):
    """The trainer's loader (accelerate's) passes the epoch to EpochSampler: items are asked for as epoch * size +
    index, so each epoch draws anew (augmentation, negatives, masking) and a resumed epoch draws the same."""
    from bridgetower_gaudi.training.pretrain import build_trainer, parse_args

    flags = _flags(tmp_path, _jsonl_data(tmp_path / "data"), tmp_path / "out")
    trainer = build_trainer(*parse_args([*flags, "--dataloader_num_workers", "0"]))
    size = len(trainer.train_dataset)
    loader = trainer.get_train_dataloader()
    first = next(iter(loader.batch_sampler))
    loader.set_epoch(3)
    third = next(iter(loader.batch_sampler))
    assert all(0 <= p < size for p in first) and all(3 * size <= p < 4 * size for p in third)
    assert [p % size for p in first] != [p % size for p in third]  # a new order too
    limited = trainer.train_dataset.first(6)  # --max_train_samples 6: still by epoch and index
    assert len(limited) == 6 and limited[2 * 6 + 1]["draw_seed"] != limited[1]["draw_seed"]


def _weights_equal(output_dir, reference_dir) -> None:
    weights, reference = load_file(output_dir / "model.safetensors"), load_file(reference_dir / "model.safetensors")
    assert sorted(weights) == sorted(reference)
    different = [name for name in reference if not weights[name].equal(reference[name])]
    assert different == [], different[:5]


def test_a_killed_fine_tuning_run_resumes_to_bit_identical_weights(tmp_path):
    """run_finetune.py (ITM on the synthetic source, random augmentation): SIGKILLed mid-step 5, the same command
    resumes from checkpoint-4 to the uninterrupted run's weights."""
    from bridgetower_gaudi.training import finetune

    def flags(output_dir):
        return ["--task", "itm", "--config_name", "tiny", "--output_dir", str(output_dir), "--do_train",
                "--max_steps", "6", "--save_steps", "2", "--per_device_train_batch_size", "8", "--max_seq_length",
                "16", "--synthetic_train_size", "64", "--image_transform", "blip_randaug_wc", "--report_to", "none",
                "--dataloader_num_workers", "0", "--seed", "3", "--resume_from_checkpoint", "auto"]  # fmt: skip

    finetune.main(flags(tmp_path / "whole"))
    killed = tmp_path / "killed"
    run_killed_at(python_script("run_scripts/run_finetune.py", *flags(killed)), "mid_step", 5)
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    finetune.main(flags(killed))
    _weights_equal(killed, tmp_path / "whole")


def _two_ranks_streamed(tmp_path) -> tuple[int, list[str]]:
    """2 gloo ranks on 2 tar shards of 12 samples (3 batches of 4 per rank an epoch), ITC features gathered across
    the ranks, ITM on hard negatives the model draws."""
    data = tmp_path / "data"
    data.mkdir()
    for number in range(2):
        write_tar(data / f"shard-{number}.tar", 12 * number, 12, caption_of=_caption)
    return 2, ["--train_file", str(data / "shard-{0..1}.tar"), "--stream_shuffle_block", "3",
               "--dataloader_num_workers", "0", "--objectives", "mlm,itm,itc"]  # fmt: skip


def _deepspeed_zero2(tmp_path) -> tuple[int, list[str]]:
    """One DeepSpeed ZeRO-2 process on map-style synthetic data."""
    return 1, ["--deepspeed", os.path.join(ROOT, "run_scripts", "ds_zero2.json"), "--synthetic_train_size", "64",
               "--dataloader_num_workers", "0", "--use_cpu"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("setup", [_two_ranks_streamed, _deepspeed_zero2], ids=["two-ranks-streamed", "deepspeed"])
def test_a_killed_distributed_run_resumes_to_bit_identical_weights(tmp_path, setup):
    """Under torchrun: SIGKILLed mid-step 7 (both ranks), the same command resumes from checkpoint-6 (for the
    streamed ranks, saved right after the last batch of their second data epoch) to the uninterrupted run's
    weights."""
    nproc, data_flags = setup(tmp_path)

    def command(output_dir):
        flags = _flags(tmp_path, data_flags, output_dir)
        flags[flags.index("--max_steps") + 1] = "8"
        return torchrun(nproc, os.path.join(ROOT, "run_scripts", "run_pretrain.py"), *flags)

    run_checked(command(tmp_path / "whole"), timeout=600)
    killed = tmp_path / "killed"
    run_killed_at(command(killed), "mid_step", 7, torchrun=True)
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    run_checked(command(killed), timeout=600)
    assert json.loads((killed / "trainer_state.json").read_text())["global_step"] == 8
    _weights_equal(killed, tmp_path / "whole")


@pytest.mark.parametrize(
    "workers, kill_step, left",
    [(0, 7, ["checkpoint-3", "checkpoint-6"]),
     pytest.param(2, 5, ["checkpoint-3"], marks=pytest.mark.slow),
     pytest.param(2, 7, ["checkpoint-3", "checkpoint-6"], marks=pytest.mark.slow)],
    ids=["epoch-end", "persistent-workers-mid-epoch", "persistent-workers-epoch-end"],
)  # fmt: skip
def test_a_map_style_run_resumed_before_an_epochs_end_is_exact(tmp_path, workers, kill_step, left):
    """Map-style data, 6 steps an epoch, ITC hard negatives and dropout (the model's draws from the process's random
    state). Killed mid-step 7, the run resumes from checkpoint-6, saved after the epoch's last batch (restoring the
    random state once more before step 7 once made its loss differ in the 4th digit); killed mid-step 5, from
    checkpoint-3, mid-epoch; either way it crosses into the next epoch. With 2 data-loader workers (persistent: the
    default with workers) the uninterrupted run makes its workers once and the resumed run again, and torch draws
    their base seed from the process's random state when it makes them (the weights differed until the trainer drew
    it before each later pass too)."""
    data_flags = ["--synthetic_train_size", "24", "--dataloader_num_workers", str(workers), "--objectives",
                  "mlm,itm,itc"]  # fmt: skip

    def flags(output_dir):
        flags = _flags(tmp_path, data_flags, output_dir)
        flags[flags.index("--max_steps") + 1] = "8"
        return flags

    main(flags(tmp_path / "whole"))
    killed = tmp_path / "killed"
    run_killed_at(python_script("run_scripts/run_pretrain.py", *flags(killed)), "mid_step", kill_step)
    assert sorted(p.name for p in killed.glob("checkpoint-*")) == left
    main(flags(killed))
    _weights_equal(killed, tmp_path / "whole")


def test_persistent_loaders_draw_as_new_ones_and_each_evaluation_set_keeps_its_own(tmp_path):
    """With workers, loaders persist by default. torch draws the workers' base seed from the process's random state
    when it makes them, which a persistent loader does once; the trainer draws it before each later pass (each
    epoch's start, each evaluation), so the random state moves exactly as without persistent workers, and a resumed
    run, which makes the workers again, draws what the uninterrupted run drew. Each named evaluation set keeps its own
    loader (Trainer would give a second set, padded to whole batches, the first one's)."""
    import torch

    from bridgetower_gaudi.training.pretrain import build_trainer, parse_args

    flags = _flags(tmp_path, ["--synthetic_train_size", "24", "--dataloader_num_workers", "2"], tmp_path / "out")

    def random_states(persistent: str) -> list[torch.Tensor]:
        trainer = build_trainer(*parse_args([*flags, "--dataloader_persistent_workers", persistent]))
        trainer.eval_dataset = {"six": trainer.train_dataset.first(6), "ten": trainer.train_dataset.first(10)}
        torch.manual_seed(0)
        loader = trainer.callback_handler.train_dataloader = trainer.get_train_dataloader()
        states = []
        for _ in range(2):
            trainer.callback_handler.on_epoch_begin(trainer.args, trainer.state, trainer.control)
            assert sum(len(batch["input_ids"]) for batch in loader) == 24
            states.append(torch.get_rng_state())
        for name in ("six", "ten", "six", "ten"):
            trainer.evaluate(eval_dataset=name)
            states.append(torch.get_rng_state())
        if persistent == "true":  # one loader per set, kept, with its own (padded) examples
            assert trainer.get_eval_dataloader("six") is trainer.get_eval_dataloader("six")
            assert [trainer.get_eval_dataloader(name).eval_examples for name in ("six", "ten")] == [6, 10]
        return states

    persistent, fresh = random_states("true"), random_states("false")
    assert all(torch.equal(a, b) for a, b in zip(persistent, fresh, strict=True))
    assert not torch.equal(persistent[0], persistent[1])  # each pass draws
